"""A full disk ends in one line naming the file and the space it needed (exit 1, with the resume command for a
pipelined run), and never costs the last committed checkpoint: the run resumes and ends bitwise equal.

Two ways to fill a disk: a small tmpfs this test mounts (needs root; skipped with the reason otherwise), and
a patched fsync that fails with ENOSPC for one chosen file (always runs, so the behaviour is always tested).
"""

import errno
import json
import os
import shutil
import subprocess

import pytest
from auglocal.launch.cli import main
from auglocal.launch.run.checkpoints import CheckpointStore, RunIdentity

from tests.faults.support import SMALL_FLAGS, assert_complete, assert_no_orphan_workers


@pytest.fixture
def small_disk(tmp_path):
    """mount(size) -> a fresh tmpfs of that size under tmp_path, unmounted afterwards."""
    mounted = []

    def mount(size: str):
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'}); the patched-writer "
                        "test below covers the same behaviour")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def lines_of(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.strip()]


def identity(out) -> RunIdentity:
    run = json.loads((out / "run.json").read_text())
    return RunIdentity(run["run_id"], run["config_sha256"])


def test_full_disk_at_the_final_save_of_a_sequential_run(small_disk, capsys):
    out = small_disk("512k") / "run"
    code = main([*SMALL_FLAGS, "--sequential", "--threads", "1", "--max-steps", "2", "--out", str(out)])
    assert code == 1
    (line,) = lines_of(capsys.readouterr().err)
    assert line.startswith(f"auglocal-launch: error: disk full: cannot write {out / 'model.pt'} (needs 1.")
    assert "free there); free some space; run it again with --overwrite once fixed" in line


def test_full_disk_at_a_checkpoint_keeps_the_last_one_resumable(coordinator_killed, small_disk, reference, capsys):
    """The run folder on a 64 MiB tmpfs filled up to 1 MiB: the next checkpoint cannot be written (by a
    worker), the run stops with the resume command, the checkpoint before stays intact; freed, it resumes."""
    disk = small_disk("64m")
    out = disk / "run"
    shutil.copytree(coordinator_killed, out)
    store = CheckpointStore(out, identity(out))
    before = store.verified_latest(lambda line: None)[0]
    for ckpt_id in store.ids():
        if ckpt_id > before:                 # uncommitted leftovers: the run would free their space first
            shutil.rmtree(store.dir_for(ckpt_id))
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * (free - (1 << 20)))
    code = main(["--resume", str(out), "--no-progress"])      # restarts allowed: none may be tried
    assert code == 1
    err = capsys.readouterr().err
    assert f"auglocal-launch --resume {out}" in err
    assert "a restart would fail the same way" in err and "cannot write its layer files" in err
    assert len(json.loads((out / "failure.json").read_text())["restarts"]) == 1
    assert store.verified_latest(lambda line: None)[0] == before           # intact, still the newest
    assert_no_orphan_workers()
    (disk / "filler").unlink()
    assert main(["--resume", str(out), "--no-progress"]) == 0
    assert_complete(reference, out, restarts=0)
    assert_no_orphan_workers()


def fail_fsync_of(name: str, monkeypatch):
    """os.fsync fails with ENOSPC for the temporary file of `name` in this process (the coordinator)."""
    real = os.fsync

    def fsync(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".{name}."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_full_disk_at_a_commit_and_at_the_final_save(coordinator_killed, reference, tmp_path, monkeypatch, capsys):
    """Coordinator side: the manifest of the next checkpoint, then model.pt at the end, cannot be written. Each
    time one line names the file and the space, exit 1 with the resume command; the resumes end equal."""
    out = tmp_path / "run"
    shutil.copytree(coordinator_killed, out)
    store = CheckpointStore(out, identity(out))
    before = store.verified_latest(lambda line: None)[0]
    resume = ["--resume", str(out), "--no-progress"]

    with monkeypatch.context() as patch:
        fail_fsync_of("manifest.json", patch)
        assert main(resume) == 1
    line = lines_of(capsys.readouterr().err)[-1]
    assert line.startswith(f"auglocal-launch: error: disk full: cannot write {store.dir_for(before + 1)}"
                           "/manifest.json (needs ")
    assert line.endswith(f"free there); free some space; resume with: auglocal-launch --resume {out}")
    assert store.verified_latest(lambda line: None)[0] == before
    assert not list(store.dir_for(before + 1).glob(".manifest.json.*"))    # no half-written file left
    assert_no_orphan_workers()

    with monkeypatch.context() as patch:
        fail_fsync_of("model.pt", patch)
        assert main(resume) == 1
    line = lines_of(capsys.readouterr().err)[-1]
    assert line.startswith(f"auglocal-launch: error: disk full: cannot write {out / 'model.pt'} (needs 1.")
    assert line.endswith(f"; resume with: auglocal-launch --resume {out}")

    assert main(resume) == 0
    assert_complete(reference, out, restarts=0)
    assert_no_orphan_workers()


def test_full_disk_under_the_replay_log_stops_at_once_saying_where(small_disk, tmp_path, capsys):
    """Every logged message spills (--replay-log-mb 0) onto a disk too small: the worker says which folder is
    full and what to do, and the run stops without restarting onto the same full disk."""
    spill = small_disk("256k")
    out = tmp_path / "run"
    code = main([*SMALL_FLAGS, "--workers", "2", "--replay-log-mb", "0", "--replay-spill-dir", str(spill),
                 "--out", str(out)])
    assert code == 1
    err = capsys.readouterr().err
    line = next(line for line in lines_of(err) if "cannot spill its replay log" in line)
    assert f"into {spill}: No space left on device; free space there" in line, line
    assert "a restart would fail the same way" in err
    restarts = json.loads((out / "failure.json").read_text())["restarts"]
    assert len(restarts) == 1 and restarts[0]["fallback"] == "a restart would fail the same way"   # no new attempt
    assert_no_orphan_workers()
