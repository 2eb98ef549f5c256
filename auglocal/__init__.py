"""auglocal: pipelined supervised local learning (AugLocal and its baselines) across workers.

Installed, `auglocal.engine`, `auglocal.workers` and `auglocal.launch` are the repository's `engine/`, `workers/`
and `launch/` folders (setup.cfg's package_dir); run from a checkout (`PYTHONPATH=.`), this package finds them
beside itself, so both ways import the same code under the same names.
"""

from importlib import import_module as _import_module
from pathlib import Path as _Path

__version__ = "0.1.0"

#: what users import, and where it lives; loaded on first use, so `import auglocal` costs no torch import
_EXPORTS = {
    "train": "auglocal.api",                         # train a network (a name, a spec, a function) on any Dataset
    "load": "auglocal.api",                          # the trained network of a run folder, as an nn.Module
    "Result": "auglocal.api",
    "main": "auglocal.launch.cli",                   # auglocal-launch, as a function of its argument list
    "RunConfig": "auglocal.engine.config",           # every setting of a run, as the CLI's flags give them
    "build_model": "auglocal.engine.models",         # a registered network, as ordered local layers + head
    "register_model": "auglocal.engine.models",      # add a network under a name --model accepts
    "model_names": "auglocal.engine.models",
    "build_dataset": "auglocal.engine.data",
    "SequentialTrainer": "auglocal.engine.trainer",  # the oracle: the paper's scheme in one process
    "PipelineOptions": "auglocal.launch.run.pipeline",
    "train_pipeline": "auglocal.launch.run.pipeline",
}
_RENAMED = {"register_model": "register"}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'auglocal' has no attribute {name!r}")
    value = getattr(_import_module(_EXPORTS[name]), _RENAMED.get(name, name))
    globals()[name] = value
    return value

_here = _Path(__file__).resolve().parent
if not (_here / "engine").is_dir() and (_here.parent / "engine" / "__init__.py").is_file():
    __path__.append(str(_here.parent))   # a checkout: auglocal.engine is ../engine
