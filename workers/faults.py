"""Fault injection for tests and demos: kill, hang, slow a worker, corrupt a link, kill the coordinator.

A fault is written `KIND[:key=value]...`, e.g. `kill:worker=1:step=3`, `hang:worker=0:step=2`,
`slow:worker=1:delay=0.3`, `corrupt:worker=0:step=2` (a malformed message on worker 0's outgoing link),
`truncated:worker=0:step=2`, `foreign:worker=0:step=2` (a message signed by another run),
`kill-checkpoint:worker=1:checkpoint=2` (die while writing checkpoint 2), `kill-coordinator:step=4`.
`always` makes it fire again after every restart (a worker that always dies). `step` counts minibatches
from the start of the run (global step, 0-based). Faults come from `--inject-fault` or the environment
variable AUGLOCAL_INJECT_FAULT (read only when the flag is absent) and fire on the first attempt only.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

KINDS = ("kill", "hang", "slow", "corrupt", "truncated", "foreign", "kill-checkpoint", "kill-coordinator")
ENV_VAR = "AUGLOCAL_INJECT_FAULT"


@dataclass(frozen=True)
class Fault:
    """One injected fault; plain data, handed to the worker it concerns."""

    kind: str
    worker: int = 0
    step: int = 0
    checkpoint: int = 1
    delay: float = 0.0
    always: bool = False

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def parse_fault(text: str | None) -> Fault | None:
    """`kill:worker=1:step=3` -> Fault; None for None or ''. Raises ValueError naming the bad part."""
    if not text:
        return None
    kind, *parts = text.split(":")
    if kind not in KINDS:
        raise ValueError(f"unknown fault {kind!r} in {text!r}; kinds: {', '.join(KINDS)}")
    fields: dict = {}
    for part in parts:
        if part == "always":
            fields["always"] = True
            continue
        key, _, value = part.partition("=")
        try:
            if key in ("worker", "step", "checkpoint"):
                fields[key] = int(value)
            elif key == "delay":
                fields[key] = float(value)
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"bad fault option {part!r} in {text!r}; use worker=N, step=N, checkpoint=N, "
                             "delay=SECONDS or always") from None
    return Fault(kind, **fields)


def fault_from_env() -> Fault | None:
    return parse_fault(os.environ.get(ENV_VAR))


def die() -> None:
    """Die like a crashed process: SIGKILL, no cleanup, no goodbye message."""
    os.kill(os.getpid(), signal.SIGKILL)


def hang() -> None:
    """Stop making progress forever (the heartbeat timeout must catch this)."""
    while True:
        time.sleep(3600)
