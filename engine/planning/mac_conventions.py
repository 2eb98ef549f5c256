"""Two ways to count forward multiply-accumulates: the engine's own, and the one the paper's tables use.

`engine` (the default) is torch's FlopCounterMode as it comes, halved: convolutions, linear layers and matrix
products, of everything an aux net computes for its loss (PredSim's similarity head, InfoPro's decoder included).

`paper` counts as fvcore's FlopCountAnalysis does (the official train.py imports it; fvcore counts one "flop" per
MAC). Its handles (fvcore/nn/flop_count.py, jit_handles.py) count, besides convolutions, linear layers and matrix
products: batch norm (2 per input element with affine weights in eval mode, 1 without; 5 and 4 in training),
adaptive average pooling to 2-D (1 per input element), bilinear upsampling (4 per output element) and nearest
upsampling (1); nothing else (no max or plain average pooling, ReLU, additions, losses). Its aux nets count their
classifier path only (`AuxNet.logits`), which is what the official model runs in eval mode: the CE heads of DGL,
PredSim and InfoPro, not PredSim's similarity conv nor InfoPro's decoder (docs/method.md 9).

FlopCounterMode sees operators after torch has decomposed them, below fvcore's traced ones, so fvcore's handles are
registered here on what their operators become:

- batch norm: `native_batch_norm`, `_native_batch_norm_legit(_no_training)`, or the cuDNN / MIOpen kernel,
  whichever the dispatcher reaches first (a formula stops its decomposition, so one of them counts, once);
- adaptive_avg_pool2d: `_adaptive_avg_pool2d` on a 4-D input, and `mean` over the last two axes of a 4-D input
  keeping them, which is what the pool to 1x1 becomes. A 3-D `_adaptive_avg_pool2d` is what adaptive_avg_pool1d
  becomes, which fvcore does not count; counting runs on batches, so a 2-D pool always has a 4-D input. An explicit
  `x.mean((2, 3), keepdim=True)` would count as pooling; no module on a counted path has one.

Formulas return FlopCounterMode's unit, 2 per MAC (the callers halve), so each is twice fvcore's count.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

ENGINE, PAPER = "engine", "paper"
MAC_CONVENTIONS = (ENGINE, PAPER)

#: the line under the dry run's totals that says how its MACs were counted (fits the table's 110 columns)
DESCRIPTIONS = {
    ENGINE: "MACs counted the engine's way: conv, linear, matmul of all aux losses (--macs paper: the paper's)",
    PAPER: "MACs counted the paper's way (fvcore): conv, linear, matmul, batch norm, pooling; aux classifiers only",
}


def _batch_norm(training: bool | None) -> Callable[..., int]:
    """fvcore's batchnorm_flop_jit; `training` None: read the op's own flag (its first bool argument)."""
    def formula(x_shape, weight_shape, *args: Any, out_shape=None, **kwargs: Any) -> int:
        train = training if training is not None else next(a for a in args if isinstance(a, bool))
        affine = weight_shape is not None
        per_element = (5 if affine else 4) if train else (2 if affine else 1)
        return 2 * per_element * math.prod(x_shape)
    return formula


def _adaptive_avg_pool2d(x_shape, output_size, *args: Any, out_shape=None, **kwargs: Any) -> int:
    return 2 * math.prod(x_shape) if len(x_shape) == 4 else 0


def _mean(x_shape, dim=None, keepdim: bool = False, *args: Any, out_shape=None, **kwargs: Any) -> int:
    """adaptive_avg_pool2d to 1x1 as the dispatcher sees it; any other mean is not counted."""
    dims = [dim] if isinstance(dim, int) else list(dim or [])
    pooled = len(x_shape) == 4 and keepdim and sorted(d % 4 for d in dims) == [2, 3]
    return 2 * math.prod(x_shape) if pooled else 0


def _upsample(per_output: int) -> Callable[..., int]:
    def formula(*args: Any, out_shape=None, **kwargs: Any) -> int:
        return 2 * per_output * math.prod(out_shape)
    return formula


def attention_formulas() -> dict:
    """Formulas FlopCounterMode lacks for attention on real CPU tensors, for both conventions: there
    scaled_dot_product_attention runs as `_scaled_dot_product_flash_attention_for_cpu`, which torch does not count
    (on the meta device and on CUDA it becomes operators torch counts: Q K^T and A V). Counted like torch's own
    flash-attention formula, so a ViT's MACs are the same on every device."""
    from torch.utils.flop_counter import sdpa_flop_count

    def sdpa(query_shape, key_shape, value_shape, *args: Any, out_shape=None, **kwargs: Any) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    packet = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    return {packet: sdpa, **{getattr(packet, name): sdpa for name in packet.overloads()}}


def flop_formulas(macs: str) -> dict:
    """FlopCounterMode's `custom_mapping` for the convention `macs` (none for the engine's)."""
    if macs not in MAC_CONVENTIONS:
        raise ValueError(f"unknown MAC convention {macs!r}; choose one of: {', '.join(MAC_CONVENTIONS)}")
    if macs == ENGINE:
        return {}
    aten = torch.ops.aten
    per_packet = {
        aten._native_batch_norm_legit_no_training: _batch_norm(False),
        aten._native_batch_norm_legit: _batch_norm(None),
        aten.native_batch_norm: _batch_norm(None),
        aten.cudnn_batch_norm: _batch_norm(None),
        aten.miopen_batch_norm: _batch_norm(None),
        aten._adaptive_avg_pool2d: _adaptive_avg_pool2d,
        aten.mean: _mean,
        aten.upsample_bilinear2d: _upsample(4),
        aten.upsample_nearest2d: _upsample(1),
    }
    # FlopCounterMode decomposes an operator unless its overload has a formula (upsample_nearest2d would become
    # index arithmetic, uncounted); the count itself is read from the packet's
    mapping: dict = dict(per_packet)
    for packet, formula in per_packet.items():
        mapping.update({getattr(packet, name): formula for name in packet.overloads()})
    return mapping
