"""One-worker recovery: restart only the worker that failed, while the others keep their processes and state.

Local learning makes this possible: no gradient crosses a worker boundary, so worker r's layers depend only
on the activations that reach it and on its own state. When worker r dies, hangs or stops on a malformed
message, the coordinator (`OneWorkerRecovery.recover`)

1. stops worker r only and starts a new one from r's layers in the last committed checkpoint, on fresh
   socket addresses (nothing of the old links survives, credits included): a warm spare where one waits
   (`--spares`, launch/backends/one_host/spares.py), which has its process and the network built already and
   loads its layer files during the short grace in which the coordinator looks for other workers that died
   with r;
2. tells worker r+1 to expect a replay from the new worker (`expect_replay`): r+1 drops the messages it has
   already handled (sequence number <= its last) and handles the rest;
3. tells worker r-1 to open a fresh link to the new worker and resend its replay log from the checkpoint's
   marker on (`relink`, workers/runtime/replay_log.py); for r = 0 the coordinator itself re-feeds the events it sent
   since that marker (minibatches are rebuilt from seed, epoch and step);
4. keeps the books straight: reports from the old process are ignored (the new one has another name),
   metrics and test results of replayed steps are counted once (`ReportDedupe`), and checkpoints that
   waited for r's acknowledgement complete when the new r acknowledges.

The stop marker is an event like the others, so a failure after the coordinator fed it (the whole tail of a
deep pipeline: with one worker per layer the marker is fed about three minibatches per worker before the run
ends) is recovered the same way: the marker is in the coordinator's sent-log and in each worker's replay log,
and the coordinator's stop-drain loop goes through `recover` like the feed loop. For that, workers are held
after the marker (`WorkerSpec.hold_after_stop`): once a worker has reported stopped it keeps its process,
links and replay log, relinks and replays when its downstream restarts, drops the repeats of a restarted
upstream, and exits when the coordinator releases every worker (`release_all`, once all K reported stopped)
or when the coordinator is gone. A restarted worker reports stopped again; the old process's report no
longer counts.

It falls back to the whole-pipeline restart (auglocal.launch.run.pipeline.run_attempts) by re-raising the failure when
it cannot work: `--recovery all`, a failure that blames no single worker, another worker down as well (two
adjacent workers: a log lost with its worker), a thread worker (it fails with its whole host process and keeps
no replay log), the same worker failing twice in one attempt, a failure while recovering, a coordinator
driven without control links (tests), a checkpoint to restart from that fails its verification, or a replay
log that cannot serve the replay: an entry damaged or missing (workers/runtime/replay_log.py checks each one's
checksum before resending it, so nothing damaged reaches the restarted worker). The last is said in one line
on stderr; every fallback's reason is in summary.json's `restarts`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from auglocal.workers.links.link import Link
from auglocal.workers.runtime.replay_log import UNUSABLE
from auglocal.workers.runtime.worker import worker_name
from auglocal.workers.wire.messages import Kind, Message
from auglocal.workers.wire.protocol import CommittedMeta, ExpectReplayMeta, NoMeta, RelinkMeta

CONTROL_WINDOW = 8
SEND_TIMEOUT_MS = 10_000
RELEASE_TIMEOUT_MS = 1_000   # a held worker reads its control inbox every 100 ms; one that does not is gone

#: how long a failure waits for other workers that died with it to show it. Measured with kill-pair (two workers
#: SIGKILLed together, 3 runs at load 6 on 2 cores): the second showed dead 4-10 ms into the wait. It was 0.25 s,
#: which was the largest part of a one-worker recovery once a warm spare is ready in tens of milliseconds.
DEATH_GRACE_S = 0.1


@dataclass
class ReportDedupe:
    """Counts each worker's report of a step (and the last worker's result of a test batch) once.

    A worker reports in order, so a report at or before the last one counted from that rank is a repeat,
    sent by a restarted worker that recomputes from its checkpoint."""

    last: dict[tuple[int, str], tuple[int, int]] = field(default_factory=dict)
    repeats: int = 0

    def fresh(self, rank: int, what: str, epoch: int, index: int) -> bool:
        key, position = (rank, what), (epoch, index)
        if key in self.last and position <= self.last[key]:
            self.repeats += 1
            return False
        self.last[key] = position
        return True


@dataclass
class SentEvent:
    """A DOWN message the coordinator fed, kept until a checkpoint after it commits (worker 0's replay)."""

    seq: int
    build: Callable[[], Message]


@dataclass
class Recovery:
    """One one-worker recovery, for summary.json's `restarts` (path 'one')."""

    worker: int
    layers: list[int]
    error: str
    restart_from: int | None
    detected_at: float
    pid_before: int | None = None
    pid_after: int | None = None
    stopped_at: float | None = None
    ready_at: float | None = None
    first_step: tuple[int, int] | None = None     # the new worker's first step that had not been reported
    first_step_done_at: float | None = None
    after_stop: bool = False                      # detected after the coordinator fed the stop marker
    spare: bool = False                           # the replacement was a warm spare (else a cold start)

    def to_dict(self, attempt: int) -> dict:
        done = self.first_step_done_at or self.ready_at

        def since(t: float | None) -> float | None:
            return None if t is None else t - self.detected_at

        return {"attempt": attempt, "worker": self.worker, "layers": self.layers, "error": self.error,
                "restart_from": self.restart_from, "path": "one", "pid_before": self.pid_before,
                "pid_after": self.pid_after, "recovery_s": since(done), "stopped_s": since(self.stopped_at),
                "ready_s": since(self.ready_at), "after_stop": self.after_stop, "spare": self.spare}


class OneWorkerRecovery:
    """The coordinator's half of one-worker recovery: sequence numbers, its own replay log, control links."""

    def __init__(self, coord):
        self.c = coord
        self.seq = 0                           # next DOWN message's sequence number
        self.sent: list[SentEvent] = []        # what was fed since the last commit (worker 0's replay)
        self.committed_id: int | None = (coord.next_ckpt - 1) if coord.opts.resume_dir else None
        self.committed_seq = -1                # the last committed marker's seq (-1: the attempt's start)
        self.committed_dir: str | None = coord.opts.resume_dir
        self.dedupe = ReportDedupe()
        self.recoveries: list[Recovery] = []
        self.recovered: set[int] = set()
        self.incarnations = [0] * coord.k
        self.stale: set[str] = set()
        self.recovering = False
        self.stopping = False
        self.launch: Callable | None = None    # spec -> worker handle; None: recovery unavailable
        self.spares = None                     # the warm spares' pool (launch/backends/one_host/spares.py), if any
        self.controls: dict[int, object] = {}
        self._deferred: list[tuple[int, int]] = []
        self._pins: dict[int, tuple[int, int]] = {}   # restarted rank -> (oldest checkpoint it needs, unpin at ack)

    # --- wiring ------------------------------------------------------------------------------------------
    def control_link(self, rank: int) -> Link:
        return self.c.link(f"c{rank}.{self.incarnations[rank]}", CONTROL_WINDOW, owner=rank)

    def inbox_link(self, rank: int) -> Link:
        return self.c.link(f"w{rank}.{self.incarnations[rank]}", self.c.opts.window, owner=rank)

    def enable(self, launch: Callable, spares=None) -> None:
        """Real worker processes with control inboxes: recovery is possible (start() calls this). With `spares`
        (a pool with `launch`, `fill` and `close`), a replacement is a warm spare where one is waiting."""
        self.launch = spares.launch if spares is not None else launch
        self.spares = spares

    def warm(self, specs: list) -> None:
        """The workers are ready: start the spares now (they would slow the workers' own start), with the run
        settings of the workers' `specs`."""
        if self.spares is not None:
            self.spares.fill(specs)

    @property
    def holds_after_stop(self) -> bool:
        """Whether workers wait for `release_all` after the stop marker (so a failure in the run's tail can
        still be recovered alone); only where one-worker recovery can happen."""
        return self.launch is not None and self.c.opts.recovery == "one"

    def release_all(self) -> None:
        """Every worker reported stopped: let the held ones exit. A worker that misses it (it died meanwhile)
        needs nothing more: its final layers are written."""
        if self.holds_after_stop:
            for rank in range(self.c.k):
                self.tell(rank, Kind.RELEASE, NoMeta(), RELEASE_TIMEOUT_MS)

    def _control(self, rank: int):
        if rank not in self.controls:
            self.controls[rank] = self.c.specs_control[rank].sender(self.c.codec, curve=self.c.curve)
        return self.controls[rank]

    def tell(self, rank: int, kind: Kind, meta, timeout_ms: float = SEND_TIMEOUT_MS) -> bool:
        """A control message to worker `rank` (workers drain their control inbox every 100 ms). False when
        its control link stayed full for `timeout_ms` (the worker is dead or stuck: detection will say)."""
        try:
            self._control(rank).send(Message(kind, "coordinator", meta=meta), timeout_ms)
            return True
        except TimeoutError:
            return False

    def _must_tell(self, rank: int, kind: Kind, meta) -> None:
        if not self.tell(rank, kind, meta):
            raise self.c._fail(rank, f"did not take the control message {kind.value!r} within "
                                     f"{SEND_TIMEOUT_MS / 1000:.0f} s")

    def close(self) -> None:
        for end in self.controls.values():
            end.close()
        self.controls.clear()
        if self.spares is not None:
            self.spares.close()

    # --- sequence numbers and the coordinator's own log ----------------------------------------------------
    def next_seq(self) -> int:
        seq = self.seq
        self.seq += 1
        return seq

    def fed(self, seq: int, build: Callable[[], Message]) -> None:
        self.sent.append(SentEvent(seq, build))

    def on_commit(self, ckpt_id: int, seq: int, directory: str) -> None:
        """A checkpoint committed: workers may prune their logs up to its marker (deferred while recovering,
        so a worker never prunes what a pending replay still needs)."""
        self.committed_id, self.committed_seq, self.committed_dir = ckpt_id, seq, directory
        self.sent = [e for e in self.sent if e.seq > seq]
        if self.launch is None:
            return
        self._deferred.append((ckpt_id, seq))
        if not self.recovering:
            self._flush_commits()

    def _flush_commits(self) -> None:
        for ckpt_id, seq in self._deferred:
            for rank in range(self.c.k - 1):       # the last worker sends nothing downstream: it keeps no log
                self.tell(rank, Kind.COMMITTED, CommittedMeta(ckpt_id, seq), 0)   # a later one covers a lost one
        self._deferred.clear()

    # --- reports -----------------------------------------------------------------------------------------
    def fresh_metrics(self, rank: int, epoch: int, step: int) -> bool:
        fresh = self.dedupe.fresh(rank, "metrics", epoch, step)
        if fresh:
            for rec in self.recoveries:
                if rec.worker == rank and rec.first_step is None and rec.ready_at is not None:
                    rec.first_step = (epoch, step)
        return fresh

    def after_metrics(self, pending: dict) -> None:
        """Note when the first step that needed a restarted worker completes (recovery_s ends there)."""
        for rec in self.recoveries:
            if rec.first_step is not None and rec.first_step_done_at is None and rec.first_step not in pending:
                rec.first_step_done_at = time.perf_counter()
                if self.spares is not None:
                    self.spares.fill()     # caught up: the next spare no longer slows this recovery down

    def _pin(self, rank: int, oldest: int | None, until: int) -> None:
        """Keep checkpoints from `oldest` on until worker `rank` acknowledges `until`: it loads the first and
        rewrites the folders of the markers it replays, which commits meanwhile must not prune away."""
        if oldest is not None:
            self._pins[rank] = (oldest, until)
        self._set_pin()

    def _set_pin(self) -> None:
        if hasattr(self.c.store, "pinned"):
            self.c.store.pinned = min((p for p, _ in self._pins.values()), default=None)

    def acked(self, rank: int, ckpt_id: int) -> None:
        pin = self._pins.get(rank)
        if pin is not None and ckpt_id >= pin[1]:
            del self._pins[rank]
            self._set_pin()

    def repeated_ack(self, rank: int, ckpt_id: int) -> bool:
        """A restarted worker acknowledges again the markers it replays: not an error."""
        return rank in self.recovered and ckpt_id < self.c.next_ckpt

    # --- the recovery ------------------------------------------------------------------------------------
    def why_not(self, err) -> str | None:
        """Why one-worker recovery cannot handle `err` (None: it can)."""
        c, r = self.c, err.rank
        if c.placement.replicas > 1:     # launch/run/replicas.py: the peers would have to repeat steps in lockstep
            return "--replicas > 1: every failure restarts all workers"
        if c.opts.recovery != "one":
            return "--recovery all"
        if c.placement.hosts is not None:
            return "thread workers: a failed worker ends its host process, which restarts with the whole pipeline"
        if self.launch is None:
            return "no control links (a coordinator driven in-process)"
        if r is None:
            return "no single worker to blame"
        if not err.restartable:
            return "a restart would fail the same way"
        if UNUSABLE in err.what:
            return f"worker {r}'s {UNUSABLE} ({err.what.split(UNUSABLE, 1)[1].lstrip(': ')})"
        if self.recovering:
            return "another failure during a one-worker recovery"
        if r in self.recovered:
            return f"worker {r} failed again"
        return self._checkpoint_problem()

    def others_down(self, r: int, since: float) -> str | None:
        """Why worker r cannot be restarted alone because others died with it (None: they all run), asked once
        DEATH_GRACE_S has passed `since` (time.monotonic()): processes that died together show it milliseconds
        apart, so let them all show. `_restart` asks it after starting the replacement, which gets ready
        meanwhile (a warm spare loads its layer files in that time)."""
        time.sleep(max(0.0, since + DEATH_GRACE_S - time.monotonic()))
        down = [q for q, w in enumerate(self.c.workers) if q != r and not w.is_alive()]
        adjacent = [q for q in down if abs(q - r) == 1]
        if adjacent:
            return f"two adjacent workers down ({min(r, adjacent[0])} and {max(r, adjacent[0])})"
        if down:
            return f"workers {sorted([r, *down])} down"
        return None

    def _checkpoint_problem(self) -> str | None:
        """Why the checkpoint a restarted worker would load cannot be used (None: intact, or the attempt's
        start): checked like a resume's (launch/run/checkpoints.py), since it was verified only when committed."""
        store, ckpt_id = self.c.store, self.committed_id
        if ckpt_id is None or not hasattr(store, "problem"):
            return None
        try:
            problem = store.problem(ckpt_id)
        except Exception as exc:       # ForeignCheckpoint: what restart from it could be right?
            problem = str(exc)
        return None if problem is None else f"checkpoint {ckpt_id} to restart from: {problem}"

    def recover(self, err) -> None:
        """Restart worker err.rank alone, or re-raise `err` (whole-pipeline restart) when that cannot work."""
        reason = self.why_not(err)
        if reason is not None:
            err.fallback = reason
            if UNUSABLE in err.what:
                print(f"auglocal-launch: {reason}; the restarted worker was not trained on it: restarting every "
                      f"worker from {f'checkpoint {self.committed_id}' if self.committed_id else 'the attempt start'}"
                      " instead", file=sys.stderr, flush=True)
            raise err
        r = err.rank
        self.recovering = True
        try:
            self._restart(err, r)
        except Exception as nested:
            if hasattr(nested, "fallback") and nested is not err:
                nested.fallback = f"another failure during the recovery of worker {r}"
            raise
        finally:
            self.recovering = False
        self._flush_commits()
        print(f"auglocal-launch: {err}; restarted worker {r} alone from "
              f"{f'checkpoint {self.committed_id}' if self.committed_id else 'the attempt start'}; "
              f"the other workers kept running"
              f"{' (after the stop marker: they stay until every worker has stopped)' if self.stopping else ''}",
              flush=True)

    def _restart(self, err, r: int) -> None:
        c = self.c
        # the resume point is fixed now: a checkpoint that commits while we wait does not move it
        from_seq, from_dir, events = self.committed_seq, self.committed_dir, list(self.sent)
        since = time.monotonic()
        old = c.workers[r]
        old.stop()
        stopped_at = time.perf_counter()
        self.stale.add(worker_name(r, self.incarnations[r]))
        c.ranks.pop(worker_name(r, self.incarnations[r]), None)
        self.incarnations[r] += 1
        old_control = self.controls.pop(r, None)
        if old_control is not None:
            old_control.close()
        c.inboxes[r] = self.inbox_link(r)
        c.specs_control[r] = self.control_link(r)
        spec = c.specs()[r]
        f = c.opts.fault
        spec = replace(spec, resume_dir=from_dir, resume_seq=from_seq,
                       incarnation=self.incarnations[r], fault=spec.fault if (f and f.always) else None)
        used = self.spares.used if self.spares is not None else 0
        new = self.launch(spec)           # it gets ready while the grace for other deaths runs
        down = self.others_down(r, since)
        if down is not None:
            new.stop()
            err.fallback = down
            raise err
        self._pin(r, self.committed_id, c.next_ckpt - 1)
        rec = Recovery(r, err.layers, str(err), self.committed_id, err.detected_at, getattr(old, "pid", None),
                       after_stop=self.stopping, stopped_at=stopped_at,
                       spare=self.spares is not None and self.spares.used > used)
        self.recoveries.append(rec)
        self.recovered.add(r)
        c.ranks[spec.name] = r
        c.ready.discard(r)
        c.stopped.discard(r)             # the new worker passes the stop marker again (if it was fed)
        c.waiting[r] = None
        if r + 1 < c.k:
            self._must_tell(r + 1, Kind.EXPECT_REPLAY, ExpectReplayMeta(spec.name))
        c.workers[r] = new
        rec.pid_after = getattr(new, "pid", None)
        c.pids.setdefault(r, []).append(rec.pid_after)
        deadline = time.monotonic() + c.ready_timeout_s
        while r not in c.ready:
            if time.monotonic() > deadline:
                raise c._fail(r, f"restarted alone, not ready after {c.ready_timeout_s:.0f} s")
            c._drain(50)
        rec.ready_at = time.perf_counter()
        c.last_seen[r] = c.clock()
        if r == 0:
            self._refeed([e for e in events if e.seq > from_seq])
        else:
            self._must_tell(r - 1, Kind.RELINK, RelinkMeta(c.inboxes[r].address, from_seq))

    def _refeed(self, events: list[SentEvent]) -> None:
        """Worker 0 restarted: a fresh feed link, and every event fed since its checkpoint again, in order."""
        c = self.c
        c.feed.close()
        c.feed = c.inboxes[0].sender(c.codec, curve=c.curve)
        for event in events:
            c._send_once(event.build())
