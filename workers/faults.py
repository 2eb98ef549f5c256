"""Fault injection for tests and demos: kill, hang, slow a worker, corrupt a link, kill the coordinator.

A fault is written `KIND[:key=value]...`, e.g. `kill:worker=1:step=3`, `hang:worker=0:step=2`,
`slow:worker=1:delay=0.3`, `corrupt:worker=0:step=2` (a malformed message on worker 0's outgoing link),
`truncated:worker=0:step=2`, `foreign:worker=0:step=2` (a message signed by another run),
`kill-checkpoint:worker=1:checkpoint=2` (die while writing checkpoint 2), `kill-coordinator:step=4`.
`always` makes it fire again after every restart (a worker that always dies). `step` counts minibatches
from the start of the run (global step, 0-based). Faults come from `--inject-fault` or the environment
variable AUGLOCAL_INJECT_FAULT (read only when the flag is absent) and fire on the first attempt only.
`OPTIONS` lists what each kind takes; anything else is refused with a message naming it.
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


#: the options each kind takes (`always` goes with every kind that a restart can meet again)
OPTIONS = {
    "kill": ("worker", "step", "always"),
    "hang": ("worker", "step", "always"),
    "corrupt": ("worker", "step", "always"),
    "truncated": ("worker", "step", "always"),
    "foreign": ("worker", "step", "always"),
    "slow": ("worker", "delay", "always"),
    "kill-checkpoint": ("worker", "checkpoint", "always"),
    "kill-coordinator": ("step",),
}


def parse_fault(text: str | None) -> Fault | None:
    """`kill:worker=1:step=3` -> Fault; None for None or ''. Raises ValueError naming the bad part."""
    if not text:
        return None
    kind, *parts = text.split(":")
    if kind not in KINDS:
        raise ValueError(f"unknown fault {kind!r} in {text!r}; kinds: {', '.join(KINDS)}")
    allowed = OPTIONS[kind]
    usage = ", ".join("always" if key == "always" else f"{key}=..." for key in allowed)
    fields: dict = {}
    for part in parts:
        key, _, value = part.partition("=")
        if key not in allowed or (key == "always") == ("=" in part):
            raise ValueError(f"bad fault option {part!r} in {text!r}; {kind} takes {usage}")
        if key == "always":
            fields["always"] = True
            continue
        try:
            number = float(value) if key == "delay" else int(value)
        except ValueError:
            raise ValueError(f"bad fault option {part!r} in {text!r}: {key} must be a number") from None
        low = 1 if key == "checkpoint" else 0
        if number < low or (key == "delay" and number == 0):
            raise ValueError(f"bad fault option {part!r} in {text!r}: {key} must be "
                             f"{'> 0' if key == 'delay' else f'>= {low}'}")
        fields[key] = number
    if kind == "slow" and "delay" not in fields:
        raise ValueError(f"fault {text!r}: slow needs delay=SECONDS (extra seconds per training step)")
    return Fault(kind, **fields)


def fault_from_env() -> Fault | None:
    """The fault in AUGLOCAL_INJECT_FAULT (the CLI reads it only when --inject-fault is absent)."""
    return parse_fault(os.environ.get(ENV_VAR))


def die() -> None:
    """Die like a crashed process: SIGKILL, no cleanup, no goodbye message."""
    os.kill(os.getpid(), signal.SIGKILL)


def hang() -> None:
    """Stop making progress forever (the heartbeat timeout must catch this)."""
    while True:
        time.sleep(3600)
