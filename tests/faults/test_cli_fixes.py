"""The smaller cases of issue 22 (item 7): a read-only --out is bad input (exit 2, one line, nothing made);
--resume restores --no-progress; rank 0 of a torchrun group stopped while a rank never joined says why."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from auglocal.engine.config import UsageError
from auglocal.launch.backends.elastic import ElasticRank

from tests.faults.support import REPO, SMALL_FLAGS
from tests.faults.test_integrity import copy_run
from tests.launch.test_elastic import elastic_args, free_port, torchrun_environ

#: as root, a read-only folder is read-only only without CAP_DAC_OVERRIDE: the run drops it (util-linux setpriv)
NO_OVERRIDE = ["setpriv", "--bounding-set=-dac_override", "--inh-caps=-dac_override"]


def read_only_prefix() -> list[str]:
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without util-linux's setpriv: a 0555 folder is writable")
    return NO_OVERRIDE


@pytest.mark.parametrize("inside", [False, True], ids=["out-itself", "out-inside"])
def test_a_read_only_out_is_one_line_exit_2(inside, tmp_path):
    prefix = read_only_prefix()
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    out = locked / "run" if inside else locked
    try:
        proc = subprocess.run([*prefix, sys.executable, "-m", "auglocal.launch.cli", *SMALL_FLAGS, "--out", str(out)],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
    finally:
        locked.chmod(0o755)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"auglocal-launch: error: --out {out}: ") and "not writable" in lines[0]
    assert os.listdir(locked) == []


def test_resume_restores_no_progress(coordinator_killed, tmp_path, capsys):
    """The killed run was started with --no-progress: resuming it without the flag shows no progress bar."""
    out = copy_run(coordinator_killed, tmp_path)
    from auglocal.launch.cli import main

    assert main(["--resume", str(out)]) == 0
    err = capsys.readouterr().err
    assert "%|" not in err and "batch/s" not in err, err          # tqdm's bar
    assert json.loads((out / "runtime.json").read_text())["flags"]["no_progress"] is True


def test_rank_0_stopped_while_a_rank_refused_its_record_says_why(tmp_path):
    """Node B's rank 1 refuses rank 0's attempt record (another secret) and exits 2 on its node; torchrun then
    stops rank 0 with SIGTERM. Rank 0 names the rank that never joined and the likely reason, not only
    "terminated (SIGTERM)"."""
    port = free_port()
    env = {**os.environ, **torchrun_environ(0, port, WORLD_SIZE="2")}
    rank0 = subprocess.Popen([sys.executable, "-m", "auglocal.launch.cli", "--elastic", "--out", str(tmp_path / "run"),
                              *SMALL_FLAGS], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        with pytest.raises(UsageError, match="secret differs"):      # node B: waits for the store, refuses
            ElasticRank.join(elastic_args(tmp_path, "--node-addr", "127.0.0.2"),
                             torchrun_environ(1, port, WORLD_SIZE="2", AUGLOCAL_SECRET="another"))
        time.sleep(0.5)                  # rank 0 is past hosting the store: waiting for rank 1
        rank0.send_signal(signal.SIGTERM)
        _, err = rank0.communicate(timeout=60)
    finally:
        if rank0.poll() is None:
            rank0.kill()
    assert rank0.returncode == 143, err
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("auglocal-launch: terminated (SIGTERM) at "), err
    assert "while waiting for rank 1 to join rank 0's store" in line and "--secret-file" in line, line


def test_rank_0_still_sees_a_joining_rank(tmp_path):
    """The wait that names a missing rank is forgotten once every rank has joined."""
    port = free_port()
    zero = ElasticRank.join(elastic_args(tmp_path), torchrun_environ(0, port, WORLD_SIZE="2"))
    ElasticRank.join(elastic_args(tmp_path, "--node-addr", "127.0.0.2"), torchrun_environ(1, port, WORLD_SIZE="2"))
    assert zero.group_restarts() == 0 and zero.waiting is None


def test_rank_0_gives_up_on_a_rank_that_never_joins_in_one_line(tmp_path):
    """Rank 0's wait for a rank's record ends at the store's timeout as one clear line (exit 2), not a
    TimeoutError traceback."""
    port = free_port()
    zero = ElasticRank.join(elastic_args(tmp_path), torchrun_environ(0, port, WORLD_SIZE="2"))
    zero.store.timeout_s = 1.0
    with pytest.raises(UsageError, match="rank 1 never joined rank 0's store within 1 s .*--secret-file"):
        zero.group_restarts()
