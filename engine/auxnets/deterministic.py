"""Deterministic stand-ins for the two aux-net operations whose CUDA backward is not deterministic.

`adaptive_avg_pool2d` to a size above 1 and bilinear `interpolate` accumulate their CUDA gradients with atomic
adds, so under `torch.use_deterministic_algorithms(True)` (AUGLOCAL_DETERMINISTIC=1, the GPU parity check) their
backward raises. Both are separable linear maps of the two spatial axes, out = A_h @ x @ A_w^T, so they are
computed here as that: average pooling with kernel = stride when the output size divides the input size (the
common case, e.g. 32 -> 8), else two fixed matrices applied by matmul, whose backward is deterministic. They
equal torch's operations to float rounding. Which path runs is decided per call: the stand-ins only when
deterministic algorithms are on, so a default run keeps torch's own kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def deterministic_on() -> bool:
    """Deterministic algorithms are asked for (torch.use_deterministic_algorithms, set by AUGLOCAL_DETERMINISTIC)."""
    return torch.are_deterministic_algorithms_enabled()


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def adaptive_pool_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) float64: row o averages input positions floor(o*n_in/n_out) .. ceil((o+1)*n_in/n_out) - 1,
    the windows of torch's adaptive average pooling."""
    a = torch.zeros(n_out, n_in, dtype=torch.float64)
    for o in range(n_out):
        start, end = (o * n_in) // n_out, -((-(o + 1) * n_in) // n_out)
        a[o, start:end] = 1.0 / (end - start)
    return a


def bilinear_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) float64: linear interpolation with align_corners=True (output o samples input position
    o * (n_in - 1) / (n_out - 1))."""
    a = torch.zeros(n_out, n_in, dtype=torch.float64)
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    for o in range(n_out):
        src = o * scale
        i0 = min(int(src), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        w1 = src - i0
        a[o, i0] += 1.0 - w1
        a[o, i1] += w1
    return a


def separable(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """rows @ x @ cols^T over the last two axes of `x` (N, C, H, W), in x's dtype and on its device."""
    rows, cols = rows.to(x.device, x.dtype), cols.to(x.device, x.dtype)
    return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))


def adaptive_avg_pool2d(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """F.adaptive_avg_pool2d(x, size) with a deterministic backward."""
    (h, w), (oh, ow) = x.shape[-2:], _pair(size)
    if h % oh == 0 and w % ow == 0:
        return F.avg_pool2d(x, (h // oh, w // ow))     # kernel = stride: the same windows
    return separable(x, adaptive_pool_matrix(h, oh), adaptive_pool_matrix(w, ow))


def interpolate_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """F.interpolate(x, size, mode='bilinear', align_corners=True) with a deterministic backward."""
    (h, w), (oh, ow) = x.shape[-2:], _pair(size)
    return separable(x, bilinear_matrix(h, oh), bilinear_matrix(w, ow))


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """nn.AdaptiveAvgPool2d that takes the deterministic formulation while deterministic algorithms are on
    (a size of 1 is a mean, deterministic already: torch's own kernel stays)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if deterministic_on() and _pair(self.output_size) != (1, 1):
            return adaptive_avg_pool2d(x, self.output_size)
        return super().forward(x)
