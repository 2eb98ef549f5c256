"""Every launcher backend as one entry of data (launch/backends/base.py says what an entry holds).

Adding a backend is one package plus one entry: write the package under launch/backends/ (its coordinator,
a `Coordinator` subclass or anything called like one, and its `WorkerHandle` class), then add one `Backend(...)`
to `REGISTRY`. `check_entry` refuses an entry that lacks a part, and tests/launch/test_backend_registry.py runs
it on every entry. The check imports the entry's parts, so it runs in that test, not when this module loads.
"""

from __future__ import annotations

from pathlib import Path

from auglocal.launch.backends.base import HANDLE_MEMBERS, Backend, resolve

ONE_HOST, ELASTIC = "one_host", "elastic"
REPO = Path(__file__).resolve().parents[2]

REGISTRY: tuple[Backend, ...] = (
    Backend(ONE_HOST, "workers are processes (or thread hosts) on this machine, linked by private sockets",
            "docs/architecture.md", "default (auglocal-launch without --elastic)",
            "auglocal.launch.run.coordinator:Coordinator",
            "auglocal.launch.backends.one_host.processes:WorkerProcess",
            warm_up="auglocal.launch.backends.one_host.processes:start_forkserver"),
    Backend(ELASTIC, "rank 0 of a torchrun group coordinates; ranks 1..K are the workers, on any machines",
            "docs/several-machines.md", "--elastic under torchrun (python -m auglocal.launch.backends.elastic)",
            "auglocal.launch.backends.elastic.coordinator:ElasticCoordinator",
            "auglocal.launch.backends.elastic.coordinator:RemoteWorker"),
)
BY_NAME: dict[str, Backend] = {entry.name: entry for entry in REGISTRY}


def _missing_members(cls: type) -> list[str]:
    """The WorkerHandle members `cls` lacks (an attribute set in __init__ counts when the class annotates it)."""
    annotated = {name for klass in cls.__mro__ for name in getattr(klass, "__annotations__", {})}
    return [m for m in HANDLE_MEMBERS if not hasattr(cls, m) and m not in annotated]


def _load(entry: Backend, part: str, problems: list[str]):
    """The object the entry's `part` reference names, or None (and a problem noted) when it does not import."""
    try:
        return resolve(getattr(entry, part))
    except (ImportError, AttributeError, ValueError) as err:
        problems.append(f"{part} {getattr(entry, part)!r} does not import: {err}")
        return None


def check_entry(entry: Backend) -> None:
    """Raise ValueError for an entry that lacks a part: its parts are imported and its doc page read."""
    problems = []
    for part in ("name", "summary", "selector"):
        if not getattr(entry, part).strip():
            problems.append(f"no {part}")
    page = REPO / entry.doc if entry.doc else None
    if page is None or not page.is_file():
        problems.append(f"doc page {entry.doc!r} does not exist")
    elif entry.name and entry.name not in page.read_text():
        problems.append(f"doc page {entry.doc} does not mention {entry.name!r}")
    factory, handle = _load(entry, "coordinator", problems), _load(entry, "handle", problems)
    if factory is not None and not callable(factory):
        problems.append(f"coordinator {entry.coordinator!r} is not callable")
    if entry.warm_up and (warm_up := _load(entry, "warm_up", problems)) is not None and not callable(warm_up):
        problems.append(f"warm_up {entry.warm_up!r} is not callable")
    if handle is not None:
        if not isinstance(handle, type):
            problems.append(f"handle {entry.handle!r} is not a class")
        elif missing := _missing_members(handle):
            problems.append(f"handle {entry.handle!r} lacks WorkerHandle members {missing}")
    if problems:
        raise ValueError(f"backend entry {entry.name!r}: " + "; ".join(problems))


def check_registry(entries: tuple[Backend, ...]) -> None:
    """Every entry whole and its name unique."""
    for entry in entries:
        check_entry(entry)
    names = [entry.name for entry in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"backend names must be unique: {names}")
