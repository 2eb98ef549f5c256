"""Transparency: pipelined training with any partition equals the sequential trainer, bit for bit on CPU."""

import pytest
import torch
from auglocal.engine.config import RunConfig, build_network, optim_and_schedule, resolve
from auglocal.engine.data import build_dataset
from auglocal.engine.precision import Kernels
from auglocal.engine.trainer import SequentialTrainer
from auglocal.launch.run.pipeline import PipelineOptions, train_pipeline
from auglocal.workers.runtime.faults import Fault


def small_run(rule: str, epochs: int = 2, max_steps: int | None = None, memory_format: str = "auto",
              precision: str = "fp32", train_size: int = 36, model: str = "resnet20") -> tuple[RunConfig, object]:
    data = build_dataset("synthetic", seed=5, input_size=16, num_classes=4, train_size=train_size, test_size=10)
    cfg = RunConfig(model=model, rule=rule, d=3, dataset="synthetic", epochs=epochs, batch_size=12,
                    lr=0.05, warmup=1, seed=7, max_steps=max_steps, input_size=16, num_classes=4,
                    memory_format=memory_format, precision=precision)
    return resolve(cfg, data), data


def sequential_reference(cfg: RunConfig, data):
    torch.set_num_threads(1)
    model, aux = build_network(cfg, data)
    optim, schedule = optim_and_schedule(cfg)
    trainer = SequentialTrainer(model, aux, optim, schedule, seed=cfg.seed, kernels=Kernels.from_config(cfg))
    history = trainer.fit(data, cfg.epochs, cfg.batch_size, max_steps=cfg.max_steps)
    return model, aux, history, trainer.stage.update_counts


def assert_same_weights(model, aux, run_dir):
    state = torch.load(run_dir / "model.pt", weights_only=True)
    for name, value in model.state_dict().items():
        assert torch.equal(state[name], value), f"primary {name} differs"
    aux_state = torch.load(run_dir / "aux.pt", weights_only=True)
    assert sorted(aux_state) == [a.layer for a in aux]
    for a in aux:
        for name, value in a.state_dict().items():
            assert torch.equal(aux_state[a.layer][name], value), f"aux {a.layer} {name} differs"


def run_pipeline(cfg, data, workers, tmp_path, worker_kind: str | None = None):
    out = tmp_path / f"run-{cfg.rule}-{workers}-{cfg.memory_format}-{cfg.precision}"
    code = train_pipeline(cfg, data, PipelineOptions(workers=str(workers), balance="flops", threads=1,
                                                     worker_kind=worker_kind), out=str(out), progress=False)
    assert code == 0
    return out


@pytest.mark.parametrize("rule, workers", [
    ("auglocal", 1), ("auglocal", 2), ("auglocal", 3), ("auglocal", "layer"), ("dgl", 2), ("infopro", 3),
])
def test_pipeline_equals_sequential(rule, workers, tmp_path):
    cfg, data = small_run(rule)
    model, aux, history, updates = sequential_reference(cfg, data)
    out = run_pipeline(cfg, data, workers, tmp_path)
    assert_same_weights(model, aux, out)
    import json

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert [e["test_accuracy"] for e in epochs] == [h.test_accuracy for h in history]
    assert [e["train_loss"] for e in epochs] == pytest.approx([h.train_loss for h in history], rel=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert {int(k): v for k, v in summary["updates"].items()} == updates
    assert set(updates.values()) == {cfg.epochs * data.steps_per_epoch(cfg.batch_size)}


#: a ViT cut from torchvision, and a user's stack of blocks named by import path (its aux nets use the builder)
@pytest.mark.parametrize("model, rule, workers, kind", [
    ("vit_tiny", "auglocal", 2, None), ("vit_tiny", "dgl", 3, None),
    ("tests.engine.stack_models:custom_cnn", "auglocal", 3, None),
    ("tests.engine.stack_models:custom_cnn", "auglocal", 2, "thread"),
])
def test_stacks_of_blocks_train_the_same_pipelined(model, rule, workers, kind, tmp_path):
    cfg, data = small_run(rule, epochs=1, max_steps=2, model=model)
    reference, aux, _, updates = sequential_reference(cfg, data)
    out = run_pipeline(cfg, data, workers, tmp_path, worker_kind=kind)
    assert_same_weights(reference, aux, out)
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert {int(k): v for k, v in summary["updates"].items()} == updates and set(updates.values()) == {2}


def test_slow_worker_keeps_queues_bounded_and_weights_equal(tmp_path):
    """Worker 1 takes 1 s more every step (far more than worker 0 needs, even on a loaded machine): upstream
    links stay within their window; the result does not change."""
    import json

    cfg, data = small_run("auglocal", epochs=1)
    model, aux, _, _ = sequential_reference(cfg, data)
    out = tmp_path / "slow"
    opts = PipelineOptions(workers="3", balance="flops", threads=1, window=2,
                           fault=Fault("slow", worker=1, delay=1.0))
    assert train_pipeline(cfg, data, opts, out=str(out), progress=False) == 0
    assert_same_weights(model, aux, out)
    summary = json.loads((out / "summary.json").read_text())
    in_flight = {int(k): v for k, v in summary["max_in_flight"].items()}
    assert sorted(in_flight) == [0, 1, 2]
    # the link into the slow worker filled up to its window (backpressure was exercised) and never beyond
    assert in_flight[1] == 2
    assert max(in_flight.values()) <= 2


def test_every_step_row_holds_every_local_loss_with_one_worker_per_layer(tmp_path):
    """ImageNet convention, --workers layer: every hidden layer is its own worker and the top stage (the
    cheapest) may report first; each step row must still carry every module's loss."""
    import json

    data = build_dataset("synthetic", seed=5, input_size=16, num_classes=4, train_size=24, test_size=8)
    cfg = resolve(RunConfig(model="resnet20", rule="auglocal", d=2, convention="imagenet", dataset="synthetic",
                            epochs=1, batch_size=8, lr=0.05, seed=7, input_size=16, num_classes=4), data)
    out = tmp_path / "run"
    opts = PipelineOptions(workers="layer", balance="flops", threads=1)
    assert train_pipeline(cfg, data, opts, out=str(out), progress=False) == 0
    plan = json.loads((out / "plan.json").read_text())
    firsts = sorted(str(ids[0]) for ids in plan["layer_ids"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "step"]
    assert len(steps) == 3 and len(firsts) == 10
    for row in steps:
        assert sorted(row["local_losses"]) == firsts


def _kernel_parity(memory_format: str, precision: str, workers: int, tmp_path) -> None:
    """One epoch of 2 minibatches (the smallest run that trains, hands activations on and evaluates)."""
    import json

    cfg, data = small_run("auglocal", epochs=1, memory_format=memory_format, precision=precision, train_size=24)
    model, aux, history, _ = sequential_reference(cfg, data)
    out = run_pipeline(cfg, data, workers, tmp_path)
    assert_same_weights(model, aux, out)
    for p in model.parameters():
        assert p.dtype == torch.float32, "weights must stay fp32 under autocast"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["test_accuracy"] for r in rows if r["kind"] == "epoch"] == [h.test_accuracy for h in history]
    saved = json.loads((out / "config.json").read_text())
    assert (saved["memory_format"], saved["precision"]) == (memory_format, precision)


@pytest.mark.parametrize("memory_format, precision, workers", [("contiguous", "fp32", 2), ("channels_last", "bf16", 3)])
def test_pipeline_equals_sequential_with_kernel_options(memory_format, precision, workers, tmp_path):
    """Same kernels, same order: a pipeline in NCHW or in bf16 autocast ends bitwise equal to the sequential run."""
    _kernel_parity(memory_format, precision, workers, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("memory_format, precision, workers", [
    (f, p, k) for f, p in (("channels_last", "fp32"), ("contiguous", "fp32"), ("channels_last", "bf16"),
                           ("contiguous", "bf16"), ("channels_last", "fp16"))
    for k in (1, 2, 3) if (f, p, k) not in (("contiguous", "fp32", 2), ("channels_last", "bf16", 3))
])
def test_pipeline_equals_sequential_kernel_matrix(memory_format, precision, workers, tmp_path):
    _kernel_parity(memory_format, precision, workers, tmp_path)


@pytest.mark.parametrize("transport", [pytest.param("tcp", marks=pytest.mark.slow), "curve"])
def test_pipeline_over_tcp_and_curve_links_equals_sequential(transport, tmp_path):
    """--transport tcp/curve: every link on a loopback port picked at run time (curve: encrypted, each
    receiver admitting only the attempt's keys), same weights as the sequential run."""
    cfg, data = small_run("auglocal", epochs=1, max_steps=4)
    model, aux, _, _ = sequential_reference(cfg, data)
    out = tmp_path / f"run-{transport}"
    code = train_pipeline(cfg, data, PipelineOptions(workers="2", balance="flops", threads=1, transport=transport),
                          out=str(out), progress=False)
    assert code == 0
    assert_same_weights(model, aux, out)
