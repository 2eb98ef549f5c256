"""Batch augmentation (pad, random crop, optional flip) and normalisation via torchvision's functional ops."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# torchvision's functional ops are imported where used: importing torchvision costs seconds (it pulls in
# torch._dynamo), and a dry run, which never augments, should not pay for it.


@dataclass(frozen=True)
class CropFlip:
    """Pad by `pad` pixels, crop a random window of the original size, optionally flip horizontally.

    This is torchvision's RandomCrop(size, padding=pad, padding_mode=...) + RandomHorizontalFlip, applied to a
    whole uint8 batch. torchvision's transform classes draw from the global RNG, so the crop offsets and flip
    coins are drawn here from the caller's generator and only the image operations come from torchvision.
    """

    pad: int
    padding_mode: str = "constant"  # 'constant' (zeros) or 'reflect'
    flip: bool = True

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        import torchvision.transforms.v2.functional as F

        n, _, height, width = images.shape
        tops = torch.randint(0, 2 * self.pad + 1, (n,), generator=generator).tolist()
        lefts = torch.randint(0, 2 * self.pad + 1, (n,), generator=generator).tolist()
        flips = torch.rand(n, generator=generator) < 0.5
        padded = F.pad(images, [self.pad], padding_mode=self.padding_mode) if self.pad else images
        out = torch.stack([F.crop(padded[i], tops[i], lefts[i], height, width) for i in range(n)])
        if self.flip and bool(flips.any()):
            out[flips] = F.horizontal_flip(out[flips])
        return out


def normalise(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 images in [0, 255] -> float32 in [0, 1] -> (x - mean) / std per channel."""
    import torchvision.transforms.v2.functional as F

    return F.normalize(F.to_dtype(images, torch.float32, scale=True), list(mean), list(std))


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of uint8 images scaled to [0, 1] (data-derived normalisation)."""
    x = images.to(torch.float64) / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3), unbiased=False)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
