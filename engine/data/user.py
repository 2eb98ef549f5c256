"""A user's own torch Datasets as a DataSource: read once, held in memory, batched like every built-in set.

The engine's guarantees need a training batch that is a pure function of (seed, epoch, step, batch size): the
coordinator rebuilds any minibatch after a failure, and a worker that re-runs a step must see the same pixels.
A Dataset's `__getitem__` may be slow, or read files that change, so both sets are read exactly once, checked
item by item, and kept as float32 tensors; the order and the optional augmentation come from seeded generators
as for the built-in sets (source.py). Only the coordinator builds this source: workers get the run's config and
the channel statistics, never the data.
"""

from __future__ import annotations

import numbers

import torch
from auglocal.engine.data.augment import CropFlip, channel_stats, normalise
from auglocal.engine.data.seeding import AUGMENT_STREAM, seeded_generator
from auglocal.engine.data.source import DataSource, evenly_spaced
from torch.utils.data import IterableDataset

#: the prefix of a config's `dataset` for a run on a user's Dataset: "user:<class name>[+<augment>]"
USER_PREFIX = "user:"
#: augment= values: the engine's seeded augmentation applied to the raw images before normalising
AUGMENTATIONS = {"cifar": CropFlip(4, "reflect", flip=True)}
#: the built-in sets' defaults at this scale (the paper's CIFAR setting under the linear scaling rule)
DEFAULT_BATCH, DEFAULT_LR = 128, 0.1
CHANNELS = 3   # the planner, the coordinator's inbox schema and the models take (B, 3, S, S) images


def is_user_dataset(name: str | None) -> bool:
    return isinstance(name, str) and name.startswith(USER_PREFIX)


def _label(value, where: str) -> int:
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point() \
            and value.dtype != torch.bool:
        return int(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    raise ValueError(f"{where}: the label must be an int, got {type(value).__name__} {value!r:.40}")


def _read(dataset, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every item of a map-style dataset, checked: (image float tensor (3, S, S), int label)."""
    kind = type(dataset).__name__
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__") \
            or not hasattr(dataset, "__len__"):
        raise ValueError(f"{split}_data must be a map-style torch Dataset (with __len__ and __getitem__), got "
                         f"{kind}; an IterableDataset has no fixed order to draw seeded minibatches from")
    n = len(dataset)
    if n < 1:
        raise ValueError(f"{split}_data ({kind}) is empty")
    images, labels, shape = [], [], None
    for i in range(n):
        item = dataset[i]
        where = f"{split}_data[{i}] ({kind})"
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(f"{where}: expected a pair (image tensor, int label), got {type(item).__name__}")
        image, label = item
        if not isinstance(image, torch.Tensor) or not image.is_floating_point() or image.dim() != 3:
            what = (f"{image.dtype} tensor of shape {tuple(image.shape)}" if isinstance(image, torch.Tensor)
                    else type(image).__name__)
            raise ValueError(f"{where}: the image must be a float tensor (C, H, W), got {what}")
        if shape is None:
            shape = tuple(image.shape)
            if shape[0] != CHANNELS:
                raise ValueError(f"{where}: images must have {CHANNELS} channels (C, H, W), got {shape}; repeat a "
                                 "grey channel with image.expand(3, -1, -1)")
            if shape[1] != shape[2]:
                raise ValueError(f"{where}: images must be square (C, S, S), got {shape}; crop or resize them")
        elif tuple(image.shape) != shape:
            raise ValueError(f"{where}: image of shape {tuple(image.shape)}, but {split}_data[0] has {shape}")
        images.append(image.detach().to("cpu", torch.float32))
        labels.append(_label(label, where))
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


class DatasetSource(DataSource):
    """Training and test Datasets of (image (3, S, S) float, int label), normalised by the training set's
    channel statistics; `augment` names one of AUGMENTATIONS (None: no augmentation)."""

    def __init__(self, train_data, test_data, *, num_classes: int | None = None, input_size: int | None = None,
                 augment: str | None = None, train_size: int | None = None, test_size: int | None = None):
        if augment is not None and augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be None or one of {', '.join(AUGMENTATIONS)}, got {augment!r}")
        train_images, train_labels = _read(train_data, "train")
        test_images, test_labels = _read(test_data, "test")
        if train_images.shape[1:] != test_images.shape[1:]:
            raise ValueError(f"train_data images are {tuple(train_images.shape[1:])} but test_data images are "
                             f"{tuple(test_images.shape[1:])}")
        size = int(train_images.shape[-1])
        if input_size is not None and input_size != size:
            raise ValueError(f"input_size={input_size}, but the images are {size}x{size}")
        top = int(max(train_labels.max(), test_labels.max()))
        low = int(min(train_labels.min(), test_labels.min()))
        classes = top + 1 if num_classes is None else num_classes
        if low < 0 or top >= classes:
            raise ValueError(f"labels must lie in [0, {classes}), got [{low}, {top}]"
                             + ("" if num_classes is None else f" (num_classes={num_classes})"))
        train = evenly_spaced(len(train_labels), train_size, "train_size")
        test = evenly_spaced(len(test_labels), test_size, "test_size")
        self.train_images, self.train_labels = train_images[train].contiguous(), train_labels[train]
        self.test_images, self.test_labels = test_images[test].contiguous(), test_labels[test]
        mean, std = channel_stats(self.train_images, scale=1.0)
        std = tuple(v if v > 0 else 1.0 for v in std)      # a constant channel: nothing to scale
        self.augment = augment
        self.augmentation = AUGMENTATIONS.get(augment) if augment else None
        name = USER_PREFIX + type(train_data).__name__ + (f"+{augment}" if augment else "")   # what trained
        super().__init__(name=name, num_classes=classes, input_size=size,
                         mean=mean, std=std, train_size=len(train), test_size=len(test),
                         default_batch_size=DEFAULT_BATCH, default_lr=DEFAULT_LR)

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        return normalise(images, self.mean, self.std)      # float32 images are taken as they are

    def _train_examples(self, indices: torch.Tensor, seed: int, epoch: int, step: int,
                        batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.train_images[indices]
        if self.augmentation is not None:
            images = self.augmentation(images, seeded_generator(seed, AUGMENT_STREAM, epoch, step))
        return self._normalise(images), self.train_labels[indices]

    def _test_examples(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._normalise(self.test_images[start:stop]), self.test_labels[start:stop]
