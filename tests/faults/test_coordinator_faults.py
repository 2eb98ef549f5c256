"""The command line: the coordinator dies and --resume finishes the run; resume refuses a different run; a
worker that always dies exhausts --max-restarts. No process of a run may outlive it.

The killed run (the `coordinator_killed` fixture) is `python -m auglocal.launch.cli` in its own process, whose
output is captured through pipes that its workers inherit: had the workers not noticed their coordinator's
death (a zombie until this process reaps it, which `subprocess.run` does only after the pipes close), the run
would hang there instead of returning. Everything after it is `auglocal.launch.cli.main` in this process, on
the suite's small run (--train-size 48), compared with the same sequential reference as the other in-process
tests: the process is not what those tests are about, and this one's forkserver is already warm.
"""

import contextlib
import io
import json
import shutil

import pytest
from auglocal.launch.cli import main

from tests.faults.support import assert_complete, assert_no_orphan_workers, small_flags


@pytest.mark.parametrize("workers", ["3", "layer"])
def test_resume_after_coordinator_death_ends_equal(coordinator_killed, workers, reference, tmp_path, capsys):
    """--resume continues from the last committed checkpoint, also with another number of workers."""
    out = tmp_path / "run"
    shutil.copytree(coordinator_killed, out)
    latest = int((out / "checkpoints" / "LATEST").read_text())
    manifest = json.loads((out / "checkpoints" / f"ckpt-{latest:06d}" / "manifest.json").read_text())
    assert 0 < manifest["global_step"] <= 9
    assert not (out / "summary.json").exists()
    assert main(["--resume", str(out), "--workers", workers, "--no-progress"]) == 0, capsys.readouterr().err
    assert_complete(reference, out, restarts=0)
    plan = json.loads((out / "plan.json").read_text())
    assert len(plan["groups"]) == (int(workers) if workers.isdigit() else 8)
    assert_no_orphan_workers()
    if workers != "3":
        return
    # resuming the finished run applies nothing twice: same weights, counters and metrics (once: the check does
    # not depend on the number of workers the first resume had)
    assert main(["--resume", str(out), "--workers", "2", "--no-progress"]) == 0, capsys.readouterr().err
    assert_complete(reference, out, restarts=0)
    assert_no_orphan_workers()


@pytest.mark.parametrize("flag, value, saved", [
    ("--model", "resnet32", "resnet20"),
    ("--d", "4", "3"),
    ("--dataset", "digits", "synthetic"),
    ("--train-size", "64", "48"),
    ("--optimizer", "adamw", "sgd"),
])
def test_resume_refuses_another_run(coordinator_killed, flag, value, saved):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["--resume", str(coordinator_killed), flag, value, "--no-progress"])
    assert code == 2
    message = err.getvalue()
    assert f"that run has {flag} {saved}, not {value}" in message
    assert "only continues the run it belongs to" in message


def test_restart_budget_exhausted_exits_1_naming_the_worker(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(small_flags(out, "--workers", "2", "--max-restarts", "2", "--recovery", "all",
                            "--inject-fault", "kill:worker=1:step=5:always"))
    stderr = capsys.readouterr().err
    assert code == 1, stderr
    latest = int((out / "checkpoints" / "LATEST").read_text())
    assert "giving up after 2 restart(s)" in stderr
    assert "worker 1 (layers 4..9) died with exit code -9" in stderr
    assert f"Last committed checkpoint {latest} " in stderr
    assert f"auglocal-launch --resume {out}" in stderr
    failure = json.loads((out / "failure.json").read_text())
    assert failure["last_checkpoint"] == latest
    assert [r["attempt"] for r in failure["restarts"]] == [0, 1, 2]
    assert {r["worker"] for r in failure["restarts"]} == {1}
    assert not (out / "summary.json").exists()
    assert_no_orphan_workers()
