"""Bad input that used to be found only after the run folder was claimed (issue 22 case 6): each case as the
issue wrote it ends in one line, exit 2, no traceback, and leaves nothing behind: no run folder (so no run.lock
or runtime.json) and no socket folder (the suite's autouse fixture checks that one). What still fails after
the claim removes what that attempt made (RunClaim), and a refused --resume leaves runtime.json as it was."""

from __future__ import annotations

import numpy as np
import psutil
import pytest
from auglocal.engine.config import UsageError
from auglocal.engine.data.synthetic import needed_bytes
from auglocal.launch.run.run_dir import LOCK_FILE, claim_run_folder

from tests.data_files import write_cifar10, write_image_folder
from tests.faults.support import SMALL_FLAGS, one_line_exit
from tests.faults.test_integrity import copy_run

ERROR = "auglocal-launch: error: "


def write_cifar(root, monkeypatch) -> None:
    """The official CIFAR-10 format, 2 images per training batch (tests/data_files.py)."""
    rng = np.random.default_rng(5)
    write_cifar10(root, monkeypatch, rng.integers(0, 256, (10, 3, 32, 32), dtype=np.uint8),
                  rng.integers(0, 10, 10), rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8),
                  rng.integers(0, 10, 3))


def refused(args, capsys, out) -> str:
    """The run into `out` exits 2 with one line and leaves no run folder at all."""
    line = one_line_exit([*args, "--out", out], capsys)
    assert line.startswith(ERROR), line
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    return line[len(ERROR):]


def test_more_workers_than_local_modules(tmp_path, capsys):
    words = refused([*SMALL_FLAGS, "--workers", "500"], capsys, tmp_path / "run")
    assert words.startswith("--workers 500: this run has only ") and "local modules" in words


def test_data_dir_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "cifar.tar"
    target.write_bytes(b"an archive, not extracted")
    words = refused(["--dataset", "cifar10", "--data-dir", target, "--no-progress"], capsys, tmp_path / "run")
    assert words.startswith(f"cifar10: data directory {target} is a file, not a folder"), words
    assert "does not exist" not in words
    assert target.read_bytes() == b"an archive, not extracted"


def test_truncated_cifar_batch_file(tmp_path, monkeypatch, capsys):
    write_cifar(tmp_path / "data", monkeypatch)
    victim = tmp_path / "data" / "cifar-10-batches-py" / "data_batch_3"
    victim.write_bytes(victim.read_bytes()[:1000])
    words = refused(["--dataset", "cifar10", "--data-dir", tmp_path / "data", "--batch-size", "2",
                     "--model", "resnet20", "--d", "3", "--no-progress"], capsys, tmp_path / "run")
    assert words.startswith(f"cifar10: {victim} is corrupted"), words


def test_zero_byte_imagenet_jpeg(tmp_path, capsys):
    write_image_folder(tmp_path / "imagenet", ".JPEG", {"train": 3, "val": 2}, seed=6)
    victim = tmp_path / "imagenet" / "train" / "n002" / "img1.JPEG"
    victim.write_bytes(b"")
    words = refused(["--dataset", "imagenet", "--data-dir", tmp_path / "imagenet", "--model", "resnet20", "--d",
                     "3", "--input-size", "16", "--batch-size", "4", "--gpus", "cpu", "--no-progress"],
                    capsys, tmp_path / "run")
    assert words == f"imagenet: cannot decode image {victim} (an empty file: 0 bytes); remove or replace the file"


def test_synthetic_set_too_big_for_memory(tmp_path, capsys):
    if needed_bytes(32, 10_000_000, 512) <= psutil.virtual_memory().available:
        pytest.skip("this machine has the memory ten million synthetic images need")
    words = refused(["--dataset", "synthetic", "--train-size", "10000000", "--no-progress"], capsys,
                    tmp_path / "run")
    assert words.startswith("synthetic: 10000000 training and 512 test images of 3x32x32 need about "), words
    assert words.endswith("GiB is available; use a smaller --train-size or --input-size")


def test_refused_resume_keeps_runtime_json(coordinator_killed, tmp_path, capsys):
    """--resume with --workers 500 used to write workers=500 into runtime.json before the planner refused it,
    so every later plain --resume failed the same way."""
    out = copy_run(coordinator_killed, tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    line = one_line_exit(["--resume", out, "--workers", "500", "--no-progress"], capsys)
    assert line.startswith(f"{ERROR}--workers 500: this run has only "), line
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_a_failure_after_the_claim_removes_what_the_attempt_made(tmp_path):
    """Anything that still fails once the folder is claimed, before the run holds a config: the lock, the
    files of the attempt and the folders it made are gone; a folder the user made keeps what it held."""
    fresh = tmp_path / "fresh" / "run"
    with pytest.raises(UsageError), claim_run_folder(fresh, resume=False, overwrite=False):
        (fresh / "runtime.json").write_text("{}")
        (fresh / "tensorboard").mkdir()
        raise UsageError("found late")
    assert not (tmp_path / "fresh").exists()                         # both folders the claim made
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(KeyboardInterrupt), claim_run_folder(mine, resume=False, overwrite=False):
        (mine / "runtime.json").write_text("{}")
        raise KeyboardInterrupt
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    with claim_run_folder(mine, resume=False, overwrite=False):     # and the folder can be claimed again
        assert (mine / LOCK_FILE).is_file()


def test_a_resume_refused_after_the_claim_puts_runtime_json_back(tmp_path):
    """A --resume that fails for bad input once claimed leaves runtime.json and config.json as they were; one
    that fails otherwise (training ran with those flags) keeps what it recorded."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"seed": 1}')
    (out / "runtime.json").write_text('{"flags": {"workers": "2"}}')
    with pytest.raises(UsageError), claim_run_folder(out, resume=True, overwrite=False):
        (out / "runtime.json").write_text('{"flags": {"workers": "500"}}')
        (out / "config.json").write_text('{"seed": 1, "nonfinite": "skip"}')
        raise UsageError("found late")
    assert (out / "runtime.json").read_text() == '{"flags": {"workers": "2"}}'
    assert (out / "config.json").read_text() == '{"seed": 1}'
    with pytest.raises(RuntimeError), claim_run_folder(out, resume=True, overwrite=False):
        (out / "runtime.json").write_text('{"flags": {"workers": "3"}}')
        raise RuntimeError("a worker kept failing")
    assert (out / "runtime.json").read_text() == '{"flags": {"workers": "3"}}'
