"""A run folder belongs to one run: a second run into a folder in use is refused while the first ends bitwise
equal; SIGTERM and Ctrl-C stop cleanly with the resume command; --resume keeps the runtime flags the run was
started with (a flag given again overrides and is recorded)."""

import json
import os
import signal
import subprocess
import sys
import time

import auglocal.launch.run.pipeline
import pytest
from auglocal.launch.cli import main
from auglocal.launch.run.checkpoints import UNCOMMITTED, CheckpointStore, RunIdentity

from tests.faults.support import (
    REPO,
    TAG_VAR,
    assert_complete,
    assert_no_orphan_workers,
    assert_no_tagged,
    new_tag,
    one_line_exit,
    small_flags,
)


def start_cli(args, tag: str) -> subprocess.Popen:
    """`python -m auglocal.launch.cli ARGS` in the background (its output is small: --no-progress)."""
    env = {**os.environ, TAG_VAR: tag}
    # SIGINT at its default, as at a terminal: a test suite started in the background (`pytest &`) ignores it, the
    # child would inherit that, Python would then install no KeyboardInterrupt handler, and Ctrl-C would do nothing
    return subprocess.Popen([sys.executable, "-m", "auglocal.launch.cli", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(condition, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before the test could act: "
                                 f"{proc.stderr.read()}")
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.05)


def test_second_run_into_a_folder_in_use_is_refused(reference, tmp_path, capsys):
    out = tmp_path / "run"
    tag = new_tag()
    first = start_cli(small_flags(out, "--workers", "2"), tag)
    wait_for(lambda: (out / "config.json").exists(), first)      # written while the lock is held
    for second in (small_flags(out, "--workers", "2", "--seed", "3"),
                   small_flags(out, "--workers", "2", "--overwrite"),
                   ["--resume", out, "--no-progress"]):
        line = one_line_exit(second, capsys)
        assert line.startswith(f"auglocal-launch: error: run folder {out} is in use by another run (pid "
                               f"{first.pid} on "), line
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert_complete(reference, out, restarts=0)
    assert_no_tagged(tag)


@pytest.mark.parametrize("sig, code, what", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                             (signal.SIGINT, 130, "interrupted")])
def test_signal_stops_cleanly_with_the_resume_hint(sig, code, what, reference, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    tag = new_tag()
    proc = start_cli(small_flags(out, "--workers", "2", "--heartbeat-timeout", "30", "--worker-malloc", "keep",
                                 "--max-restarts", "1"), tag)
    wait_for(lambda: CheckpointStore(out).committed_ids(), proc)         # mid-run, after a commit
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"auglocal-launch: {what} at ")
    assert last.endswith(f"; every worker stopped; resume with: auglocal-launch --resume {out}")
    assert_no_tagged(tag)                                 # workers stopped (and the socket folder removed)
    if sig != signal.SIGTERM:
        return
    identity = json.loads((out / "run.json").read_text())
    store = CheckpointStore(out, RunIdentity(identity["run_id"], identity["config_sha256"]))
    lines = []
    assert store.verified_latest(lines.append) is not None
    assert all(line.endswith(f"{UNCOMMITTED}; skipped") for line in lines), lines    # nothing half-written

    seen = {}
    real = auglocal.launch.run.pipeline.train_pipeline

    def spy(cfg, data, opts, **kw):
        seen["opts"] = opts
        return real(cfg, data, opts, **kw)

    monkeypatch.setattr(auglocal.launch.run.pipeline, "train_pipeline", spy)
    assert main(["--resume", str(out), "--workers", "3", "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert "auglocal-launch: resuming with --workers 3" in stdout
    opts = seen["opts"]
    assert (opts.workers, opts.checkpoint_every, opts.heartbeat_timeout, opts.malloc, opts.max_restarts) == \
        ("3", 2, 30.0, "keep", 1)
    runtime = json.loads((out / "runtime.json").read_text())
    assert runtime["flags"]["workers"] == "3" and runtime["flags"]["worker_malloc"] == "keep"
    assert [c["flags"] for c in runtime["changes"]] == [{"workers": "3"}]
    assert_complete(reference, out, restarts=0)
    # checkpoints kept coming every 2 minibatches after the resume (the default would be epoch ends only)
    assert [json.loads((store.dir_for(i) / "manifest.json").read_text())["global_step"]
            for i in store.committed_ids()] == [10, 12]
    assert_no_orphan_workers()
