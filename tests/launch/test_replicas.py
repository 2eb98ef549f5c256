"""--replicas R: R copies of the pipeline, each minibatch in R shards, gradients averaged per local module.

The oracle is the sequential trainer's shard mode (`--sequential --replicas R`, engine/replicas.py): with two
replicas the pipeline ends bitwise equal to it (a + b is commutative bitwise), with three within float tolerance
under gloo (its ring sums in another order than the oracle's shard order); thread replicas sum in the oracle's
order, so they are bitwise equal at any R."""

import json

import pytest
import torch
from auglocal.engine.config import build_network, optim_and_schedule
from auglocal.engine.precision import Kernels
from auglocal.engine.trainer import SequentialTrainer
from auglocal.launch.run.pipeline import PipelineOptions, train_pipeline

from tests.launch.test_parity import assert_same_weights, small_run


def oracle(cfg, data, replicas: int):
    torch.set_num_threads(1)
    model, aux = build_network(cfg, data)
    optim, schedule = optim_and_schedule(cfg)
    trainer = SequentialTrainer(model, aux, optim, schedule, seed=cfg.seed, kernels=Kernels.from_config(cfg),
                                replicas=replicas)
    history = trainer.fit(data, cfg.epochs, cfg.batch_size, max_steps=cfg.max_steps)
    return model, aux, history, trainer.stage.update_counts


def run_replicas(cfg, data, tmp_path, replicas: int, workers: int, kind: str | None = None, **extra):
    out = tmp_path / f"run-r{replicas}-k{workers}-{kind}-{extra.get('workers_per_host', 0)}"
    opts = PipelineOptions(workers=str(workers), balance="flops", threads=1, replicas=replicas, worker_kind=kind,
                           **extra)
    assert train_pipeline(cfg, data, opts, out=str(out), progress=False) == 0
    return out


def max_difference(model, aux, out) -> float:
    state = torch.load(out / "model.pt", weights_only=True)
    aux_state = torch.load(out / "aux.pt", weights_only=True)
    pairs = [(state[n], v) for n, v in model.state_dict().items()]
    pairs += [(aux_state[a.layer][n], v) for a in aux for n, v in a.state_dict().items()]
    return max(float((a.double() - b.double()).abs().max()) for a, b in pairs if a.is_floating_point())


@pytest.mark.parametrize("workers, kind, per_host, precision", [
    (1, None, 0, "fp32"), (2, None, 0, "fp32"),
    (2, "thread", 0, "fp32"),       # one host holds both replicas: thread reducer
    (2, "thread", 2, "fp32"),       # a host per replica: thread links within, a gloo reducer between the hosts
    (2, None, 0, "bf16"),           # autocast: the reduced vectors stay float32
])
def test_two_replicas_equal_the_sequential_shard_mode_bitwise(workers, kind, per_host, precision, tmp_path):
    """36 images, batch 12: three steps, one epoch; the test set of 10 gives shards of 5 (and eval sums)."""
    cfg, data = small_run("auglocal", epochs=1, precision=precision)
    model, aux, history, updates = oracle(cfg, data, 2)
    out = run_replicas(cfg, data, tmp_path, 2, workers, kind, workers_per_host=per_host)
    assert_same_weights(model, aux, out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert [e["test_accuracy"] for e in epochs] == [h.test_accuracy for h in history]
    assert [e["train_loss"] for e in epochs] == pytest.approx([h.train_loss for h in history], rel=1e-6)
    assert [e["train_accuracy"] for e in epochs] == [h.train_accuracy for h in history]
    summary = json.loads((out / "summary.json").read_text())
    assert {int(k): v for k, v in summary["updates"].items()} == updates
    assert summary["replicas"] == 2 and summary["stages"] == workers and summary["recovery"].startswith("all")
    plan = json.loads((out / "plan.json").read_text())
    assert len(plan["devices"]) == 2 * workers


def test_three_replicas_within_float_tolerance_and_not_the_single_pipeline(tmp_path):
    """Uneven shards too: batch 12 of 36 in shards of 4; 10 test images in 4/3/3."""
    cfg, data = small_run("auglocal", epochs=1, max_steps=2)
    model, aux, _, _ = oracle(cfg, data, 3)
    out = run_replicas(cfg, data, tmp_path, 3, 2)
    assert max_difference(model, aux, out) < 1e-5
    single, single_aux, _, _ = oracle(cfg, data, 1)
    assert max_difference(single, single_aux, out) > 1e-4     # shards really change the BN statistics


def test_three_thread_replicas_sum_in_the_oracles_order(tmp_path):
    cfg, data = small_run("auglocal", epochs=1, max_steps=2)
    model, aux, _, _ = oracle(cfg, data, 3)
    out = run_replicas(cfg, data, tmp_path, 3, 1, "thread")
    assert_same_weights(model, aux, out)


def test_two_replicas_over_curve_links_equal_the_oracle(tmp_path):
    """CURVE: the coordinator's feed into each replica's first worker admits the attempt's keys like worker 0's."""
    cfg, data = small_run("auglocal", epochs=1, max_steps=2)
    model, aux, _, _ = oracle(cfg, data, 2)
    out = run_replicas(cfg, data, tmp_path, 2, 2, transport="curve")
    assert_same_weights(model, aux, out)
