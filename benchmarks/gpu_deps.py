"""gpu_check.sh's first step: install the wheels the machine lacks into a private path, then check every import.

The GPU machine runs the project from source with its own torch (PYTHONPATH=., nothing installed), and its image
lacks some of what the engine imports (pyzmq first). benchmarks/fetch_wheels.sh downloads the wheels; this
installs those whose distribution is not installed already (`pip install --no-index --no-deps --target`; by
unpacking the wheel where pip itself is missing), so nothing the machine has is shadowed, then imports every
module a later step needs and names each that fails, with the package that provides it. Only the standard
library is imported before the install.

    python3 -m benchmarks.gpu_deps --wheels benchmarks/wheels --target /tmp/site --report OUT/imports.md
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

#: third-party modules a step imports, and the distribution each comes from
THIRD_PARTY = {"torch": "torch", "torchvision": "torchvision", "numpy": "numpy", "msgpack": "msgpack",
               "zmq": "pyzmq", "psutil": "psutil", "tqdm": "tqdm", "matplotlib": "matplotlib", "pytest": "pytest",
               "pytest_timeout": "pytest-timeout"}
#: the project's modules the steps run (each imports the rest of what it needs)
PROJECT = ("auglocal.engine", "auglocal.workers", "auglocal.launch", "auglocal.launch.cli",
           "auglocal.launch.backends.elastic", "benchmarks.gpu", "benchmarks.transport",
           "tests.test_gpu", "tests.launch.test_parity", "tests.faults.support", "torch.distributed.run")


def dist_name(wheel: Path) -> str:
    """The normalised distribution name of a wheel file (PEP 427 names: name-version-...whl)."""
    return re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()


def is_installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def missing_wheels(folder: Path) -> list[Path]:
    """The wheels in `folder` whose distribution this interpreter does not have."""
    return [w for w in sorted(folder.glob("*.whl")) if not is_installed(dist_name(w))] if folder.is_dir() else []


def unpack(wheel: Path, target: Path) -> None:
    """Install a wheel without pip: a wheel is a zip of the files as installed; its .data/purelib and platlib
    parts go to the same root."""
    with zipfile.ZipFile(wheel) as z:
        z.extractall(target)
    for data in target.glob("*.data"):
        for part in ("purelib", "platlib"):
            for item in (data / part).glob("*") if (data / part).is_dir() else []:
                shutil.move(str(item), str(target / item.name))
        shutil.rmtree(data)


def install(wheels: list[Path], target: Path) -> str:
    """Install `wheels` into `target`; how it was done, for the report."""
    target.mkdir(parents=True, exist_ok=True)
    if not wheels:
        return "nothing to install"
    has_pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode == 0
    if has_pip:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                        "--disable-pip-version-check", "--target", str(target), *map(str, wheels)], check=True)
        how = "pip install --no-index --no-deps --target"
    else:
        for w in wheels:
            unpack(w, target)
        how = "unpacked (no pip on this machine)"
    return f"{how} {target}: " + ", ".join(w.name for w in wheels)


def check_imports(modules: list[str]) -> dict[str, str]:
    """Each module that does not import, with its error (one line)."""
    importlib.invalidate_caches()
    failed = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as err:   # any failure to import is what this step reports
            failed[name] = f"{type(err).__name__}: {err}".splitlines()[0]
    return failed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wheels", type=Path, default=Path("benchmarks/wheels"))
    p.add_argument("--target", type=Path, required=True, help="private path for the wheels (on PYTHONPATH)")
    p.add_argument("--report", type=Path, default=None, help="also write the report here (Markdown)")
    args = p.parse_args(argv)
    if str(args.target) not in sys.path:
        sys.path.insert(0, str(args.target))
    lines = [f"# imports on {sys.version.split()[0]}", ""]
    try:
        lines.append(f"wheels: {install(missing_wheels(args.wheels), args.target)}")
    except (subprocess.CalledProcessError, zipfile.BadZipFile, OSError) as err:
        lines.append(f"wheels: install FAILED: {err}")
    failed = check_imports([*THIRD_PARTY, *PROJECT])
    for name, error in failed.items():
        dist = THIRD_PARTY.get(name)
        hint = f" (package {dist}: add it with benchmarks/fetch_wheels.sh)" if dist else ""
        lines.append(f"MISSING {name}: {error}{hint}")
    if not failed:
        import torch

        lines.append(f"every import works: torch {torch.__version__}, CUDA {torch.cuda.is_available()}")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.report:
        args.report.write_text(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
