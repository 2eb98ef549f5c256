"""What a launcher backend is: how an attempt's workers start and what the coordinator holds of each one.

The coordinator (launch/run/coordinator.py) runs the attempt protocol the same way whichever backend started
the workers; it only needs each worker as a `WorkerHandle`. A backend is described by one `Backend` entry in
launch/backends/registry.py. This module sits in the lowest launch layer, so an entry names its coordinator
factory and handle class as "module:attribute" strings, imported only when used: a low layer may describe the
higher layers' backends without importing them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@runtime_checkable
class WorkerHandle(Protocol):
    """What the coordinator uses of one worker: watch it (pid, exitcode, is_alive, orphaned), end it (stop),
    and reap it after its stop report (join)."""

    pid: int | None

    @property
    def exitcode(self) -> int | None: ...

    def is_alive(self) -> bool: ...

    def orphaned(self) -> bool: ...

    def stop(self) -> None: ...

    def join(self, timeout: float) -> None: ...


#: The members a worker handle class must have: the Protocol's own, read off it for the registry's check.
HANDLE_MEMBERS = tuple(sorted({*WorkerHandle.__annotations__,
                               *(name for name in vars(WorkerHandle) if not name.startswith("_"))}))


def resolve(ref: str):
    """The object a "package.module:attribute" reference names (imported now)."""
    module, _, attr = ref.partition(":")
    if not module or not attr:
        raise ValueError(f"{ref!r} is not a 'module:attribute' reference")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Backend:
    """One launcher backend.

    `name`: its package under launch/backends/; `summary`: one line on where its workers run; `doc`: the page
    (path from the repository root) that explains it and mentions `name`; `selector`: how a user picks it.
    `coordinator`: the class (or factory) the attempt loop (launch/run/pipeline.py) calls once per attempt with
    the coordinator's arguments, plus the backend's own keyword arguments; `handle`: the class of the worker
    handles that coordinator holds, a `WorkerHandle`. Both as "module:attribute" (see the module docstring).
    `warm_up` (optional, "module:attribute" too): called with no arguments before the run is planned, so that the
    backend's slow start-up (the one-host forkserver's imports) runs while the launcher plans.
    """

    name: str
    summary: str
    doc: str
    selector: str
    coordinator: str
    handle: str
    warm_up: str = ""

    def coordinator_factory(self):
        return resolve(self.coordinator)

    def start_warming_up(self) -> None:
        if self.warm_up:
            resolve(self.warm_up)()
