"""CIFAR-10, SVHN and STL-10 read from their real on-disk formats by torchvision.datasets."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from auglocal.engine.data.augment import CropFlip
from auglocal.engine.data.source import TensorSource
from torchvision.datasets import CIFAR10, STL10, SVHN
from torchvision.datasets.utils import check_integrity

# docs/method.md 4.4 / 4.2
CIFAR10_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR10_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
HALF = (0.5, 0.5, 0.5)

# What torchvision raises while reading a bad file: its integrity check (RuntimeError), unpickling and
# reshaping errors, truncated .mat files.
_READ_ERRORS = (RuntimeError, ValueError, KeyError, EOFError, OSError, pickle.UnpicklingError)


def require_dir(data_dir: str | Path | None, name: str, expected: str) -> Path:
    """The data directory as a Path; a clear error if it was not given, does not exist or is not a folder."""
    if data_dir is None:
        raise ValueError(f"{name} is read from disk: pass data_dir, a folder containing {expected} "
                         "(nothing is downloaded)")
    root = Path(data_dir).expanduser()
    if root.exists() and not root.is_dir():
        raise ValueError(f"{name}: data directory {root} is a file, not a folder; give the folder containing "
                         f"{expected}")
    if not root.is_dir():
        raise FileNotFoundError(f"{name}: data directory {root} does not exist; expected a folder containing "
                                f"{expected}")
    return root


def require_files(folder: Path, names: list[str], name: str) -> None:
    """FileNotFoundError naming the first expected file that is missing."""
    for file_name in names:
        path = folder / file_name
        if not path.is_file():
            raise FileNotFoundError(f"{name}: expected file {path} is missing; {folder} must hold "
                                    f"{', '.join(names)} in the format torchvision.datasets reads")


def read_with_torchvision(factory: Callable[[], object], folder: Path, checksums: dict[str, str], name: str):
    """Run a torchvision dataset constructor and turn its failures into a ValueError naming the bad file.

    torchvision verifies md5 sums only as a whole ("not found or corrupted"); the sums are rechecked here, on
    the failure path only, so the message can say which file is wrong.
    """
    try:
        return factory()
    except _READ_ERRORS as err:
        for file_name, md5 in checksums.items():
            if not check_integrity(str(folder / file_name), md5):
                raise ValueError(f"{name}: {folder / file_name} is corrupted or not the official file (its "
                                 f"md5 differs from torchvision's {md5}); re-extract the original archive"
                                 ) from err
        raise ValueError(f"{name}: could not read the data set in {folder}: {err}") from err


def _as_tensors(name: str, images: np.ndarray, labels, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    images_t = torch.from_numpy(np.ascontiguousarray(images))
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if images_t.dtype != torch.uint8 or tuple(images_t.shape[1:]) != (3, size, size):
        raise ValueError(f"{name}: expected uint8 images of shape (N, 3, {size}, {size}), "
                         f"got {images_t.dtype} {tuple(images_t.shape)}")
    return images_t, labels_t


def load_cifar10(data_dir: str | Path | None) -> TensorSource:
    """CIFAR-10 from data_dir/cifar-10-batches-py/ (the python pickles of the official archive)."""
    root = require_dir(data_dir, "cifar10", f"{CIFAR10.base_folder}/")
    folder = root / CIFAR10.base_folder
    checksums = dict(CIFAR10.train_list + CIFAR10.test_list)
    checksums[CIFAR10.meta["filename"]] = CIFAR10.meta["md5"]
    require_files(folder, list(checksums), "cifar10")
    splits = []
    for train in (True, False):
        data = read_with_torchvision(lambda train=train: CIFAR10(str(root), train=train, download=False),
                                     folder, checksums, "cifar10")
        splits.append(_as_tensors("cifar10", data.data.transpose(0, 3, 1, 2), data.targets, 32))
    (train_x, train_y), (test_x, test_y) = splits
    return TensorSource(name="cifar10", train_images=train_x, train_labels=train_y, test_images=test_x,
                        test_labels=test_y, num_classes=10, augmentation=CropFlip(4, "reflect", flip=True),
                        mean=CIFAR10_MEAN, std=CIFAR10_STD, default_batch_size=1024, default_lr=0.8)


def load_svhn(data_dir: str | Path | None) -> TensorSource:
    """SVHN from data_dir/train_32x32.mat and test_32x32.mat (no 'extra' split, as in the paper)."""
    root = require_dir(data_dir, "svhn", "train_32x32.mat and test_32x32.mat")
    checksums = {SVHN.split_list[split][1]: SVHN.split_list[split][2] for split in ("train", "test")}
    require_files(root, list(checksums), "svhn")
    splits = []
    for split in ("train", "test"):
        data = read_with_torchvision(lambda split=split: SVHN(str(root), split=split, download=False),
                                     root, checksums, "svhn")
        splits.append(_as_tensors("svhn", data.data, data.labels, 32))
    (train_x, train_y), (test_x, test_y) = splits
    return TensorSource(name="svhn", train_images=train_x, train_labels=train_y, test_images=test_x,
                        test_labels=test_y, num_classes=10, augmentation=CropFlip(2, "constant", flip=False),
                        mean=HALF, std=HALF, default_batch_size=1024, default_lr=0.8)


def load_stl10(data_dir: str | Path | None) -> TensorSource:
    """STL-10 (5k labelled train, 8k test, 96x96) from data_dir/stl10_binary/."""
    root = require_dir(data_dir, "stl10", f"{STL10.base_folder}/")
    folder = root / STL10.base_folder
    # torchvision checks every file of the archive, unlabeled_X.bin included, even for split='train'
    checksums = dict(STL10.train_list + STL10.test_list)
    require_files(folder, list(checksums), "stl10")
    splits = []
    for split in ("train", "test"):
        data = read_with_torchvision(lambda split=split: STL10(str(root), split=split, download=False),
                                     folder, checksums, "stl10")
        splits.append(_as_tensors("stl10", data.data, data.labels, 96))
    (train_x, train_y), (test_x, test_y) = splits
    return TensorSource(name="stl10", train_images=train_x, train_labels=train_y, test_images=test_x,
                        test_labels=test_y, num_classes=10, augmentation=CropFlip(4, "constant", flip=True),
                        mean=HALF, std=HALF, default_batch_size=128, default_lr=0.1)
