"""The layout keeps its promises: no import circle, imports only downward between packages, no module over 450
lines, and an installed wheel that exposes `auglocal` and nothing else at the top level."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.import_graph import REPO, cycles, graph, modules

#: the packages in import order: each may import those after it, never one before it (docs/architecture.md)
LAYERS = [
    "auglocal.launch.cli_reference",
    "auglocal.launch.cli",
    "auglocal.launch.backends.elastic",
    "auglocal.launch.run",
    "auglocal.launch.backends.one_host",
    "auglocal.launch.backends",
    "auglocal.launch.report",
    "auglocal.launch",
    "auglocal.workers.runtime",
    "auglocal.workers.links",
    "auglocal.workers.wire",
    "auglocal.workers",
    "auglocal.engine",
]
MAX_LINES = 450


def layer_of(module: str) -> int:
    """The index in LAYERS of the most specific package holding `module`."""
    return next(i for i, pkg in sorted(enumerate(LAYERS), key=lambda p: -len(p[1]))
                if module == pkg or module.startswith(pkg + "."))


def test_the_import_graph_has_no_cycle():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_every_import_between_packages_points_down():
    """Entry points (`__main__` modules) sit above everything and are exempt."""
    upward = sorted(f"{m} -> {d}" for m, deps in graph().items() if not m.endswith(".__main__")
                    for d in deps if layer_of(d) < layer_of(m))
    assert upward == []


def test_every_module_of_the_layers_has_a_layer():
    assert {layer_of(m) for m in modules()} <= set(range(len(LAYERS)))


def test_no_module_is_over_450_lines():
    lines = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in modules().values()}
    long = {path: n for path, n in lines.items() if n > MAX_LINES}
    assert long == {}


def test_setup_cfg_lists_every_package_under_its_installed_name():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    on_disk = {"auglocal"} | {name for name, path in modules().items() if path.name == "__init__.py"}
    assert listed == on_disk
    mapping = dict(line.split(" = ") for line in cfg["options"]["package_dir"].strip().splitlines())
    assert mapping == {"auglocal": "auglocal", "auglocal.engine": "engine", "auglocal.workers": "workers",
                       "auglocal.launch": "launch"}


@pytest.mark.timeout(600)
def test_an_installed_wheel_exposes_auglocal_and_no_top_level_engine_workers_or_launch(tmp_path):
    """`pip install .` into a fresh environment: the wheel pip builds holds only `auglocal/` (with engine,
    workers and launch inside it), and in a fresh venv `auglocal` imports from site-packages while `engine`,
    `workers` and `launch` do not exist (the venv has no torch: only the namespace is imported)."""
    source = tmp_path / "source"      # a copy: setuptools writes build/ and *.egg-info beside the sources
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        source.mkdir(exist_ok=True)
        shutil.copy(REPO / name, source / name)
    for folder in ("auglocal", "engine", "workers", "launch"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("auglocal-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"auglocal", wheel.name.split("-py")[0] + ".dist-info"}
    for needed in ("auglocal/engine/config.py", "auglocal/workers/runtime/worker.py", "auglocal/launch/cli.py",
                   "auglocal/launch/backends/elastic/__main__.py"):
        assert needed in names
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}   # the wheel's copy, never a checkout's
    installed = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                               capture_output=True, text=True, timeout=300, cwd=tmp_path, env=clean)
    assert installed.returncode == 0, installed.stderr[-3000:]
    probe = ("import importlib.util as u, auglocal; "
             "print(auglocal.__file__); print([u.find_spec(n) for n in ('engine', 'workers', 'launch')]); "
             "print(u.find_spec('auglocal.launch.cli').origin)")
    seen = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=clean)
    assert seen.returncode == 0, seen.stderr
    where, missing, cli = seen.stdout.splitlines()
    assert "site-packages" in where and "site-packages" in cli and str(REPO) not in where + cli
    assert missing == "[None, None, None]"


def test_the_public_package_exports_resolve_lazily():
    probe = ("import sys, auglocal; assert 'torch' not in sys.modules, 'import auglocal imported torch'; "
             "print(sorted(n for n in auglocal.__all__ if getattr(auglocal, n) is None))")
    seen = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert seen.returncode == 0, seen.stderr[-2000:]
    assert seen.stdout.strip() == "[]"
    from auglocal.engine.models import register

    import auglocal

    assert auglocal.register_model is register
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        auglocal.nope  # noqa: B018
