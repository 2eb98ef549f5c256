"""Batch augmentation (pad, random crop, optional flip) and normalisation, as torchvision computes them.

Written in plain torch rather than through torchvision.transforms.v2.functional: importing torchvision costs
seconds (it pulls in torch._dynamo), and the coordinator, which builds every training batch, would pay for it
in every run. Each operation is the one torchvision's kernel performs on a tensor, step for step, so the
pixels are bitwise the same (tests/engine/test_augment_parity.py compares them with torchvision's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as nnf


@dataclass(frozen=True)
class CropFlip:
    """Pad by `pad` pixels, crop a random window of the original size, optionally flip horizontally.

    This is torchvision's RandomCrop(size, padding=pad, padding_mode=...) + RandomHorizontalFlip, applied to a
    whole uint8 batch. torchvision's transform classes draw from the global RNG, so the crop offsets and flip
    coins are drawn here from the caller's generator; the image operations are torchvision's (v2.functional
    pad, crop, horizontal_flip) on tensors, restated in torch.
    """

    pad: int
    padding_mode: str = "constant"  # 'constant' (zeros) or 'reflect'
    flip: bool = True

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, height, width = images.shape
        tops = torch.randint(0, 2 * self.pad + 1, (n,), generator=generator).tolist()
        lefts = torch.randint(0, 2 * self.pad + 1, (n,), generator=generator).tolist()
        flips = torch.rand(n, generator=generator) < 0.5
        padded = pad(images, self.pad, self.padding_mode) if self.pad else images
        # the offsets lie in [0, 2 * pad]: every window is inside the padded image, a plain slice
        out = torch.stack([padded[i, :, tops[i]:tops[i] + height, lefts[i]:lefts[i] + width] for i in range(n)])
        if self.flip and bool(flips.any()):
            out[flips] = out[flips].flip(-1)
        return out


def pad(images: torch.Tensor, pad: int, padding_mode: str) -> torch.Tensor:
    """`pad` pixels on every side of (..., C, H, W) images: zeros ('constant') or mirrored ('reflect').

    torch pads integer images only with a constant, so a reflected uint8 batch goes through float32 and back,
    as torchvision's pad does (exact: every uint8 value is a float32)."""
    if padding_mode not in ("constant", "reflect"):
        raise ValueError(f"padding_mode must be 'constant' or 'reflect', got {padding_mode!r}")
    shape = images.shape
    flat = images.reshape(-1, *shape[-3:])
    if padding_mode == "constant":
        flat = nnf.pad(flat, [pad] * 4, mode="constant", value=0.0)
    elif images.is_floating_point():
        flat = nnf.pad(flat, [pad] * 4, mode="reflect")
    else:
        flat = nnf.pad(flat.to(torch.float32), [pad] * 4, mode="reflect").to(images.dtype)
    return flat.reshape(*shape[:-2], *flat.shape[-2:])


def normalise(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 images in [0, 255] -> float32 in [0, 1] -> (x - mean) / std per channel.

    torchvision's to_dtype(scale=True) then normalize: integers are scaled by 1 / their dtype's maximum, floats
    only cast (float32 kept as it is); mean and std become float32 (C, 1, 1) tensors; subtract, then divide."""
    if not all(std):
        raise ValueError("std evaluated to zero, leading to division by zero.")
    if images.dtype == torch.float32:
        x = images
    elif images.is_floating_point():
        x = images.to(torch.float32)
    else:
        x = images.to(torch.float32).mul_(1.0 / torch.iinfo(images.dtype).max)
    if x.ndim < 3:
        raise ValueError(f"Expected tensor to be a tensor image of size (..., C, H, W). Got {x.shape}.")
    m = torch.as_tensor(list(mean), dtype=torch.float32, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(list(std), dtype=torch.float32, device=x.device).view(-1, 1, 1)
    return x.sub(m).div_(s)


def channel_stats(images: torch.Tensor, scale: float = 255.0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of images divided by `scale` (uint8 pixels to [0, 1]; 1.0 for float
    images as they are), the data-derived normalisation."""
    x = images.to(torch.float64) / scale
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3), unbiased=False)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
