"""A divergence (--nonfinite stop) in a pipelined run: name the step and layer the sequential trainer would name,
stop without a restart, and say so in one line and in summary.json.

Which report is first depends on timing: worker r can report step s before worker r-1 has finished its aux
work of step s (it emits its output before that), and a worker behind can still diverge at an earlier step.
So on the first report the coordinator stops feeding and waits (`settle`) until every live worker has either
reported a divergence or reported metrics for that step, then takes the earliest (step, layer): exactly the
module at which the sequential trainer, which finishes step s in every layer before step s+1, stops. A
diverged worker drops what follows (workers/runtime/worker.py), so no checkpoint after its divergence commits.

A divergence is not restartable: a restart from the last checkpoint computes the same steps and diverges
again. The resume line therefore suggests `--nonfinite skip`, which --resume accepts (it is not part of the
run's identity: a run that stopped had skipped nothing, so skip mode continues it exactly).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass

from auglocal.engine.nonfinite import describe
from auglocal.workers.wire import protocol
from auglocal.workers.wire.messages import Kind, Message, MessageError
from auglocal.workers.wire.protocol import Route

POLL_MS = 50


@dataclass(frozen=True)
class Divergence:
    """Where a local module's loss went non-finite; `worker` None for the sequential trainer."""

    epoch: int
    step: int
    layer: int
    what: str
    value: str
    worker: int | None = None

    @classmethod
    def from_message(cls, rank: int, msg: Message) -> Divergence:
        return cls(msg.epoch, msg.step, msg.meta.layer, msg.meta.what, msg.meta.value, rank)

    @property
    def order(self) -> tuple[int, int, int]:
        return (self.epoch, self.step, self.layer)

    def describe(self) -> str:
        where = "the sequential trainer" if self.worker is None else f"worker {self.worker}"
        return f"{describe(self.epoch, self.step, self.layer, self.what, self.value)} ({where})"

    def to_dict(self) -> dict:
        return asdict(self)


def _passed(coord, rank: int, at: tuple[int, int]) -> bool:
    last = coord.recovery.dedupe.last.get((rank, "metrics"))
    return last is not None and last >= at


def settle(coord, first: Divergence) -> Divergence:
    """The earliest divergence of the run, waiting (at most --heartbeat-timeout) until no live worker can still
    report an earlier one. Metrics, test results and acknowledgements that arrive meanwhile are handled as
    usual (a checkpoint before the divergence may still commit); other failures are ignored: the run stops."""
    found = {first.worker: first}
    at = (first.epoch, first.step)
    deadline = time.monotonic() + coord.opts.heartbeat_timeout
    while time.monotonic() < deadline:
        if all(q in found or _passed(coord, q, at) or not coord.workers[q].is_alive() for q in range(coord.k)):
            break
        try:
            msg = protocol.validate(coord.results.recv(POLL_MS), Route.REPORT)
        except (TimeoutError, MessageError):
            continue
        rank = coord.ranks.get(msg.sender)
        if rank is None:
            continue
        if msg.kind is Kind.DIVERGED:
            found.setdefault(rank, Divergence.from_message(rank, msg))    # a worker's first is its earliest
        elif msg.kind in (Kind.METRICS, Kind.EVAL_RESULT, Kind.CHECKPOINT_ACK):
            try:
                protocol.dispatch(coord.handlers, msg)
            except RuntimeError:
                pass
    return min(found.values(), key=lambda d: d.order)


def resume_hint(run_path, resumable: bool = True) -> str:
    if not resumable:
        return ("--sequential keeps no checkpoints: run it again with --overwrite and --nonfinite skip, or with a "
                "lower --lr")
    return (f"resume with: auglocal-launch --resume {run_path} --nonfinite skip (the same settings diverge again "
            "at this step)")


def report(p, outcome, describe_checkpoint) -> int:
    """The one line and summary.json of a pipelined run stopped by a divergence; returns exit code 1."""
    div: Divergence = outcome.error.divergence
    latest = p.store.verified_latest(report=lambda line: None)
    print(f"auglocal-launch: stopped: {div.describe()} (--nonfinite stop; not restarted: it would diverge again); "
          f"last committed: {describe_checkpoint(latest)}; {resume_hint(p.run.path)}", file=sys.stderr)
    p.run.write_json("summary.json", {
        "stopped": "nonfinite", "divergence": div.to_dict(), "nonfinite": p.cfg.nonfinite,
        "skipped": outcome.tracker.skipped_totals(), "last_checkpoint": latest[0] if latest else None,
        "restarts": outcome.restarts, "rejected_messages": outcome.counters.rejected, "worker_pids": outcome.pids})
    p.run.close()
    p.tb.close()
    return 1
