"""--dry-run with replicas: the R x K table, and the layout --replicas auto would pick (launch/run/layout_choice.py).

The --replicas flag belongs to the replicas runtime; until it is parsed, these tests set `args.replicas` the
way the parser will (an int, or "auto"), which is all the dry run reads.
"""

import os

import pytest
from auglocal.engine.config import RunConfig, UsageError, build_data, build_network, resolve
from auglocal.engine.local_module import build_local_modules
from auglocal.engine.planning.replicas import param_bytes
from auglocal.launch.cli import build_parser, run
from auglocal.launch.run.execution import choose_replicas
from auglocal.launch.run.layout_choice import replicas_asked

FLAGS = ["--model", "resnet20", "--d", "3", "--dataset", "synthetic", "--input-size", "16", "--num-classes", "4",
         "--train-size", "16", "--test-size", "8", "--batch-size", "8", "--gpus", "cpu", "--dry-run"]


def dry_run(capsys, replicas, extra=()):
    argv = FLAGS + list(extra)
    args = build_parser().parse_args(argv)
    args.replicas = replicas
    assert run(args, argv) == 0
    return capsys.readouterr().out


def stage_rows(out: str) -> list[list[str]]:
    lines = out[out.index("replicas x workers"):].splitlines()
    rows = []
    for line in lines[2:]:
        if line.startswith("predicted step"):
            break
        rows.append(line.split())
    return rows


def modules():
    cfg = RunConfig(model="resnet20", d=3, dataset="synthetic", input_size=16, num_classes=4, train_size=16,
                    test_size=8, batch_size=8)
    data = build_data(cfg)
    resolve(cfg, data)
    return build_local_modules(*build_network(cfg, data))


def test_one_replica_prints_no_replica_table(capsys):
    out = dry_run(capsys, 1, ["--workers", "2"])
    assert "replicas x workers" not in out


def test_two_replicas_print_each_stages_reduce_bytes(capsys):
    out = dry_run(capsys, 2, ["--workers", "2"])
    assert "replicas x workers 2 x 2 (R x K = 4 devices), shard batch 4" in out
    assert "gloo" in out                    # the CPU all-reduce model is named
    plan_line = next(line for line in out.splitlines() if line.startswith("pipeline plan:"))
    assert "2 worker(s)" in plan_line
    mods = modules()
    rows = stage_rows(out)
    assert len(rows) == 2
    # each stage reduces its own modules' parameters (layers + aux nets), fp32 gradients
    starts = [int(r[1].split("-")[0]) for r in rows] + [len(mods)]
    for row, lo, hi in zip(rows, starts[:-1], starts[1:], strict=True):
        params = sum(p.numel() for m in mods[lo:hi] for p in m.parameters())
        assert int(row[3].replace(",", "")) == params
        nbytes = sum(param_bytes(m) for m in mods[lo:hi])
        shown, unit = float(row[4]), row[5]
        assert shown == pytest.approx(nbytes / {"KB": 1e3, "MB": 1e6}[unit], abs=0.006)
        assert float(row[6]) > 0            # a reduction costs time with R = 2


def test_auto_prints_the_candidates_and_the_choice_choose_replicas_returns(capsys):
    out = dry_run(capsys, "auto")
    chosen = next(line for line in out.splitlines() if line.startswith("chosen:"))
    args = build_parser().parse_args(FLAGS)
    args.replicas = "auto"
    r, k = choose_replicas(args)
    assert chosen == f"chosen: {r} x {k} (R x K)"
    assert r * k <= (os.cpu_count() or 1)   # on CPU the devices are the cores
    assert "R x K devices" in out


def test_auto_keeps_a_given_worker_count():
    args = build_parser().parse_args(FLAGS + ["--workers", "1"])
    args.replicas = "auto"
    assert choose_replicas(args, devices=4)[1] == 1


def test_bad_replicas_values_are_usage_errors():
    for bad in (0, "x", -2):
        args = build_parser().parse_args(FLAGS)
        args.replicas = bad
        with pytest.raises(UsageError, match="--replicas"):
            replicas_asked(args)


def test_a_gpu_placement_plans_with_the_assumed_nccl_ring():
    """No GPU is needed to plan for GPUs: the table of a placement on 4 GPUs, reductions by the ring model."""
    import argparse
    from types import SimpleNamespace

    from auglocal.engine.planning import make_plan, module_costs_flops
    from auglocal.engine.planning.allreduce import NCCL_NVLINK_H200
    from auglocal.launch.run.layout_choice import dry_run_table

    cfg = RunConfig(model="resnet20", d=3, dataset="synthetic", input_size=16, num_classes=4, train_size=16,
                    test_size=8, batch_size=8)
    data = build_data(cfg)
    resolve(cfg, data)
    network = build_network(cfg, data)
    mods = build_local_modules(*network)
    x, y = data.shape_batch(2)
    plan = make_plan(mods, 2, 8, module_costs_flops(mods, x, y), unit="MAC")
    placement = SimpleNamespace(devices=[f"cuda:{i}" for i in range(4)])
    out = dry_run_table(cfg, data, argparse.Namespace(replicas=2, workers="2"), plan, placement, network)
    assert "replicas x workers 2 x 2 (R x K = 4 devices)" in out and "NCCL ring, H200 NVLink" in out
    assert "assumed" in out                   # MACs at an assumed rate, and the ring's figures
    for row, group in zip(stage_rows(out), plan.groups, strict=True):
        # one all-reduce per local module, each 20 us + 2(2-1)/2 x its bytes / 350 GB/s
        seconds = sum(NCCL_NVLINK_H200.seconds(param_bytes(mods[i]), 2) for i in group)
        assert float(row[6]) == pytest.approx(seconds * 1e3, abs=6e-4)
