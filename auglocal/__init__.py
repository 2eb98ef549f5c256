"""auglocal: pipelined supervised local learning (AugLocal and its baselines) across workers.

Installed, `auglocal.engine`, `auglocal.workers` and `auglocal.launch` are the repository's `engine/`, `workers/`
and `launch/` folders (setup.cfg's package_dir); run from a checkout (`PYTHONPATH=.`), this package finds them
beside itself, so both ways import the same code under the same names.
"""

from pathlib import Path as _Path

__version__ = "0.1.0"

_here = _Path(__file__).resolve().parent
if not (_here / "engine").is_dir() and (_here.parent / "engine" / "__init__.py").is_file():
    __path__.append(str(_here.parent))   # a checkout: auglocal.engine is ../engine
