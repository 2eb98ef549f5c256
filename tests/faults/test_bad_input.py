"""Every bad input a user can give ends in one line on stderr and exit code 2, before anything is written:
nan, inf and out-of-range numbers, --out naming a file, damaged run-folder files, undecodable images."""

import json

import pytest

from tests.data_files import write_image_folder
from tests.faults.support import SMALL_FLAGS, one_line_exit


@pytest.mark.parametrize("flag, value, words", [
    ("--lr", "nan", "--lr must be a finite number, got nan"),
    ("--lr", "inf", "--lr must be a finite number, got inf"),
    ("--lr", "0", "--lr must be > 0, got 0"),
    ("--lr", "-0.1", "--lr must be > 0, got -0.1"),
    ("--heartbeat-timeout", "nan", "--heartbeat-timeout must be a finite number, got nan"),
    ("--heartbeat-timeout", "inf", "--heartbeat-timeout must be a finite number, got inf"),
    ("--heartbeat-timeout", "0", "--heartbeat-timeout must be > 0, got 0"),
    ("--worker-threads", "0", "--worker-threads must be >= 1, got 0"),
    ("--threads", "0", "--threads must be >= 1, got 0"),
    ("--workers", "0", "--workers must be >= 1, got 0"),
    ("--workers", "many", "--workers 'many': expected auto, layer or a number"),
    ("--checkpoint-every", "-1", "--checkpoint-every must be >= 0, got -1"),
    ("--max-restarts", "-2", "--max-restarts must be >= 0, got -2"),
    ("--tau", "nan", "--tau must lie in [0, 1], got nan"),
    ("--seed", "-3", "--seed must be >= 0, got -3"),
    ("--warmup-epochs", "-1", "--warmup-epochs must be >= 0, got -1"),
    ("--max-steps", "0", "--max-steps must be >= 1, got 0"),
    ("--batch-size", "0", "--batch-size must be >= 1, got 0"),
])
def test_bad_number_is_one_line_exit_2_and_writes_nothing(flag, value, words, tmp_path, capsys):
    out = tmp_path / "run"
    line = one_line_exit([*SMALL_FLAGS, "--out", out, flag, value], capsys)
    assert line == f"auglocal-launch: error: {words}"
    assert not out.exists()


def test_out_naming_a_file(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    line = one_line_exit([*SMALL_FLAGS, "--out", target], capsys)
    assert f"--out {target} is a file, not a folder" in line
    assert target.read_text() == "mine"


def _run_folder(tmp_path, config: bytes):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_bytes(config)
    (out / "run.json").write_text(json.dumps({"run_id": "abc", "config_sha256": "0" * 64}))
    return out


@pytest.mark.parametrize("config", [b"{not json", b"\xff\xfe\x00garbage", b"[1, 2]"])
def test_resume_of_a_damaged_config_json(config, tmp_path, capsys):
    out = _run_folder(tmp_path, config)
    line = one_line_exit(["--resume", out, "--no-progress"], capsys)
    assert f"--resume {out}: {out / 'config.json'} is damaged" in line


def test_resume_of_a_sequential_run_and_resume_with_overwrite(tmp_path, capsys):
    out = _run_folder(tmp_path, json.dumps({"model": "resnet20", "trainer": "sequential"}).encode())
    line = one_line_exit(["--resume", out, "--no-progress"], capsys)
    assert "that run used --sequential, which keeps no checkpoints" in line
    line = one_line_exit(["--resume", out, "--overwrite"], capsys)
    assert "does not combine with --sequential, --dry-run or --overwrite" in line


def write_bad_image_folder(root, bad: str) -> str:
    """A 2-class ImageNet-style folder of small PNGs; one training image is replaced by a bad file."""
    write_image_folder(root, ".png", {"train": 4, "val": 2}, seed=3)
    victim = root / "train" / "n002" / "img3.png"
    if bad == "garbage":
        victim.write_bytes(b"this is not an image" * 10)
    else:
        victim.write_bytes(victim.read_bytes()[:-40])
    return str(victim)


@pytest.mark.parametrize("bad", ["garbage", "truncated"])
def test_undecodable_image_is_named_before_training(bad, tmp_path, capsys):
    victim = write_bad_image_folder(tmp_path / "imagenet", bad)
    out = tmp_path / "run"
    line = one_line_exit(["--model", "resnet20", "--d", "3", "--dataset", "imagenet", "--data-dir",
                          tmp_path / "imagenet", "--input-size", "16", "--batch-size", "4", "--epochs", "1",
                          "--gpus", "cpu", "--no-progress", "--out", out], capsys)
    assert line.startswith(f"auglocal-launch: error: imagenet: cannot decode image {victim} (")
    assert line.endswith("remove or replace the file")
    assert not (out / "config.json").exists() and not (out / "metrics.jsonl").exists()   # before training
