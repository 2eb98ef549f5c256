"""Checkpoints prove whose they are and that they are whole: damaged ones are reported and skipped (the run
still ends bitwise equal to the sequential reference), another run's are refused, and no damage ends in a
traceback.

Every case starts from a copy of the session's killed run (tests/faults/conftest.py: coordinator_killed),
whose newest committed checkpoints are damaged here the way a disk or a user would damage them.
"""

import json
import shutil
import signal

from auglocal.launch.backends.one_host.sockets import cleanup_stale
from auglocal.launch.cli import main
from auglocal.launch.run.checkpoints import CheckpointStore, RunIdentity

from tests.faults.support import (
    assert_complete,
    assert_no_orphan_workers,
    assert_no_tagged,
    new_tag,
    run_cli,
    small_flags,
)


def copy_run(src, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(src, out)
    return out


def committed(out) -> list[int]:
    ids = CheckpointStore(out).committed_ids()
    assert len(ids) >= 2, f"the killed run should keep two committed checkpoints, has {ids}"
    return ids


def flip_bytes(path, n: int = 64) -> None:
    """XOR n bytes in the middle of the file: torch.load would still succeed on most such damage."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    for i in range(mid, mid + n):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def truncate(path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def cli(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line(err: str) -> str:
    """stderr holds exactly one line, and no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_flipped_bytes_are_detected_and_the_older_checkpoint_used(coordinator_killed, reference, tmp_path, capsys):
    out = copy_run(coordinator_killed, tmp_path)
    *_, older, newest = committed(out)
    flip_bytes(CheckpointStore(out).dir_for(newest) / "layer_004.pt")
    code, stdout, err = cli(["--resume", out, "--no-progress"], capsys)
    assert code == 0, err
    assert f"checkpoint {newest}: layer_004.pt fails its SHA-256 checksum (damaged); skipped" in err
    assert f"resuming from checkpoint {older} (verified;" in stdout
    assert "Traceback" not in err
    assert_complete(reference, out, restarts=0)
    assert_no_orphan_workers()


def test_truncated_file_and_garbled_latest_are_detected_and_the_older_checkpoint_used(
        coordinator_killed, reference, tmp_path, capsys):
    out = copy_run(coordinator_killed, tmp_path)
    *_, older, newest = committed(out)
    store = CheckpointStore(out)
    layer = store.dir_for(newest) / "layer_007.pt"
    size = layer.stat().st_size
    truncate(layer)
    (store.root / "LATEST").write_bytes(b"\xff\xfe7x\n")
    code, stdout, err = cli(["--resume", out, "--no-progress"], capsys)
    assert code == 0, err
    assert "checkpoints/LATEST is garbled" in err
    assert f"checkpoint {newest}: layer_007.pt has {size // 2} bytes, its manifest says {size}" in err
    assert f"resuming from checkpoint {older} (verified;" in stdout
    assert "Traceback" not in err
    assert_complete(reference, out, restarts=0)
    assert_no_orphan_workers()


def _identity(out) -> RunIdentity:
    run = json.loads((out / "run.json").read_text())
    return RunIdentity(run["run_id"], run["config_sha256"])


def test_every_kind_of_damage_is_named_and_skipped(coordinator_killed, tmp_path):
    """verified_latest on its own (no training): each damage of the newest checkpoint gives one line naming it
    and the older checkpoint; a missing LATEST, or one naming an absent checkpoint, does not hide the others."""
    cases = {
        "empty manifest": (lambda d, s: (d / "manifest.json").write_text("{}"), "manifest.json lacks id,"),
        "garbled manifest": (lambda d, s: (d / "manifest.json").write_bytes(b"\x80\x81\xfe" * 50),
                             "manifest.json is not valid JSON"),
        "edited manifest": (lambda d, s: (d / "manifest.json").write_text(
            (d / "manifest.json").read_text().replace('"global_step": ', '"global_step": 1')),
            "manifest.json fails its SHA-256 seal"),
        "missing file": (lambda d, s: (d / "head.pt").unlink(), "head.pt is missing"),
    }
    for name, (damage, words) in cases.items():
        out = copy_run(coordinator_killed, tmp_path / name.replace(" ", "_"))
        *_, older, newest = committed(out)
        store = CheckpointStore(out, _identity(out))
        damage(store.dir_for(newest), store)
        lines = []
        ckpt_id, manifest = store.verified_latest(lines.append)
        assert (ckpt_id, manifest["id"]) == (older, older), name
        named = [line for line in lines if line.startswith(f"checkpoint {newest}: ")]
        assert len(named) == 1 and words in named[0] and named[0].endswith("; skipped"), (name, lines)
    out = copy_run(coordinator_killed, tmp_path / "latest")
    newest = committed(out)[-1]
    store = CheckpointStore(out, _identity(out))
    (store.root / "LATEST").unlink()
    assert store.verified_latest(lambda line: None)[0] == newest
    (store.root / "LATEST").write_text("99\n")
    lines = []
    assert store.verified_latest(lines.append)[0] == newest
    assert "checkpoints/LATEST names checkpoint 99, which does not exist" in lines


def test_no_intact_checkpoint_is_one_line_and_exit_1(coordinator_killed, tmp_path, capsys):
    """Every committed checkpoint damaged: never a silent start from scratch beside them."""
    out = copy_run(coordinator_killed, tmp_path)
    store = CheckpointStore(out)
    for ckpt_id in committed(out):
        flip_bytes(store.dir_for(ckpt_id) / "layer_000.pt")
    code, _, err = cli(["--resume", out, "--no-progress"], capsys)
    assert code == 1
    line = one_line(err)
    assert line.startswith(f"auglocal-launch: error: no intact checkpoint in {store.root}")
    assert "--overwrite" in line
    assert not (out / "summary.json").exists()
    assert_no_orphan_workers()


def test_checkpoint_of_another_run_is_refused(coordinator_killed, tmp_path, capsys):
    """The issue's case 1: a new run (seed 2) into a folder holding a finished-or-killed run, killed before its
    first checkpoint commits, then --resume. A new run needs --overwrite, which removes the old run's files;
    a checkpoint of the old run copied back in is refused with one line naming both runs."""
    out = copy_run(coordinator_killed, tmp_path)
    old_config = (out / "config.json").read_text()
    old_run = json.loads((out / "run.json").read_text())["run_id"]
    new_flags = small_flags(out, "--seed", "2", "--workers", "2", "--max-steps", "4")
    code, _, err = cli(new_flags, capsys)
    assert code == 2
    line = one_line(err)
    assert f"{out} already holds a run; continue it with --resume {out}, replace it with --overwrite" in line
    assert (out / "config.json").read_text() == old_config

    tag = new_tag()
    proc = run_cli([*new_flags, "--overwrite", "--inject-fault", "kill-coordinator:step=0"], tag)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert_no_tagged(tag)
    assert len(cleanup_stale()) == 1                       # the killed launcher's socket folder
    assert json.loads((out / "config.json").read_text())["seed"] == 2
    new_run = json.loads((out / "run.json").read_text())["run_id"]
    assert new_run != old_run
    assert CheckpointStore(out).committed_ids() == []      # the old run's checkpoints went with --overwrite

    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    shutil.copytree(coordinator_killed / "checkpoints", out / "checkpoints")
    code, _, err = cli(["--resume", out, "--no-progress"], capsys)
    assert code == 2
    line = one_line(err)
    assert f"belongs to run {old_run}" in line and f"{new_run}" in line
    assert "only continues its own run" in line
    assert_no_orphan_workers()
