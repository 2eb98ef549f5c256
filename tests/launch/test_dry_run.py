"""--dry-run prints its plan at once: FLOPs unless times were measured (--balance time) or cached before."""

import pytest
from auglocal.engine.config import RunConfig, build_data, build_network, resolve
from auglocal.engine.local_module import build_local_modules
from auglocal.engine.planning import make_plan, module_costs_flops
from auglocal.launch.cli import main

FLAGS = ["--model", "resnet20", "--d", "3", "--dataset", "synthetic", "--input-size", "16", "--num-classes", "4",
         "--train-size", "16", "--test-size", "8", "--batch-size", "8", "--workers", "2", "--gpus", "cpu",
         "--dry-run"]


@pytest.fixture
def timings(monkeypatch):
    """Replaces module timing by a fake that records each call (timing for real takes seconds)."""
    calls = []

    def fake(modules, x, y, steps=3, warmup=1, kernels=None, device=None):
        calls.append(len(modules))
        return [0.001 * (1 + i % 3) for i in range(len(modules))]

    monkeypatch.setattr("auglocal.engine.planning.balance.module_costs_timed", fake)
    return calls


def plan_lines(out: str) -> list[str]:
    """The plan table as printed: from its heading to the lines that follow it (simulation, devices, feed)."""
    lines = []
    for line in out[out.index("pipeline plan:"):].splitlines():
        if line.startswith(("simulated", "devices:")) or not line.strip():
            break
        if not line.startswith("balanced by"):
            lines.append(line)
    return lines


def test_default_dry_run_times_nothing_and_says_so(timings, capsys):
    assert main(FLAGS) == 0
    out = capsys.readouterr().out
    assert timings == []
    assert "balanced by FLOPs (no module times cached for this machine yet; --balance time measures them)" in out


def test_balance_flops_prints_the_plan_of_module_flops(timings, capsys):
    assert main(FLAGS + ["--balance", "flops"]) == 0
    out = capsys.readouterr().out
    cfg = RunConfig(model="resnet20", d=3, dataset="synthetic", input_size=16, num_classes=4, train_size=16,
                    test_size=8, batch_size=8)
    data = build_data(cfg)
    resolve(cfg, data)
    modules = build_local_modules(*build_network(cfg, data))
    x, y = data.train_batch(cfg.seed, 0, 0, cfg.batch_size)
    expected = make_plan(modules, 2, cfg.batch_size, module_costs_flops(modules, x[:2], y[:2]), unit="MAC")
    assert plan_lines(out) == plan_lines(expected.format())
    assert timings == []


def test_measured_times_are_cached_for_the_next_dry_run(timings, capsys):
    assert main(FLAGS + ["--balance", "time"]) == 0
    assert "balanced by module times measured now" in capsys.readouterr().out
    assert main(FLAGS) == 0
    out = capsys.readouterr().out
    assert "balanced by module times measured on this machine" in out and "images/s" in out
    assert len(timings) == 1
    assert main(FLAGS + ["--batch-size", "16"]) == 0                # another batch: another cost
    assert "balanced by FLOPs" in capsys.readouterr().out


def test_a_second_dry_run_neither_counts_again_nor_imports_torchvision(tmp_path, capsys, monkeypatch):
    """The first dry run files its MAC counts in the user's cache; a later process reads them, so it never
    imports torch._dynamo (which counting pulls in) or torchvision (which normalising would): seconds each."""
    import json
    import os
    import subprocess
    import sys

    probe = ("import sys; from auglocal.launch.cli import main; rc = main(sys.argv[1:]); "
             "print('IMPORTED', [m for m in ('torch._dynamo', 'torchvision') if m in sys.modules]); sys.exit(rc)")
    from auglocal.engine.planning import costs

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for name, fresh in (("_MEMO", {}), ("_UNSAVED", {}), ("_LOADED", False)):   # as a process that just started
        monkeypatch.setattr(costs, name, fresh)
    assert main(FLAGS) == 0   # this process: counts, and files the counts
    first = capsys.readouterr().out
    assert json.loads((tmp_path / "auglocal" / "module_macs.json").read_text())["entries"]
    second = subprocess.run([sys.executable, "-c", probe, *FLAGS], capture_output=True, text=True,
                            timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert second.returncode == 0, second.stderr
    assert "IMPORTED []" in second.stdout
    assert plan_lines(second.stdout) == plan_lines(first)
