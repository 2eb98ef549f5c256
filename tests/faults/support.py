"""Helpers of the fault-injection suite: the small run, its reference, bitwise checks, orphan checks, the CLI.

Every run of the suite is the same small training run (ResNet-20, d = 3, 48 synthetic 16x16 images, batch 8,
2 epochs = 12 minibatches, checkpoints every 2), so each faulted run can be compared with one sequential
reference: faults may change when things happen, never the weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from auglocal.engine.config import RunConfig, build_data, build_network, optim_and_schedule, resolve
from auglocal.engine.trainer import EpochRecord, SequentialTrainer
from auglocal.launch.run.coordinator import Coordinator
from auglocal.launch.run.pipeline import PipelineOptions, train_pipeline
from auglocal.workers.runtime.faults import parse_fault

REPO = Path(__file__).resolve().parents[2]
TAG_VAR = "AUGLOCAL_TEST_TAG"
CHECKPOINT_EVERY = 2
TRAIN_SIZE, TEST_SIZE = 48, 16
SMALL = dict(model="resnet20", rule="auglocal", d=3, dataset="synthetic", input_size=16, num_classes=4,
             train_size=TRAIN_SIZE, test_size=TEST_SIZE, batch_size=8, epochs=2, lr=0.05, warmup=1, seed=7)
#: the same run as auglocal-launch flags
SMALL_FLAGS = ["--model", "resnet20", "--rule", "auglocal", "--d", "3", "--dataset", "synthetic",
               "--input-size", "16", "--num-classes", "4", "--train-size", str(TRAIN_SIZE),
               "--test-size", str(TEST_SIZE), "--batch-size", "8", "--epochs", "2",
               "--lr", "0.05", "--warmup-epochs", "1", "--seed", "7", "--balance", "flops", "--no-progress"]


def small_flags(out, *extra: str) -> list[str]:
    """The small run as flags into run folder `out`, checkpoints every CHECKPOINT_EVERY minibatches."""
    return [*SMALL_FLAGS, "--checkpoint-every", str(CHECKPOINT_EVERY), "--out", str(out), *extra]


def small_run(max_steps: int | None = None) -> tuple[RunConfig, object]:
    """A fresh config (train_pipeline mutates it) and the 48-image synthetic data set."""
    cfg = RunConfig(**SMALL, max_steps=max_steps)
    data = build_data(cfg)
    return resolve(cfg, data), data


@dataclass
class Reference:
    """What the sequential trainer computes for the small run: the oracle of every faulted run."""

    model: torch.nn.Module
    aux: list
    history: list[EpochRecord]
    updates: dict[int, int]
    steps: int


def sequential_reference(max_steps: int | None = None) -> Reference:
    torch.set_num_threads(1)
    cfg, data = small_run(max_steps)
    model, aux = build_network(cfg, data)
    optim, schedule = optim_and_schedule(cfg)
    trainer = SequentialTrainer(model, aux, optim, schedule, seed=cfg.seed)
    history = trainer.fit(data, cfg.epochs, cfg.batch_size, max_steps=max_steps)
    steps = cfg.epochs * data.steps_per_epoch(cfg.batch_size)
    return Reference(model, list(aux), history, dict(trainer.stage.update_counts),
                     steps if max_steps is None else min(steps, max_steps))


def run_in_process(out: Path, fault: str | None = None, *, workers: str = "2", max_restarts: int = 3,
                   heartbeat_timeout: float = 120.0, checkpoint_every: int = CHECKPOINT_EVERY,
                   recovery: str = "all", replay_log_mb: float = 256.0, transport: str = "ipc",
                   worker_kind: str = "process", workers_per_host: int = 0, spares: int = 1) -> int:
    """train_pipeline on the small run with one injected fault; returns its exit code. `recovery` is 'all'
    (every worker restarts) unless a test asks for one-worker recovery; `worker_kind` 'thread' runs the
    workers as threads of host processes (at most `workers_per_host` each, 0: all in one); `spares` warm spares
    wait for a one-worker recovery (0: its replacement starts cold)."""
    cfg, data = small_run()
    opts = PipelineOptions(workers=workers, balance="flops", threads=1, checkpoint_every=checkpoint_every,
                           heartbeat_timeout=heartbeat_timeout, max_restarts=max_restarts,
                           fault=parse_fault(fault), recovery=recovery, replay_log_mb=replay_log_mb,
                           transport=transport, worker_kind=worker_kind, workers_per_host=workers_per_host,
                           spares=spares)
    return train_pipeline(cfg, data, opts, out=str(out), progress=False)


def run_cli(args: list[str], tag: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """`python -m auglocal.launch.cli ARGS` in a new process whose environment carries `tag` (tagged_processes)."""
    env = {**os.environ, TAG_VAR: tag}
    return subprocess.run([sys.executable, "-m", "auglocal.launch.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def new_tag() -> str:
    return uuid.uuid4().hex


# --- checks on a finished run folder ---------------------------------------------------------------------
def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def assert_same_weights(ref, run_dir: Path) -> None:
    """model.pt and aux.pt equal the reference's primary network and aux nets (`ref.model`, `ref.aux_nets` or
    `ref.aux`), every tensor bit for bit."""
    state = torch.load(run_dir / "model.pt", weights_only=True)
    expected = ref.model.state_dict()
    assert sorted(state) == sorted(expected)
    for name, value in expected.items():
        assert torch.equal(state[name], value), f"primary {name} differs from the sequential reference"
    aux_nets = list(getattr(ref, "aux", None) or ref.aux_nets)
    aux_state = torch.load(run_dir / "aux.pt", weights_only=True)
    assert sorted(aux_state) == [a.layer for a in aux_nets]
    for a in aux_nets:
        for name, value in a.state_dict().items():
            assert torch.equal(aux_state[a.layer][name], value), f"aux {a.layer} {name} differs"


def assert_complete(ref: Reference, run_dir: Path, restarts: int) -> dict:
    """Weights equal, every layer applied each minibatch exactly once, `restarts` restarts, metrics intact."""
    assert_same_weights(ref, run_dir)
    s = summary(run_dir)
    assert s["expected_updates"] == ref.steps
    assert {int(k): v for k, v in s["updates"].items()} == ref.updates
    assert set(s["updates"].values()) == {ref.steps}
    assert len(s["restarts"]) == restarts, s["restarts"]
    for r in s["restarts"]:
        assert r["recovery_s"] is not None and 0 < r["recovery_s"] < 120, r
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # records written after the restart point were dropped and written again: each step exactly once
    assert [r["global_step"] for r in rows if r["kind"] == "step"] == list(range(1, ref.steps + 1))
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert [e["test_accuracy"] for e in epochs] == [h.test_accuracy for h in ref.history]
    return s


# --- orphans -----------------------------------------------------------------------------------------------
def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def tagged_processes(tag: str) -> list[psutil.Process]:
    """Live processes on this machine whose environment carries TAG_VAR=tag."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(TAG_VAR) == tag and _alive(p):
                found.append(p)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def worker_processes() -> list[psutil.Process]:
    """Live descendants of this process except multiprocessing's forkserver and resource tracker, which are
    reused from run to run. Workers are the forkserver's children (forked, so they share its command line)."""
    found = []
    for child in psutil.Process().children():
        try:
            cmdline = " ".join(child.cmdline())
            below = child.children(recursive=True)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        helper = "multiprocessing.forkserver" in cmdline or "multiprocessing.resource_tracker" in cmdline
        found.extend(p for p in ([] if helper else [child]) + below if _alive(p))
    return found


def wait_until_gone(find, timeout: float = 15.0) -> list[psutil.Process]:
    """Poll `find()` until it returns nothing or `timeout` passes; returns what is still alive."""
    deadline = time.monotonic() + timeout
    while (left := find()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def describe(procs: list[psutil.Process]) -> str:
    out = []
    for p in procs:
        try:
            out.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.Error:
            out.append(str(p.pid))
    return "; ".join(out)


def assert_no_orphan_workers() -> None:
    """After an in-process run, no worker process of it may remain (poll: exiting takes a moment)."""
    left = wait_until_gone(worker_processes, timeout=10.0)
    assert not left, f"worker processes outlived the run: {describe(left)}"


def assert_no_tagged(tag: str) -> None:
    """After a subprocess run, nothing it started (workers, forkserver) may remain on the machine."""
    left = wait_until_gone(lambda: tagged_processes(tag), timeout=15.0)
    assert not left, f"processes of the run outlived it: {describe(left)}"


def one_line_exit(args, capsys, code: int = 2) -> str:
    """Run the CLI in this process and return its one stderr line: it must exit `code`, with no traceback."""
    from auglocal.launch.cli import main

    assert main([str(a) for a in args]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def after_feeding(monkeypatch, actions: dict[int, Callable[[Coordinator], None]]) -> None:
    """Call actions[n](coordinator) right after the coordinator has fed the n-th training minibatch of an
    attempt (each attempt has its own coordinator): how a fault test acts while a real run trains."""
    original = Coordinator._feed_train

    def feed_train(self, event):
        original(self, event)
        self._fed_in_attempt = getattr(self, "_fed_in_attempt", 0) + 1
        action = actions.get(self._fed_in_attempt)
        if action is not None:
            action(self)

    monkeypatch.setattr(Coordinator, "_feed_train", feed_train)
