"""GPU checks (marked `gpu`; benchmarks/gpu_check.sh runs them on a CUDA machine; skipped where CUDA is absent).

The dry run of gpu_check.sh (GPU_CHECK_DRY=1) sets AUGLOCAL_GPU_TEST_DEVICE=cpu: the tests that compare a
pipelined run with its reference then run on CPU through the same code (only the device, the stream count and
the link transport differ), so a bad flag, import or helper fails on a CPU machine rather than in the GPU's
few minutes. Tests of CUDA-only features (pinned copies, autocast on a GPU, GPU against CPU) skip there.

Every parity check compares every tensor of model.pt and aux.pt bitwise, with deterministic algorithms on in
this process and in every worker (AUGLOCAL_DETERMINISTIC, CUBLAS_WORKSPACE_CONFIG: set below, before any worker
starts).
"""

import contextlib
import copy
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from auglocal.engine.auxnets import build_aux_nets
from auglocal.engine.local_module import build_local_modules
from auglocal.engine.models import build_model
from auglocal.engine.schedule import LRSchedule, OptimConfig
from auglocal.engine.stage import Stage

DEVICE_VAR = "AUGLOCAL_GPU_TEST_DEVICE"
#: where these tests run: cuda:0, or the CPU in gpu_check.sh's dry run; '' skips them all
DEVICE = os.environ.get(DEVICE_VAR) or ("cuda:0" if torch.cuda.is_available() else "")
ON_GPU = DEVICE.startswith("cuda")
REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not DEVICE, reason=f"needs a CUDA GPU (or {DEVICE_VAR}=cpu, the dry run)")]
cuda_only = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU (CUDA-only feature: not in the dry run)")

if DEVICE:   # before any worker process starts: they read it (workers/runtime/worker.py)
    os.environ.setdefault("AUGLOCAL_DETERMINISTIC", "1")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@contextlib.contextmanager
def deterministic():
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


def sequential_on_device(cfg, data):
    """The sequential trainer (the oracle) on DEVICE, deterministic: its model and auxiliary networks."""
    from auglocal.engine.config import build_network, optim_and_schedule
    from auglocal.engine.precision import Kernels
    from auglocal.engine.trainer import SequentialTrainer

    torch.set_num_threads(1)
    cfg.device = DEVICE
    model, aux = build_network(cfg, data)
    optim, schedule = optim_and_schedule(cfg)
    trainer = SequentialTrainer(model, aux, optim, schedule, seed=cfg.seed, device=DEVICE,
                                kernels=Kernels.from_config(cfg))
    with deterministic():
        trainer.fit(data, cfg.epochs, cfg.batch_size, max_steps=cfg.max_steps)
    return model, aux


def load_networks(run_dir: Path) -> tuple[dict, dict]:
    """model.pt and aux.pt of a run folder, on the CPU."""
    return (torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True),
            torch.load(run_dir / "aux.pt", map_location="cpu", weights_only=True))


def assert_same_tensors(got: dict, expected: dict, what: str) -> None:
    assert sorted(got) == sorted(expected), f"{what}: other tensor names"
    for name, value in expected.items():
        assert torch.equal(got[name], value.detach().cpu()), f"{what} {name} differs"


def assert_equals_networks(run_dir: Path, model, aux) -> None:
    """Every tensor of model.pt and of every auxiliary network in aux.pt equals the oracle's, bitwise."""
    state, aux_state = load_networks(run_dir)
    assert_same_tensors(state, model.state_dict(), "primary")
    assert sorted(aux_state) == sorted(a.layer for a in aux)
    for a in aux:
        assert_same_tensors(aux_state[a.layer], a.state_dict(), f"aux {a.layer}")


def assert_equals_run(run_dir: Path, reference_dir: Path) -> None:
    """Every tensor of model.pt and aux.pt equals the reference run's, bitwise."""
    (state, aux_state), (ref, ref_aux) = load_networks(run_dir), load_networks(reference_dir)
    assert_same_tensors(state, ref, "primary")
    assert sorted(aux_state) == sorted(ref_aux)
    for layer, tensors in ref_aux.items():
        assert_same_tensors(aux_state[layer], tensors, f"aux {layer}")


def pipeline(cfg, data, out: Path, workers: int, **options) -> dict:
    """train_pipeline of `workers` workers on DEVICE (deterministic, as the workers are); its summary.json."""
    from auglocal.launch.run.pipeline import PipelineOptions, train_pipeline

    cfg.device = DEVICE
    opts = PipelineOptions(workers=str(workers), gpus=[DEVICE] if ON_GPU else None, balance="flops", threads=1,
                           tensorboard=False, **options)
    with deterministic():
        assert train_pipeline(cfg, data, opts, out=str(out), progress=False) == 0
    return json.loads((out / "summary.json").read_text())


@cuda_only
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


def test_pipeline_on_one_gpu_runs_counts_updates_and_equals_sequential(tmp_path):
    """Two process workers sharing GPU 0 (each its own CUDA context) end bitwise equal to the sequential
    trainer on the same GPU."""
    from auglocal.engine.config import RunConfig, resolve
    from auglocal.engine.data import build_dataset

    model_name, side = ("resnet32", 32) if ON_GPU else ("resnet20", 16)   # the dry run: smaller, same code

    def run_config():
        data = build_dataset("synthetic", seed=1, input_size=side, num_classes=10, train_size=64, test_size=32)
        return resolve(RunConfig(model=model_name, d=4, dataset="synthetic", epochs=1, batch_size=32, lr=0.05,
                                 warmup=0, seed=1, input_size=side, num_classes=10, device=DEVICE), data), data

    model, aux = sequential_on_device(*run_config())
    summary = pipeline(*run_config(), tmp_path / "run", 2)
    assert set(summary["updates"].values()) == {2}
    if ON_GPU:
        assert all(v > 0 for v in summary["gpu_peak_bytes"].values())
    assert_equals_networks(tmp_path / "run", model, aux)


@cuda_only
def test_to_host_keeps_channels_last_and_pins():
    from auglocal.workers.runtime.worker import to_host

    t = torch.randn(4, 8, 6, 6, device="cuda:0").contiguous(memory_format=torch.channels_last).bfloat16()
    host = to_host(t)
    assert host.device.type == "cpu" and host.is_pinned() and host.dtype == torch.bfloat16
    assert host.stride() == t.stride() and torch.equal(host, t.cpu())


@cuda_only
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_stage_on_gpu_keeps_fp32_weights_and_hands_on_half(precision):
    from auglocal.engine.precision import Kernels, activation_dtype

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
    sequential trainer on the same GPU: every tensor of model.pt and aux.pt (on CPU, the dry run: three thread
    workers in one host process)."""
    from tests.launch.test_parity import small_run

    model, aux = sequential_on_device(*small_run("auglocal", epochs=1))
    pipeline(*small_run("auglocal", epochs=1), tmp_path / "run", 3, worker_kind="thread",
             streams_per_gpu=3 if ON_GPU else 0)
    assert_equals_networks(tmp_path / "run", model, aux)


def test_worker_killed_on_one_gpu_recovers_bitwise(tmp_path):
    """The design card's single-GPU fault test: three process workers on GPU 0, worker 1 killed (SIGKILL) before
    minibatch 8 of 12, restarted alone from the checkpoint and its neighbour's replay log, ends bitwise equal
    to the unfaulted run on the same GPU."""
    from auglocal.workers.runtime.faults import parse_fault

    from tests.faults.support import CHECKPOINT_EVERY, small_run

    common = dict(checkpoint_every=CHECKPOINT_EVERY, recovery="one", max_restarts=1)
    clean = pipeline(*small_run(), tmp_path / "clean", 3, **common)
    faulted = pipeline(*small_run(), tmp_path / "faulted", 3, fault=parse_fault("kill:worker=1:step=8"), **common)
    assert clean["restarts"] == []
    assert [r["worker"] for r in faulted["restarts"]] == [1], faulted["restarts"]
    assert "died with exit code -9" in faulted["restarts"][0]["error"]
    assert faulted["updates"] == clean["updates"]
    assert_equals_run(tmp_path / "faulted", tmp_path / "clean")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_node_torchrun(tmp_path: Path, flags: list[str], timeout_s: float = 300) -> Path:
    """One torchrun of three ranks on this machine (rank 0 coordinates, ranks 1-2 are the workers): the run
    folder; fails with the log's tail unless torchrun exits 0."""
    out, secret = tmp_path / "run", tmp_path / "secret"
    secret.write_text("gpu-test-secret-0123456789")
    secret.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT")}
    env.update(TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "3",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--max-restarts", "0",
           "-m", "auglocal.launch.backends.elastic", "--", "--node-addr", "127.0.0.1", "--secret-file", str(secret),
           "--out", str(out), *flags]
    log_path = tmp_path / "torchrun.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    assert code == 0, f"torchrun exit {code}:\n{log_path.read_text()[-4000:]}"
    return out


def test_cuda_ipc_workers_equal_sequential_on_one_gpu(tmp_path):
    """Two worker ranks on GPU 0 linked by cuda-ipc (activations and gradients stay in GPU memory, opened
    by handle and offset in the other process) end bitwise equal to the sequential trainer on the same GPU:
    every tensor of model.pt and aux.pt. On CPU (the dry run) the same launch links the ranks by gloo."""
    from auglocal.engine.config import RunConfig, build_data, resolve

    from tests.faults.support import SMALL_FLAGS

    device_flags = ["--gpus", "0", "--transport", "cuda-ipc"] if ON_GPU else ["--gpus", "cpu", "--transport", "gloo"]
    out = one_node_torchrun(tmp_path, [*SMALL_FLAGS, "--no-tensorboard", *device_flags])
    cfg = RunConfig.from_dict(json.loads((out / "config.json").read_text()))
    data = build_data(cfg)
    model, aux = sequential_on_device(resolve(cfg, data), data)
    assert_equals_networks(out, model, aux)


@cuda_only
def test_cuda_graph_steps_equal_eager_steps_on_the_gpu():
    """--cuda-graphs (engine/graphed_step.py) on a real CUDA graph: a first and a top stage, two epochs (a new
    learning rate: a second capture) with a partial minibatch (eager), bitwise the eager stage's weights,
    buffers, momentum, outputs and losses, with graphs replayed for most steps."""
    from auglocal.engine.graphed_step import GraphedStep

    def stages():
        torch.manual_seed(0)
        model = build_model("resnet20", num_classes=10)
        modules = build_local_modules(model, build_aux_nets(model, "auglocal", d=3, tau=0.5))
        sched = LRSchedule("cosine", 0.05, 2, 0)
        return [Stage(part, OptimConfig(0.05), sched, device=DEVICE) for part in (modules[:3], modules[3:])]

    lines: list[str] = []
    eager, graphed = stages(), stages()
    helpers = [GraphedStep.install(s, say=lines.append) for s in graphed]
    gen = torch.Generator().manual_seed(1)
    with deterministic():
        for step, (epoch, n) in enumerate([(0, 16)] * 5 + [(0, 9)] + [(1, 16)] * 4):
            x, y = torch.randn(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen)
            outs = []
            for pair in (eager, graphed):
                h = x
                for s in pair:
                    if s.epoch != epoch:
                        s.set_epoch(epoch)
                    r = s.train_step(h, y, step=step)
                    h = r.output
                    outs.append((r.output.cpu(), r.loss_values()))
            for (a, la), (b, lb) in zip(outs[:2], outs[2:], strict=True):
                assert torch.equal(a, b) and la == lb, f"step {step}"
    for a, b in zip(eager, graphed, strict=True):
        for p, q in zip(a.modules.state_dict().values(), b.modules.state_dict().values(), strict=True):
            assert torch.equal(p.cpu(), q.cpu())
    assert all(h.replays == 3 + 2 for h in helpers) and not any(h.disabled for h in helpers), lines
