"""GPU checks (run by benchmarks/gpu_check.sh on a CUDA machine; skipped where CUDA is absent)."""

import copy
import os

import pytest
import torch

from engine.auxnets import build_aux_nets
from engine.models import build_model
from engine.rules import build_local_modules
from engine.schedule import LRSchedule, OptimConfig
from engine.stage import Stage

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

if torch.cuda.is_available():   # before any worker process starts: they read it (workers/worker.py)
    os.environ.setdefault("AUGLOCAL_DETERMINISTIC", "1")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def test_stage_on_gpu_matches_cpu_to_float_tolerance():
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10)
    aux = build_aux_nets(model, "auglocal", d=3, tau=0.5)
    model_gpu, aux_gpu = copy.deepcopy(model), copy.deepcopy(aux)
    sched = LRSchedule("constant", 0.05, 1, 0)
    cpu = Stage(build_local_modules(model, aux), OptimConfig(0.05), sched)
    gpu = Stage(build_local_modules(model_gpu, aux_gpu), OptimConfig(0.05), sched, device="cuda:0")
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    for step in range(2):
        a = cpu.train_step(x, y, step=step)
        b = gpu.train_step(x, y, step=step)
        torch.testing.assert_close(b.losses[max(b.losses)].cpu(), a.losses[max(a.losses)], rtol=1e-3, atol=1e-3)
    for (name, p), (_, q) in zip(model.state_dict().items(), model_gpu.state_dict().items(), strict=True):
        torch.testing.assert_close(q.cpu().float(), p.float(), rtol=1e-2, atol=1e-3, msg=name)


def test_pipeline_on_one_gpu_runs_and_counts_updates(tmp_path):
    import json

    from engine.config import RunConfig, resolve
    from engine.data import build_dataset
    from launch.pipeline import PipelineOptions, train_pipeline

    data = build_dataset("synthetic", seed=1, input_size=32, num_classes=10, train_size=64, test_size=32)
    cfg = resolve(RunConfig(model="resnet32", d=4, dataset="synthetic", epochs=1, batch_size=32, lr=0.05,
                            warmup=0, seed=1, input_size=32, num_classes=10, device="cuda:0"), data)
    opts = PipelineOptions(workers="2", gpus=["cuda:0"], balance="flops")
    assert train_pipeline(cfg, data, opts, out=str(tmp_path / "run"), progress=False) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(summary["updates"].values()) == {2}
    assert all(v > 0 for v in summary["gpu_peak_bytes"].values())


def test_to_host_keeps_channels_last_and_pins():
    from workers.worker import to_host

    t = torch.randn(4, 8, 6, 6, device="cuda:0").contiguous(memory_format=torch.channels_last).bfloat16()
    host = to_host(t)
    assert host.device.type == "cpu" and host.is_pinned() and host.dtype == torch.bfloat16
    assert host.stride() == t.stride() and torch.equal(host, t.cpu())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_stage_on_gpu_keeps_fp32_weights_and_hands_on_half(precision):
    from engine.precision import Kernels, activation_dtype

    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10)
    aux = build_aux_nets(model, "auglocal", d=3, tau=0.5)
    modules = build_local_modules(model, aux)
    stage = Stage(modules[:3], OptimConfig(0.05), LRSchedule("constant", 0.05, 1, 0), device="cuda:0",
                  kernels=Kernels("channels_last", precision))
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    emitted = []
    for step in range(2):
        stage.train_step(x, y, step=step, emit=emitted.append)
    assert emitted[-1].dtype == activation_dtype(precision)
    assert emitted[-1].is_contiguous(memory_format=torch.channels_last)
    assert all(p.dtype == torch.float32 for p in stage.modules.parameters())


def test_stream_workers_equal_sequential_on_one_gpu(tmp_path):
    """Three thread workers on GPU 0, each on its own CUDA stream in one host process, end bitwise equal to the
    sequential trainer on the same GPU, with deterministic algorithms on (in the host process too:
    AUGLOCAL_DETERMINISTIC, set above before any worker starts)."""
    from engine.config import build_network, optim_and_schedule
    from engine.precision import Kernels
    from engine.trainer import SequentialTrainer
    from launch.pipeline import PipelineOptions, train_pipeline
    from tests.launch.test_parity import small_run

    torch.use_deterministic_algorithms(True)
    try:
        cfg, data = small_run("auglocal", epochs=1)
        cfg.device = "cuda:0"
        model, aux = build_network(cfg, data)
        optim, schedule = optim_and_schedule(cfg)
        trainer = SequentialTrainer(model, aux, optim, schedule, seed=cfg.seed, device="cuda:0",
                                    kernels=Kernels.from_config(cfg))
        trainer.fit(data, cfg.epochs, cfg.batch_size)
        cfg, data = small_run("auglocal", epochs=1)
        cfg.device = "cuda:0"
        opts = PipelineOptions(workers="3", gpus=["cuda:0"], balance="flops", worker_kind="thread",
                               streams_per_gpu=3)
        out = tmp_path / "run"
        assert train_pipeline(cfg, data, opts, out=str(out), progress=False) == 0
    finally:
        torch.use_deterministic_algorithms(False)
    state = torch.load(out / "model.pt", weights_only=True)
    for name, value in model.state_dict().items():
        assert torch.equal(state[name].cpu(), value.cpu()), f"primary {name} differs"
