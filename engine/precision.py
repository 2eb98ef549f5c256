"""Kernel options of a run: the memory format of tensors and the autocast precision of every local module."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from auglocal.engine.nonfinite import drop_update

MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
PRECISIONS = ("fp32", "bf16", "fp16")

#: what `--memory-format auto` becomes on each device type. Measured (benchmarks/results/kernels.md): on CPU
#: channels_last trains ResNet-32 faster for BP and AugLocal alike; on CUDA it is the layout cuDNN's tensor-core
#: convolutions use natively (with NCHW they transpose on every call). Other device types keep NCHW.
AUTO_MEMORY_FORMAT = {"cpu": "channels_last", "cuda": "channels_last"}

_AUTOCAST_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_memory_format(value: str, device: str | torch.device) -> str:
    """'auto' becomes the device type's entry of AUTO_MEMORY_FORMAT (a fixed table: no timing at start-up, so
    every process of a run resolves it alike); explicit values pass through."""
    if value != "auto":
        return value
    return AUTO_MEMORY_FORMAT.get(torch.device(device).type, "contiguous")


def activation_dtype(precision: str) -> torch.dtype:
    """dtype of the activations a stage hands downstream (the `h` tensor on the wire) at this precision.

    Worker 0's `h` is the network input and the `x` tensor is the image: those stay float32 at any precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    return _AUTOCAST_DTYPE.get(precision, torch.float32)


def _canonical_strides(shape: torch.Size, memory_format: str) -> tuple[int, ...]:
    n, c, h, w = shape
    if memory_format == "channels_last":
        return (h * w * c, 1, w * c, c)
    return (c * h * w, h * w, w, 1)


@dataclass(frozen=True)
class Kernels:
    """How a stage runs its kernels; every process of a run must use the same (it is part of the run config).

    `memory_format` is resolved ('channels_last' or 'contiguous'); `precision` is 'fp32', 'bf16' or 'fp16'.
    `Kernels.default(device)` is what a RunConfig with default options resolves to.
    """

    memory_format: str
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.memory_format not in ("channels_last", "contiguous"):
            raise ValueError(f"Kernels needs a resolved memory format (channels_last or contiguous), got "
                             f"{self.memory_format!r}; call resolve_memory_format first")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; expected one of {', '.join(PRECISIONS)}")

    @classmethod
    def default(cls, device: str | torch.device) -> Kernels:
        """A default run's options on `device`: memory format 'auto' resolved, fp32."""
        return cls(resolve_memory_format("auto", device))

    @classmethod
    def from_config(cls, cfg) -> Kernels:
        """The kernel options of a RunConfig (an unresolved 'auto' is resolved for cfg.device)."""
        return cls(resolve_memory_format(cfg.memory_format, cfg.device), cfg.precision)

    @property
    def torch_memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.memory_format == "channels_last" else torch.contiguous_format

    @property
    def activation_dtype(self) -> torch.dtype:
        return activation_dtype(self.precision)

    def layout(self, t: torch.Tensor) -> torch.Tensor:
        """`t` in this memory format with its canonical strides (4-D tensors; others are returned as they are).

        Applied to every module input, in the sequential trainer and in every worker alike, so both run the
        same kernels whatever layout a tensor arrived in. A tensor already laid out so is returned as is.
        """
        if t.dim() != 4 or t.stride() == _canonical_strides(t.shape, self.memory_format):
            return t
        return torch.empty_like(t, memory_format=self.torch_memory_format).copy_(t)

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """torch.autocast at this precision on `device`'s type; no context at all for fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=_AUTOCAST_DTYPE[self.precision])

    def handoff(self, out: torch.Tensor) -> torch.Tensor:
        """The detached output a module hands to the next one (or downstream): floating tensors in the activation
        dtype. Autocast already yields it for convolutional layers; the cast (a no-op then) makes it a guarantee
        the receiver can check, whichever op ends a layer."""
        out = out.detach()
        if out.is_floating_point() and out.dtype != self.activation_dtype:
            out = out.to(self.activation_dtype)
        return out


@dataclass
class LossScaler:
    """Dynamic fp16 loss scale of ONE local module (GradScaler's rule: halve on inf/nan, double after
    `growth_interval` clean steps).

    One scaler per module, not one per optimizer: a module's gradients come from its own loss only, so whether
    its update is skipped depends on that module alone, and a pipeline worker holding any slice of the modules
    skips exactly the updates the sequential trainer skips.
    """

    scale: float = 2.0 ** 16
    growth_interval: int = 2000
    clean_steps: int = 0
    skipped: int = 0

    def backward(self, loss: torch.Tensor) -> None:
        (loss * self.scale).backward()

    def unscale(self, params: list[torch.nn.Parameter]) -> bool:
        """Divide the module's gradients by the scale; on any inf/nan drop them (the optimizer then skips these
        parameters this step: no update, no momentum, no weight decay) and halve the scale. True if kept."""
        grads = [p.grad for p in params if p.grad is not None]
        inv = 1.0 / self.scale        # a power of two: the unscaled gradient is exact
        for g in grads:
            g.mul_(inv)
        finite = bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else True
        if not finite:
            drop_update(params)
            self.scale *= 0.5
            self.clean_steps = 0
            self.skipped += 1
            return False
        self.clean_steps += 1
        if self.clean_steps == self.growth_interval:
            self.scale *= 2.0
            self.clean_steps = 0
        return True
