"""Synthetic images for benchmarks: class-dependent low-frequency patterns, shifted and buried in noise."""

from __future__ import annotations

import numpy as np
import psutil
import torch
from auglocal.engine.data.augment import CropFlip, channel_stats
from auglocal.engine.data.source import TensorSource

COMPONENTS = 3          # cosine waves per class pattern
MAX_FREQUENCY = 3       # cycles per image: the patterns are smooth, so conv nets with pooling can see them
NOISE = 2.0             # pixel noise, in units of the pattern's standard deviation
DISTRACTOR = 0.6        # weight of another class's pattern, at a random shift, mixed into every image
_CHUNK = 256            # samples generated at once, bounds memory at large input sizes
#: peak bytes per training-image byte while the set is made: the uint8 images plus channel_stats' two float64
#: copies (measured: 17.1x at 20k and 60k images of 32x32)
_PEAK_PER_TRAIN_BYTE = 17


def _prototypes(rng: np.random.Generator, num_classes: int, size: int) -> np.ndarray:
    """(C, 3, S, S) float32 patterns with zero mean and unit std, one per class."""
    coords = np.arange(size, dtype=np.float64) / size
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    patterns = np.zeros((num_classes, 3, size, size))
    for c in range(num_classes):
        for _ in range(COMPONENTS):
            fy, fx = 0, 0
            while fy == 0 and fx == 0:
                fy, fx = rng.integers(-MAX_FREQUENCY, MAX_FREQUENCY + 1, size=2)
            wave = np.cos(2 * np.pi * (fy * yy + fx * xx) + rng.uniform(0, 2 * np.pi))
            patterns[c] += rng.normal(size=(3, 1, 1)) * wave
        patterns[c] = (patterns[c] - patterns[c].mean()) / patterns[c].std()
    return patterns.astype(np.float32)


def _samples(rng: np.random.Generator, prototypes: np.ndarray,
             count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced labels; each image = random gain x its class pattern shifted by up to S/8, plus noise."""
    num_classes, _, size, _ = prototypes.shape
    labels = rng.permutation(np.arange(count) % num_classes)
    max_shift = max(1, size // 8)
    images = np.empty((count, 3, size, size), dtype=np.uint8)
    for start in range(0, count, _CHUNK):
        stop = min(start + _CHUNK, count)
        batch = np.empty((stop - start, 3, size, size), dtype=np.float32)
        for row, label in enumerate(labels[start:stop]):
            dy, dx = rng.integers(-max_shift, max_shift + 1, size=2)
            other = (label + rng.integers(1, num_classes)) % num_classes
            dy2, dx2 = rng.integers(0, size, size=2)
            batch[row] = (rng.uniform(0.7, 1.3) * np.roll(prototypes[label], (dy, dx), axis=(1, 2))
                          + DISTRACTOR * np.roll(prototypes[other], (dy2, dx2), axis=(1, 2)))
        batch += NOISE * rng.standard_normal(batch.shape, dtype=np.float32)
        images[start:stop] = np.clip(np.rint(128 + 40 * batch), 0, 255).astype(np.uint8)
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def needed_bytes(input_size: int, train_size: int, test_size: int) -> int:
    """The peak memory making the set takes (see _PEAK_PER_TRAIN_BYTE), chunk buffers aside."""
    image = 3 * input_size * input_size
    return train_size * (image * _PEAK_PER_TRAIN_BYTE + 8) + test_size * (image + 8)


def check_memory(input_size: int, train_size: int, test_size: int) -> None:
    """ValueError before allocating anything when the set would not fit in the memory available now: a
    `train_size` of ten million should be one line, not numpy's MemoryError (or the OOM killer) mid-way."""
    need, free = needed_bytes(input_size, train_size, test_size), psutil.virtual_memory().available
    if need > free:
        raise ValueError(f"synthetic: {train_size} training and {test_size} test images of 3x{input_size}x"
                         f"{input_size} need about {need / 2**30:.1f} GiB of memory to make, but only "
                         f"{free / 2**30:.1f} GiB is available; use a smaller --train-size or --input-size")


def make_synthetic(seed: int = 0, input_size: int = 32, num_classes: int = 10, train_size: int = 2048,
                   test_size: int = 512) -> TensorSource:
    """A learnable, not trivially separable data set of any size, fully determined by `seed`.

    Patterns, training and test samples come from separate numpy generators keyed by the seed, so the test
    set does not change when train_size does. Augmentation: zero-pad S/8 random crops, no flip (a mirrored
    pattern may be another class's).
    """
    for what, value, low in (("input_size", input_size, 8), ("num_classes", num_classes, 2),
                             ("train_size", train_size, 1), ("test_size", test_size, 1), ("seed", seed, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"synthetic: {what} must be an integer >= {low}, got {value!r}")
    check_memory(input_size, train_size, test_size)
    prototypes = _prototypes(np.random.default_rng([seed, 0]), num_classes, input_size)
    train_x, train_y = _samples(np.random.default_rng([seed, 1]), prototypes, train_size)
    test_x, test_y = _samples(np.random.default_rng([seed, 2]), prototypes, test_size)
    mean, std = channel_stats(train_x)
    return TensorSource(name="synthetic", train_images=train_x, train_labels=train_y, test_images=test_x,
                        test_labels=test_y, num_classes=num_classes,
                        augmentation=CropFlip(max(1, input_size // 8), "constant", flip=False),
                        mean=mean, std=std, default_batch_size=128, default_lr=0.1)
