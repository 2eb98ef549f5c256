"""Fault injection for tests and demos: one registry of fault kinds that parser, help, checks and hooks all read.

A fault is written `KIND[:key=value]...`, e.g. `kill:worker=1:step=3`. `REGISTRY` says, for each kind, the
options it takes, where it fires and what it does; `parse_fault` reads the flag (or the environment variable
AUGLOCAL_INJECT_FAULT when the flag is absent), `check_target` refuses a fault that could never fire in a run
of K workers, `help_text` is what `--help` prints, and `Fault.fires(point, ...)` is asked at each firing point:

- `feed` (the coordinator, after feeding a training minibatch), `train` (a worker, before a training step),
  `send` (a worker, when it sends a step's output downstream), `checkpoint` (a worker, between two layer files
  of a checkpoint), `step` (a worker, after each training step and each test batch), `eval` (a worker, while
  it computes a test batch), `stop` (a worker, once it has passed the stop marker on, before it reports
  stopped).

`step` counts minibatches from the start of the run (global step, 0-based). A fault fires on the first
attempt only, unless `always` is given. To add a kind: one `FaultKind` entry here, and its action at its
firing point (`FAULT_ACTIONS` below for `train`, the worker loop for the others, the coordinator for `feed`).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

ENV_VAR = "AUGLOCAL_INJECT_FAULT"
POINTS = ("feed", "train", "send", "checkpoint", "step", "eval", "stop")


@dataclass(frozen=True)
class FaultKind:
    """One kind of fault: its options, where it fires, what it does, and whom it may target."""

    name: str
    options: tuple[str, ...]
    point: str
    help: str
    on_link: bool = False          # acts on the worker's outgoing link: the last worker has none
    target: str = "worker"         # 'worker' or 'coordinator'

    def usage(self) -> str:
        opts = [o.upper()[0] if o != "always" else "" for o in self.options]
        parts = [f"{o}={v}" for o, v in zip(self.options, opts, strict=True) if o != "always"]
        return ":".join([self.name, *parts])


REGISTRY: dict[str, FaultKind] = {k.name: k for k in (
    FaultKind("kill", ("worker", "step", "always"), "train", "SIGKILL worker W before it trains minibatch S"),
    FaultKind("hang", ("worker", "step", "always"), "train", "worker W stops forever (no heartbeat) at S"),
    FaultKind("raise", ("worker", "step", "always"), "train",
              "worker W raises an unexpected exception (a bug) before it trains minibatch S"),
    FaultKind("slow", ("worker", "delay", "always"), "step",
              "worker W spends D more seconds on every step and test batch (alive: it heartbeats)"),
    FaultKind("slow-eval", ("worker", "delay", "always"), "eval",
              "worker W computes every test batch D seconds longer, silently (a long validation pass)"),
    FaultKind("corrupt", ("worker", "step", "always"), "send",
              "worker W sends a header that does not parse instead of its output of minibatch S", on_link=True),
    FaultKind("truncated", ("worker", "step", "always"), "send",
              "worker W sends its output of minibatch S with the last frame cut in half", on_link=True),
    FaultKind("foreign", ("worker", "step", "always"), "send",
              "a stranger (another run's secret) sends on worker W's link before its output of S", on_link=True),
    FaultKind("kill-checkpoint", ("worker", "checkpoint", "always"), "checkpoint",
              "SIGKILL worker W after the first layer file of checkpoint C"),
    FaultKind("kill-stop", ("worker", "always"), "stop",
              "SIGKILL worker W once it has passed the stop marker on, before it reports stopped (a failure in "
              "the run's tail, after the coordinator fed its last message)"),
    FaultKind("kill-coordinator", ("step",), "feed", "SIGKILL the coordinator after feeding minibatch S",
              target="coordinator"),
    FaultKind("kill-pair", ("worker", "step"), "feed",
              "the coordinator SIGKILLs workers W and W+1 together after feeding minibatch S (two adjacent "
              "workers down: one-worker recovery falls back to the whole restart)", on_link=True),
    FaultKind("kill-seq", ("worker", "step", "always"), "train",
              "SIGKILL worker W before minibatch S, then worker W+1 before minibatch S+3 (two failures, one "
              "after the other)", on_link=True),
)}
KINDS = tuple(REGISTRY)
OPTIONS = ("worker", "step", "checkpoint", "delay", "always")     # the fields of `Fault` a kind may take
TARGETS = ("worker", "coordinator")


def check_kind(kind: FaultKind) -> None:
    """Raise ValueError unless `kind` has every part: a name, known options, a firing point, a help line and a
    target; the registry's test runs it on every entry, so a kind added with a part missing fails there."""
    problems = [what for what, bad in (
        ("a name", not kind.name or ":" in kind.name),
        (f"distinct options among {OPTIONS}",
         not set(kind.options) <= set(OPTIONS) or len(set(kind.options)) != len(kind.options)),
        (f"a firing point among {POINTS}", kind.point not in POINTS),
        ("a help line", not kind.help.strip()),
        (f"a target among {TARGETS}", kind.target not in TARGETS),
        ("a worker option (its target is a worker)", kind.target == "worker" and "worker" not in kind.options),
    ) if bad]
    if problems:
        raise ValueError(f"fault kind {kind.name!r} lacks {', '.join(problems)}")


@dataclass(frozen=True)
class Fault:
    """One injected fault; plain data, handed to the process it concerns."""

    kind: str
    worker: int = 0
    step: int = 0
    checkpoint: int = 1
    delay: float = 0.0
    always: bool = False

    @property
    def info(self) -> FaultKind:
        return REGISTRY[self.kind]

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def fires(self, point: str, *, g: int | None = None, checkpoint: int | None = None) -> bool:
        """Whether this fault fires at `point` for global step `g` or checkpoint id `checkpoint`."""
        info = self.info
        if info.point != point:
            return False
        if "step" in info.options and g != self.step:
            return False
        return not ("checkpoint" in info.options and checkpoint != self.checkpoint)

    def for_worker(self, rank: int) -> bool:
        return self.as_seen_by(rank) is not None

    def as_seen_by(self, rank: int) -> Fault | None:
        """The fault as worker `rank` fires it (None: not at all): `kill-seq` is a kill of W at S and of W+1
        at S+3; `kill-pair` fires in the coordinator only."""
        if self.info.target != "worker" or self.info.point == "feed":
            return None
        if self.kind == "kill-seq" and rank in (self.worker, self.worker + 1):
            return Fault("kill", rank, self.step + 3 * (rank - self.worker), always=self.always)
        return self if self.worker == rank else None


def help_text() -> str:
    """One line per kind for --help."""
    return "; ".join(f"{k.usage()}: {k.help}" for k in REGISTRY.values()) + "; append :always to repeat " \
        "after every restart"


def parse_fault(text: str | None) -> Fault | None:
    """`kill:worker=1:step=3` -> Fault; None for None or ''. Raises ValueError naming the bad part."""
    if not text:
        return None
    kind, *parts = text.split(":")
    if kind not in REGISTRY:
        raise ValueError(f"unknown fault {kind!r} in {text!r}; kinds: {', '.join(KINDS)}")
    allowed = REGISTRY[kind].options
    usage = ", ".join("always" if key == "always" else f"{key}=..." for key in allowed)
    values: dict = {}
    for part in parts:
        key, _, value = part.partition("=")
        if key not in allowed or (key == "always") == ("=" in part):
            raise ValueError(f"bad fault option {part!r} in {text!r}; {kind} takes {usage}")
        if key == "always":
            values["always"] = True
            continue
        try:
            number = float(value) if key == "delay" else int(value)
        except ValueError:
            raise ValueError(f"bad fault option {part!r} in {text!r}: {key} must be a number") from None
        low = 1 if key == "checkpoint" else 0
        if number != number or number < low or (key == "delay" and not 0 < number < float("inf")):
            raise ValueError(f"bad fault option {part!r} in {text!r}: {key} must be "
                             f"{'> 0' if key == 'delay' else f'>= {low}'}")
        values[key] = number
    if kind.startswith("slow") and "delay" not in values:
        raise ValueError(f"fault {text!r}: {kind} needs delay=SECONDS (extra seconds per step)")
    return Fault(kind, **values)


def fault_from_env() -> Fault | None:
    """The fault in AUGLOCAL_INJECT_FAULT (the CLI reads it only when --inject-fault is absent)."""
    return parse_fault(os.environ.get(ENV_VAR))


def check_target(fault: Fault | None, workers: int) -> None:
    """Refuse (ValueError) a fault aimed at a worker that does not exist, or at a link the last worker lacks."""
    if fault is None or fault.info.target != "worker":
        return
    if not 0 <= fault.worker < workers:
        raise ValueError(f"--inject-fault {fault.kind}: worker {fault.worker} does not exist (this run has "
                         f"{workers})")
    if fault.info.on_link and fault.worker == workers - 1:
        raise ValueError(f"--inject-fault {fault.kind}: worker {fault.worker} is the last one and has no "
                         "outgoing link; choose an earlier worker")


def die() -> None:
    """Die like a crashed process: SIGKILL, no cleanup, no goodbye message."""
    os.kill(os.getpid(), signal.SIGKILL)


def hang() -> None:
    """Stop making progress forever (the heartbeat timeout must catch this)."""
    while True:
        time.sleep(3600)


class InjectedError(RuntimeError):
    """The `raise` fault: an unexpected exception inside a worker, as a bug would raise."""


def _raise() -> None:
    raise InjectedError("injected fault: an unexpected exception in the worker")


#: what a fault firing at `train` does (REGISTRY names the kinds; the worker loop calls it)
FAULT_ACTIONS: dict[str, Callable[[], None]] = {"kill": die, "hang": hang, "raise": _raise}
