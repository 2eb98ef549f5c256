"""Divergence (issue 22, item 4): `--lr 1e6` used to print 'train loss nan' every epoch and exit 0.

Now a non-finite loss stops the run at that step with one line naming step, worker and layer (exit 1, no
traceback, no restart, the resume command), the same under the pipeline and --sequential; and
`--nonfinite skip` (also given to --resume) skips those module updates, counted alike by both trainers, which
end bitwise equal.
"""

import json
import re
from pathlib import Path

import torch
from auglocal.launch.cli import main
from auglocal.launch.run.run_dir import RunLock

from tests.faults.support import assert_no_orphan_workers, small_flags

DIVERGE = ("--lr", "1e6", "--no-tensorboard")
WHERE = re.compile(r"non-finite (loss|gradient) \((nan|inf|-inf)\) at epoch (\d+), step (\d+), in the local module "
                   r"of layer (\d+) \((worker \d+|the sequential trainer)\)")


def run(args, capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    return code, "\n".join(lines)


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit pattern (nan == nan when the bits are equal)."""
    return t.view(torch.int32) if t.dtype == torch.float32 else t


def assert_bitwise_equal(a: Path, b: Path) -> None:
    for name in ("model.pt", "aux.pt"):
        sa, sb = torch.load(a / name, weights_only=True), torch.load(b / name, weights_only=True)
        flat_a = sa if name == "model.pt" else {f"{k}.{n}": v for k, d in sa.items() for n, v in d.items()}
        flat_b = sb if name == "model.pt" else {f"{k}.{n}": v for k, d in sb.items() for n, v in d.items()}
        assert sorted(flat_a) == sorted(flat_b)
        for key, value in flat_a.items():
            assert torch.equal(bits(value), bits(flat_b[key])), f"{name} {key} differs"


def test_lr_1e6_stops_both_trainers_at_the_same_step_then_skip_mode_ends_them_equal(tmp_path, capsys):
    pipe, seq = tmp_path / "pipe", tmp_path / "seq"
    code, line = run(small_flags(pipe, *DIVERGE, "--workers", "2"), capsys)
    assert code == 1 and "\n" not in line, line
    got = WHERE.search(line)
    assert got and got.group(6).startswith("worker"), line
    assert f"resume with: auglocal-launch --resume {pipe} --nonfinite skip" in line
    assert "last committed: checkpoint" in line
    s = summary(pipe)
    assert s["stopped"] == "nonfinite" and s["restarts"][0]["path"] == "all" and len(s["restarts"]) == 1
    with RunLock(pipe):          # released: the folder can be resumed at once
        pass
    assert_no_orphan_workers()

    code, seq_line = run(small_flags(seq, *DIVERGE, "--sequential", "--threads", "1"), capsys)
    assert code == 1 and "\n" not in seq_line, seq_line
    seq_got = WHERE.search(seq_line)
    assert seq_got and seq_got.group(6) == "the sequential trainer", seq_line
    assert seq_got.groups()[:5] == got.groups()[:5], (line, seq_line)     # the same step, layer and cause
    div, seq_div = summary(pipe)["divergence"], summary(seq)["divergence"]
    assert {k: v for k, v in div.items() if k != "worker"} == {k: v for k, v in seq_div.items() if k != "worker"}
    assert seq_div["worker"] is None and div["worker"] == int(got.group(6).split()[1])

    # skip mode: the stopped run resumes with --nonfinite skip and ends equal to a sequential skip run
    code, err = run(["--resume", pipe, "--nonfinite", "skip", "--no-progress"], capsys)
    assert code == 0, err
    assert json.loads((pipe / "config.json").read_text())["nonfinite"] == "skip"
    seq_skip = small_flags(tmp_path / "seq-skip", *DIVERGE, "--sequential", "--threads", "1", "--nonfinite", "skip")
    code, err = run(seq_skip, capsys)
    assert code == 0, err
    skipped = summary(pipe)["skipped"]
    assert skipped and skipped == summary(tmp_path / "seq-skip")["skipped"]
    assert summary(pipe)["nonfinite"] == "skip"
    assert_bitwise_equal(pipe, tmp_path / "seq-skip")
    epochs = [json.loads(r) for r in (pipe / "metrics.jsonl").read_text().splitlines()]
    per_epoch = [r["skipped"] for r in epochs if r["kind"] == "epoch"]
    assert sum(sum(e.values()) for e in per_epoch) == sum(skipped.values())
    assert_no_orphan_workers()
