"""Forward multiply-accumulates of a module, counted by torch's FlopCounterMode (never by hand)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def forward_macs(module: nn.Module, input_shape: tuple[int, ...], method: str = "forward") -> int:
    """MACs (= FLOPs / 2, conv + linear + matmul) of `module.<method>(x)` on a zero x of `input_shape`.

    `method="logits"` counts an AuxNet's classifier path (its `forward` is a loss needing labels).
    The module runs in eval mode (so BatchNorm1d accepts batch 1); every submodule's mode is restored after.
    Works on meta-device modules, which is how the width search counts thousands of candidates cheaply.
    """
    from torch.utils.flop_counter import FlopCounterMode  # 0.3 s to import: only when something is counted

    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            getattr(module, method)(torch.zeros(input_shape, device=device))
    finally:
        for m, training in modes:
            m.training = training
    return counter.get_total_flops() // 2


def meta_macs(build: Callable[[], nn.Module], input_shape: tuple[int, ...], method: str = "forward") -> int:
    """MACs of the module that `build()` returns, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        module = build()
    return forward_macs(module, input_shape, method)
