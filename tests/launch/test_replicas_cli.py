"""--replicas on the command line: bad values exit 2 with the flag named, the dry run shows R, and
--sequential --replicas 2 trains the shard oracle."""

import json

import pytest
import torch
from auglocal.engine.config import build_network, optim_and_schedule
from auglocal.engine.trainer import SequentialTrainer
from auglocal.launch.cli import main

from tests.faults.support import SMALL_FLAGS, small_run

SMALL = [*SMALL_FLAGS, "--workers", "2"]


@pytest.mark.parametrize("value, expected", [
    ("0", "--replicas must be >= 1"),
    ("-2", "--replicas must be >= 1"),
    ("x", "--replicas 'x': expected a number >= 1 or auto"),
])
def test_bad_replicas_exit_2_naming_the_flag(value, expected, capsys):
    assert main([*SMALL, "--replicas", value, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1


@pytest.mark.parametrize("extra, expected", [
    (["--replicas", "9"], "--replicas 9: a training batch of 8 image(s)"),          # batch 8
    (["--replicas", "2", "--precision", "fp16"], "--replicas 2: --precision fp16"),
    (["--replicas", "2", "--inject-fault", "truncated:worker=1:step=3"], "worker 1 is the last one of replica 0"),
])
def test_replicas_the_run_cannot_give_a_shard_each_exit_2_before_the_folder(extra, expected, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*SMALL, *extra, "--out", str(out)]) == 2
    assert expected in capsys.readouterr().err
    assert not out.exists()


def test_replicas_auto_runs_the_planners_layout_and_records_it(tmp_path, capsys):
    """auto resolves once, to choose_replicas' (R, K); the run, summary.json and runtime.json say what ran."""
    import re

    from auglocal.launch.cli import build_parser
    from auglocal.launch.run.execution import choose_replicas

    flags = [*SMALL_FLAGS, "--replicas", "auto", "--max-steps", "2"]
    expected = choose_replicas(build_parser().parse_args(flags))
    capsys.readouterr()
    out = tmp_path / "auto"
    assert main([*flags, "--out", str(out)]) == 0
    said = re.search(r"--replicas auto: (\d+) replica\(s\) of a (\d+)-worker pipeline", capsys.readouterr().out)
    assert said and (int(said[1]), int(said[2])) == expected
    summary = json.loads((out / "summary.json").read_text())
    assert summary["replicas"] == expected[0]
    runtime = json.loads((out / "runtime.json").read_text())["flags"]
    assert str(runtime["replicas"]) == str(expected[0]) and str(runtime["workers"]) == str(expected[1])


def test_dry_run_shows_the_replicas(capsys):
    assert main([*SMALL, "--replicas", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "replicas: 2, 2 x 2 = 4 workers" in out and "in 2 shards of 4 images" in out
    assert "worker 3: cpu" in out


def test_sequential_replicas_is_the_shard_oracle(tmp_path, capsys):
    out = tmp_path / "seq"
    assert main([*SMALL, "--sequential", "--replicas", "2", "--max-steps", "4", "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["replicas"] == 2
    cfg, data = small_run(max_steps=4)
    model, aux = build_network(cfg, data)
    optim, schedule = optim_and_schedule(cfg)
    SequentialTrainer(model, aux, optim, schedule, seed=cfg.seed, replicas=2).fit(data, cfg.epochs, cfg.batch_size,
                                                                                 max_steps=4)
    state = torch.load(out / "model.pt", weights_only=True)
    for name, value in model.state_dict().items():
        assert torch.equal(state[name], value), name

