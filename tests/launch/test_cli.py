"""auglocal-launch end to end: bad input exits 2, dry-run prints the plan, a short run writes its folder."""

import json
import subprocess
import sys

import pytest
import torch
from auglocal.engine.models import build_model
from auglocal.launch.cli import main


def run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("args, expected", [
    (["--model", "resnet7"], "unknown model 'resnet7'"),
    (["--rule", "hebbian"], "unknown rule 'hebbian'"),
    (["--strategy", "random"], "unknown strategy 'random'"),
    (["--dataset", "mnist60k"], "unknown data set 'mnist60k'"),
    (["--d", "1"], "--d must be >= 2"),
    (["--model", "resnet20", "--d", "10"], "d"),
    (["--tau", "1.5"], "--tau must lie in [0, 1]"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--gpus", "cpu", "--cuda-graphs"], "--cuda-graphs captures GPU workers' steps as CUDA graphs; these workers "
                                         "run on the CPU"),
    (["--sequential", "--cuda-graphs"], "--cuda-graphs captures pipeline workers' steps; it does not combine"),
    (["--spares", "-1"], "--spares must be >= 0, got -1"),
])
def test_bad_input_exits_2_with_message(args, expected, capsys):
    code, _, err = run_cli(args + ["--dry-run"], capsys)
    assert code == 2
    assert expected in err


def test_missing_data_dir_names_expected_file(tmp_path, capsys):
    code, _, err = run_cli(["--dataset", "cifar10", "--data-dir", str(tmp_path), "--dry-run"], capsys)
    assert code == 2
    assert str(tmp_path) in err and "cifar-10-batches-py" in err


def test_dataset_needing_a_dir_without_one_exits_2(capsys):
    code, _, err = run_cli(["--dataset", "svhn", "--dry-run"], capsys)
    assert code == 2
    assert "--data-dir" in err or "data_dir" in err or "data dir" in err


def test_dry_run_prints_every_layer_and_totals(capsys):
    code, out, _ = run_cli(["--model", "resnet110", "--rule", "auglocal", "--d", "4", "--dry-run"], capsys)
    assert code == 0
    assert "L = 55" in out
    assert "16R-32Rs2-64Rs2-AP-10FC" in out      # layer 0 selects 18, 36, 54 (docs/method.md 3.6)
    assert "total" in out.lower()


def test_dry_run_of_each_baseline(capsys):
    for rule in ("bp", "dgl", "predsim", "infopro"):
        code, out, _ = run_cli(["--model", "resnet20", "--rule", rule, "--dry-run"], capsys)
        assert code == 0, rule
        assert "total" in out.lower()


def test_short_training_run_writes_run_folder(tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, out, _ = run_cli(["--model", "resnet20", "--d", "3", "--dataset", "digits", "--epochs", "2",
                            "--max-steps", "3", "--batch-size", "16", "--out", str(out_dir), "--no-progress",
                            "--sequential"], capsys)
    assert code == 0
    config = json.loads((out_dir / "config.json").read_text())
    assert config["model"] == "resnet20" and config["d"] == 3 and config["dataset"] == "digits"
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in rows if r["kind"] == "step"] == [1, 2, 3]
    assert any(r["kind"] == "epoch" for r in rows)
    assert (out_dir / "curves.png").stat().st_size > 1000
    state = torch.load(out_dir / "model.pt", weights_only=True)
    bare = build_model("resnet20", num_classes=10)
    bare.load_state_dict(state)          # a plain state_dict of the bare primary network
    aux = torch.load(out_dir / "aux.pt", weights_only=True)
    assert sorted(aux) == list(range(len(aux))) and len(aux) == 10 - 2 - 1   # L - k - 1 aux nets (docs/method.md 2A)


def test_console_script_help_explains_flags():
    out = subprocess.run([sys.executable, "-m", "auglocal.launch.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("--model", "--rule", "--d", "--tau", "--dry-run", "--dataset", "--data-dir", "--max-steps"):
        assert flag in out.stdout


def test_imagenet_model_run_also_saves_a_torchvision_state_dict(tmp_path, capsys):
    import torchvision

    out_dir = tmp_path / "run"
    # 64 training and 64 test images: the one step and the one evaluation pass the run makes need no more (the
    # synthetic set's default 2048 + 512 cost seconds to make and evaluate through ResNet-34)
    code, _, _ = run_cli(["--model", "resnet34", "--rule", "auglocal", "--d", "3", "--dataset", "synthetic",
                          "--input-size", "32", "--epochs", "1", "--max-steps", "1", "--batch-size", "64",
                          "--train-size", "64", "--test-size", "64",
                          "--out", str(out_dir), "--no-progress", "--sequential"], capsys)
    assert code == 0
    tv = torchvision.models.resnet34(weights=None, num_classes=10)
    tv.load_state_dict(torch.load(out_dir / "torchvision.pt", weights_only=True))   # strict
    ours = build_model("resnet34", num_classes=10)
    ours.load_state_dict(torch.load(out_dir / "model.pt", weights_only=True))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(tv.eval()(x), ours.eval()(x))


def test_presets_listed_and_applied_with_overrides(capsys):
    code, out, _ = run_cli(["--list-presets"], capsys)
    assert code == 0 and "cifar10-resnet110-auglocal-d4" in out
    code, out, _ = run_cli(["--preset", "svhn-resnet32-dgl", "--dataset", "digits", "--dry-run", "--sequential"],
                           capsys)
    assert code == 0                      # the preset's SVHN is overridden by --dataset digits
    assert "model resnet32" in out and "rule dgl" in out
    code, _, err = run_cli(["--preset", "no-such-preset", "--dry-run"], capsys)
    assert code == 2 and "no-such-preset" in err
