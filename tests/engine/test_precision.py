"""Memory format and precision: option resolution and validation, and what a Stage does with them."""

import copy
import json

import pytest
import torch
from auglocal.engine.auxnets import build_aux_nets
from auglocal.engine.config import RunConfig, UsageError, resolve, validate
from auglocal.engine.data import build_dataset
from auglocal.engine.local_module import build_local_modules
from auglocal.engine.models import build_model
from auglocal.engine.precision import AUTO_MEMORY_FORMAT, Kernels, LossScaler, activation_dtype, resolve_memory_format
from auglocal.engine.schedule import LRSchedule, OptimConfig
from auglocal.engine.stage import Stage

CL = torch.channels_last


def test_activation_dtype_follows_precision():
    assert [activation_dtype(p) for p in ("fp32", "bf16", "fp16")] == [torch.float32, torch.bfloat16, torch.float16]
    with pytest.raises(ValueError, match="fp32, bf16, fp16"):
        activation_dtype("tf32")


def test_auto_memory_format_is_a_fixed_table_per_device_type():
    assert resolve_memory_format("auto", "cpu") == AUTO_MEMORY_FORMAT["cpu"] == "channels_last"
    assert resolve_memory_format("auto", "cuda:3") == AUTO_MEMORY_FORMAT["cuda"] == "channels_last"
    assert resolve_memory_format("auto", "meta") == "contiguous"
    assert resolve_memory_format("contiguous", "cuda") == "contiguous"
    with pytest.raises(ValueError, match="resolve_memory_format"):
        Kernels("auto")


def test_config_resolves_auto_once_and_validates_values():
    data = build_dataset("synthetic", seed=0, input_size=8, num_classes=3, train_size=8, test_size=4)
    cfg = resolve(RunConfig(dataset="synthetic"), data)
    assert (cfg.memory_format, cfg.precision) == ("channels_last", "fp32")
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    legacy = {k: v for k, v in cfg.to_dict().items() if k not in ("memory_format", "precision")}
    assert RunConfig.from_dict(legacy).memory_format == "contiguous"   # a run saved before the option: NCHW
    with pytest.raises(UsageError, match="--memory-format must be one of auto, channels_last, contiguous"):
        validate(RunConfig(memory_format="nhwc"))
    with pytest.raises(UsageError, match="--precision must be one of fp32, bf16, fp16"):
        validate(RunConfig(precision="fp8"))


@pytest.mark.parametrize("args, expected", [
    (["--memory-format", "nhwc"], "--memory-format must be one of auto, channels_last, contiguous, got 'nhwc'"),
    (["--precision", "half"], "--precision must be one of fp32, bf16, fp16, got 'half'"),
])
def test_cli_rejects_bad_kernel_options_with_exit_2(args, expected, capsys):
    from auglocal.launch.cli import main

    assert main([*args, "--dataset", "synthetic", "--dry-run"]) == 2
    assert expected in capsys.readouterr().err


def test_resume_refuses_another_precision_but_accepts_auto(tmp_path):
    from auglocal.launch.cli import build_parser, resume_config

    saved = RunConfig(dataset="synthetic", memory_format="channels_last", precision="bf16")
    (tmp_path / "config.json").write_text(json.dumps(saved.to_dict()))
    argv = ["--resume", str(tmp_path), "--precision", "fp32"]
    with pytest.raises(UsageError, match="that run has --precision bf16, not fp32"):
        resume_config(build_parser().parse_args(argv), argv)
    argv = ["--resume", str(tmp_path), "--memory-format", "auto", "--precision", "bf16"]
    assert resume_config(build_parser().parse_args(argv), argv) == saved
    argv = ["--resume", str(tmp_path), "--memory-format", "contiguous"]
    with pytest.raises(UsageError, match="--memory-format channels_last, not contiguous"):
        resume_config(build_parser().parse_args(argv), argv)


def test_layout_gives_canonical_strides_and_leaves_other_tensors():
    k = Kernels("channels_last")
    x = torch.randn(2, 3, 4, 4)
    y = k.layout(x)
    assert y.is_contiguous(memory_format=CL) and not y.is_contiguous() and torch.equal(x, y)
    assert k.layout(y) is y
    pooled = torch.randn(2, 6, 1, 1)   # row-major and channels_last at once: made the canonical NHWC strides
    assert k.layout(pooled).stride() == (6, 1, 6, 6)
    flat = torch.randn(2, 6)
    assert k.layout(flat) is flat
    assert Kernels("contiguous").layout(y).stride() == x.stride()


def make_stage_modules(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("resnet20", num_classes=4, input_size=16)
    aux = build_aux_nets(model, "auglocal", d=3, tau=0.5)
    return model, build_local_modules(model, aux)


def batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 3, 16, 16, generator=g), torch.randint(0, 4, (6,), generator=g)


def test_bf16_stage_keeps_fp32_weights_and_hands_on_bf16_channels_last():
    torch.set_num_threads(1)
    _, modules = make_stage_modules()
    stage = Stage(modules[:2], OptimConfig(0.1), LRSchedule("constant", 0.1, 1, 0),
                  kernels=Kernels("channels_last", "bf16"))
    emitted = []
    x, y = batch(0)
    result = stage.train_step(x, y, step=0, emit=emitted.append)
    assert emitted[0].dtype == torch.bfloat16 and emitted[0].is_contiguous(memory_format=CL)
    assert result.output is emitted[0]
    for p in stage.modules.parameters():
        assert p.dtype == torch.float32 and stage.optimizer.state[p]["momentum_buffer"].dtype == torch.float32
        if p.dim() == 4:
            assert p.is_contiguous(memory_format=CL)
    assert stage.eval_step(x).dtype == torch.bfloat16


def test_fp16_skips_exactly_the_overflowing_modules_updates_in_any_partition():
    """Module 0's aux net overflows fp16: its update is skipped and its scale halved, the others train; one stage
    and a split into two stages end bitwise equal (a single scaler per optimizer would skip everything)."""
    torch.set_num_threads(1)
    model_a, mods_a = make_stage_modules()
    with torch.no_grad():
        for p in mods_a[0].aux.parameters():
            p.mul_(300.0)
    model_b = copy.deepcopy(model_a)
    mods_b = build_local_modules(model_b, [copy.deepcopy(m.aux) for m in mods_a[:-1]])
    kernels, sched = Kernels("channels_last", "fp16"), LRSchedule("constant", 0.1, 1, 0)
    before = [copy.deepcopy(m.state_dict()) for m in mods_a]
    one = Stage(mods_a, OptimConfig(0.1), sched, kernels=kernels)
    two = [Stage(mods_b[:2], OptimConfig(0.1), sched, kernels=kernels),
           Stage(mods_b[2:], OptimConfig(0.1), sched, kernels=kernels)]
    x, y = batch(1)
    one.train_step(x, y, step=0)
    h = x
    for s in two:
        h = s.train_step(h, y, step=0).output
    assert one.scalers[0].skipped == 1 and one.scalers[0].scale == 2.0 ** 15
    assert all(s.skipped == 0 for i, s in one.scalers.items() if i != 0)
    params = [{k for k, _ in m.named_parameters()} for m in mods_a]
    assert all(torch.equal(v, before[0][k]) for k, v in mods_a[0].state_dict().items() if k in params[0])
    for i in range(1, len(mods_a)):
        assert all(not torch.equal(v, before[i][k]) for k, v in mods_a[i].state_dict().items() if k in params[i])
    for (name, p), (_, q) in zip(model_a.state_dict().items(), model_b.state_dict().items(), strict=True):
        assert torch.equal(p, q), name


def test_loss_scaler_grows_after_clean_steps_and_halves_on_overflow():
    scaler = LossScaler(scale=8.0, growth_interval=2)
    p = torch.nn.Parameter(torch.ones(3))
    for scale in (8.0, 8.0):       # two clean steps at 8: the scale grows to 16
        assert scaler.scale == scale
        scaler.backward((p * 2.0).sum())
        assert scaler.unscale([p]) and torch.equal(p.grad, torch.full((3,), 2.0))
        p.grad = None
    assert scaler.scale == 16.0
    scaler.backward((p * float("inf")).sum())
    assert not scaler.unscale([p]) and p.grad is None and scaler.scale == 8.0 and scaler.skipped == 1
