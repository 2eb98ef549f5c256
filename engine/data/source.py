"""DataSource: deterministic training batches and fixed-order test batches of one data set."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from auglocal.engine.data.augment import CropFlip, normalise
from auglocal.engine.data.seeding import AUGMENT_STREAM, ORDER_STREAM, seeded_generator


def _check_count(value: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
    return value


class DataSource:
    """One data set, with every training minibatch a pure function of (seed, epoch, step, batch_size).

    The epoch's order is a permutation drawn from a generator seeded by (seed, epoch), and the augmentation
    from generators seeded by (seed, epoch, step) or by the sample's position in the epoch. Nothing reads the
    global torch or numpy RNG, so the coordinator can rebuild any minibatch after a failure, and a worker
    that re-runs a step sees exactly the same pixels. Images are always (B, 3, S, S) float32, normalised;
    labels int64. drop_last is False: the last batch of an epoch may be smaller (docs/method.md 4.4).

    Subclasses supply `_train_examples` and `_test_examples`.
    """

    def __init__(self, *, name: str, num_classes: int, input_size: int, mean: tuple[float, float, float],
                 std: tuple[float, float, float], train_size: int, test_size: int, default_batch_size: int,
                 default_lr: float):
        if train_size < 1 or test_size < 1:
            raise ValueError(f"{name}: need at least one training and one test image, "
                             f"got train_size={train_size}, test_size={test_size}")
        self.name = name
        self.num_classes = num_classes
        self.input_size = input_size
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.train_size = train_size
        self.test_size = test_size
        self.default_batch_size = default_batch_size
        self.default_lr = default_lr
        self._orders: dict[tuple[int, int], torch.Tensor] = {}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, classes={self.num_classes}, size={self.input_size}, "
                f"train={self.train_size}, test={self.test_size})")

    # ---- training ------------------------------------------------------------------------------------
    def steps_per_epoch(self, batch_size: int) -> int:
        """Number of minibatches in one epoch (the last one may be smaller)."""
        return math.ceil(self.train_size / self._check_batch_size(batch_size))

    def epoch_order(self, seed: int, epoch: int) -> torch.Tensor:
        """The permutation of training indices visited in `epoch`; a few recent epochs are cached."""
        key = (_check_count(seed, "seed"), _check_count(epoch, "epoch"))
        order = self._orders.get(key)
        if order is None:
            order = torch.randperm(self.train_size, generator=seeded_generator(seed, ORDER_STREAM, epoch))
            if len(self._orders) >= 4:
                self._orders.pop(next(iter(self._orders)))
            self._orders[key] = order
        return order

    def train_indices(self, seed: int, epoch: int, step: int, batch_size: int) -> torch.Tensor:
        """Training-set indices of minibatch `step` of `epoch` (a slice of `epoch_order`)."""
        steps = self.steps_per_epoch(batch_size)
        if _check_count(step, "step") >= steps:
            raise ValueError(f"step {step} is out of range: {self.name} has {steps} steps per epoch "
                             f"at batch size {batch_size}")
        return self.epoch_order(seed, epoch)[step * batch_size:(step + 1) * batch_size]

    def train_batch(self, seed: int, epoch: int, step: int,
                    batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised, augmented images (B, 3, S, S) float32 and labels (B,) int64 of one training step."""
        indices = self.train_indices(seed, epoch, step, batch_size)
        return self._train_examples(indices, seed, epoch, step, batch_size)

    # ---- evaluation ----------------------------------------------------------------------------------
    def num_test_batches(self, batch_size: int) -> int:
        """Number of test minibatches at `batch_size` (the last one may be smaller)."""
        return math.ceil(self.test_size / self._check_batch_size(batch_size))

    def test_batch(self, index: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The `index`-th test minibatch in the fixed test order: normalised, never augmented."""
        count = self.num_test_batches(batch_size)
        if _check_count(index, "test batch index") >= count:
            raise ValueError(f"test batch {index} is out of range: {self.name} has {count} test batches "
                             f"at batch size {batch_size}")
        start = index * batch_size
        return self._test_examples(start, min(start + batch_size, self.test_size))

    def shape_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first test minibatch as float32 pixels in [0, 255], not normalised: what counting FLOPs needs
        (shape, dtype, labels) without importing torchvision, which normalising does (seconds of a dry run)."""
        stop = min(self._check_batch_size(batch_size), self.test_size)
        return self.test_images[:stop].to(torch.float32), self.test_labels[:stop]

    def test_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """All test minibatches in order."""
        for index in range(self.num_test_batches(batch_size)):
            yield self.test_batch(index, batch_size)

    # ---- for subclasses ------------------------------------------------------------------------------
    def _train_examples(self, indices: torch.Tensor, seed: int, epoch: int, step: int,
                        batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _test_examples(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _check_batch_size(self, batch_size: int) -> int:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        return batch_size


def evenly_spaced(total: int, count: int | None, what: str) -> torch.Tensor:
    """Indices of `count` of `total` items spread evenly over the fixed order (all of them for None).

    Used to shrink a data set for quick runs; spreading (rather than taking a prefix) keeps classes mixed
    even where the stored order is sorted by class (ImageFolder, the MNIST file).
    """
    if count is None:
        return torch.arange(total)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= total:
        raise ValueError(f"{what} must be an integer between 1 and {total}, got {count!r}")
    return (torch.arange(count) * total) // count


class TensorSource(DataSource):
    """A data set held in memory as uint8 tensors (N, 3, S, S), augmented per batch by a `CropFlip`.

    uint8 keeps CIFAR-10 at 150 MB and lets padding and cropping work on bytes; conversion to float and
    normalisation happen once per batch, after augmentation.
    """

    def __init__(self, *, name: str, train_images: torch.Tensor, train_labels: torch.Tensor,
                 test_images: torch.Tensor, test_labels: torch.Tensor, num_classes: int,
                 augmentation: CropFlip, mean: tuple[float, float, float], std: tuple[float, float, float],
                 default_batch_size: int, default_lr: float):
        splits = (("train", train_images, train_labels), ("test", test_images, test_labels))
        for split, images, labels in splits:
            if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3 \
                    or images.shape[2] != images.shape[3]:
                raise ValueError(f"{name} {split} images must be uint8 (N, 3, S, S), "
                                 f"got {images.dtype} {tuple(images.shape)}")
            if labels.shape != (images.shape[0],):
                raise ValueError(f"{name} {split}: {images.shape[0]} images but labels of shape "
                                 f"{tuple(labels.shape)}")
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
                raise ValueError(f"{name} {split} labels must lie in [0, {num_classes}), "
                                 f"got [{int(labels.min())}, {int(labels.max())}]")
        if train_images.shape[2:] != test_images.shape[2:]:
            raise ValueError(f"{name}: train images are {tuple(train_images.shape[2:])} but test images are "
                             f"{tuple(test_images.shape[2:])}")
        super().__init__(name=name, num_classes=num_classes, input_size=int(train_images.shape[-1]),
                         mean=mean, std=std, train_size=int(train_images.shape[0]),
                         test_size=int(test_images.shape[0]), default_batch_size=default_batch_size,
                         default_lr=default_lr)
        self.train_images = train_images.contiguous()
        self.train_labels = train_labels.to(torch.int64)
        self.test_images = test_images.contiguous()
        self.test_labels = test_labels.to(torch.int64)
        self.augmentation = augmentation

    def subset(self, train_size: int | None, test_size: int | None) -> TensorSource:
        """The same data set shrunk to `train_size` / `test_size` evenly spaced images (None keeps all)."""
        train = evenly_spaced(self.train_size, train_size, "train_size")
        test = evenly_spaced(self.test_size, test_size, "test_size")
        return TensorSource(name=self.name, train_images=self.train_images[train],
                            train_labels=self.train_labels[train], test_images=self.test_images[test],
                            test_labels=self.test_labels[test], num_classes=self.num_classes,
                            augmentation=self.augmentation, mean=self.mean, std=self.std,
                            default_batch_size=self.default_batch_size, default_lr=self.default_lr)

    def _train_examples(self, indices: torch.Tensor, seed: int, epoch: int, step: int,
                        batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = seeded_generator(seed, AUGMENT_STREAM, epoch, step)
        images = self.augmentation(self.train_images[indices], generator)
        return normalise(images, self.mean, self.std), self.train_labels[indices]

    def _test_examples(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        return normalise(self.test_images[start:stop], self.mean, self.std), self.test_labels[start:stop]
