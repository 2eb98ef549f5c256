"""Where each trainer runs: --sequential honours --gpus like the pipeline does."""

import json

import pytest
import torch

from engine.config import UsageError
from launch.cli import main
from launch.sequential import sequential_device


def pretend_gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_sequential_device_follows_gpus(monkeypatch):
    pretend_gpus(monkeypatch, 2)
    assert sequential_device("1") == "cuda:1"
    assert sequential_device("0-1") == "cuda:0"
    assert sequential_device(None) == "cuda:0"
    assert sequential_device("cpu") == "cpu"
    with pytest.raises(UsageError, match="not available"):
        sequential_device("2")


def test_sequential_device_without_cuda(monkeypatch):
    pretend_gpus(monkeypatch, 0)
    assert sequential_device(None) == "cpu"
    with pytest.raises(UsageError, match="not available"):
        sequential_device("0")


def test_cli_sequential_with_an_absent_gpu_is_bad_input(monkeypatch, capsys, tmp_path):
    pretend_gpus(monkeypatch, 0)
    code = main(["--sequential", "--gpus", "0", "--model", "resnet20", "--dataset", "synthetic", "--input-size", "8",
                 "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 2 and "not available" in capsys.readouterr().err


def test_cli_sequential_records_its_device(tmp_path):
    out = tmp_path / "run"
    code = main(["--sequential", "--gpus", "cpu", "--model", "resnet20", "--d", "3", "--dataset", "synthetic",
                 "--input-size", "8", "--num-classes", "4", "--train-size", "8", "--test-size", "4",
                 "--batch-size", "4", "--epochs", "1", "--out", str(out), "--no-progress"])
    assert code == 0
    assert json.loads((out / "config.json").read_text())["device"] == "cpu"
