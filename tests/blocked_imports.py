"""Make packages unimportable, as on a machine without them (the GPU image lacks mlxtend and scikit-learn).

A None in sys.modules is Python's own "not importable": `import x` raises ModuleNotFoundError and
importlib.util.find_spec("x") returns None, as when x is not installed (torch._dynamo probes optional packages
with find_spec, so a finder that raises would not look like a missing package). In this process:
`with blocked("mlxtend"): ...`; in subprocesses (workers included): `sitecustomize_dir(tmp, ...)` on PYTHONPATH,
whose sitecustomize.py Python imports at start-up.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path


@contextlib.contextmanager
def blocked(*names: str):
    """The named packages cannot be imported inside the block (already imported ones are put back after)."""
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in names}
    for k in saved:
        del sys.modules[k]
    sys.modules.update(dict.fromkeys(names))
    try:
        yield
    finally:
        for k in [k for k in sys.modules if k.split(".")[0] in names]:
            del sys.modules[k]
        sys.modules.update(saved)


def sitecustomize_dir(folder: Path, *names: str) -> Path:
    """A folder whose sitecustomize.py blocks `names` in every Python process started with it on PYTHONPATH."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(f"import sys\nsys.modules.update(dict.fromkeys({names!r}))\n")
    return folder
