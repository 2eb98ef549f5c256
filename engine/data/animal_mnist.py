"""Animal-MNIST: 10,000 28x28 animal silhouettes in 10 classes, read from the animal-mnist 0.4 package's file.

A real data set harder than handwritten digits (a silhouette's class depends on its global shape: a horse,
a cow and a dog share most local features), still small enough for CPU runs, so the learning rules separate.
The package's own loader imports tensorflow; it is installed without its dependencies
(`pip install --no-deps animal-mnist==0.4`) and only its gzipped pickles are read here, through an unpickler
that admits nothing but numpy arrays.
"""

from __future__ import annotations

import functools
import gzip
import io
import pickle
from importlib.resources import files

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from auglocal.engine.data.augment import CropFlip, channel_stats
from auglocal.engine.data.embedded import stratified_split
from auglocal.engine.data.source import TensorSource

PACKAGE = "animal_mnist"
IMAGES_FILE = "animal_data_version_3.gz"
LABELS_FILE = "animal_label_version_3.gz"
CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
#: 2,000 of the 9,716 distinct images (20 %, the package's own benchmark split), stratified, fixed seed
TEST_SIZE = 2000
# 7,716 training images, about 1.5 x mnist5k: the same linear-scaling choice as there (the paper's CIFAR
# 1024 / 0.8 scaled to 128 / 0.1), giving 61 steps per epoch.
BATCH_SIZE, LR = 128, 0.1

_INSTALL_HINT = "install it with `pip install --no-deps animal-mnist==0.4` (it declares tensorflow)"


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds pickled numpy arrays and refuses every other global, so the file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): np.ndarray(0).__reduce__()[0],
        ("numpy._core.multiarray", "_reconstruct"): np.ndarray(0).__reduce__()[0],
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are expected "
                                         "in the Animal-MNIST files") from None


def read_array(raw: bytes) -> np.ndarray:
    """The numpy array in gzipped pickle bytes (nothing else is accepted)."""
    obj = _NumpyOnlyUnpickler(io.BytesIO(gzip.decompress(raw))).load()
    if not isinstance(obj, np.ndarray):
        raise pickle.UnpicklingError(f"expected a numpy array, got {type(obj).__name__}")
    return obj


def data_files():
    """The package's image and label files (Traversables); FileNotFoundError when it is not installed."""
    try:
        folder = files(PACKAGE) / "data" / "Animal_MNIST"
    except ModuleNotFoundError:
        raise FileNotFoundError("the animal-mnist data set comes from the animal-mnist package, which is "
                                f"not installed; {_INSTALL_HINT}") from None
    images, labels = folder / IMAGES_FILE, folder / LABELS_FILE
    for path in (images, labels):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: animal-mnist 0.4 ships it; {_INSTALL_HINT}")
    return images, labels


@functools.cache
def animal_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 10,000 images (uint8, 28x28) and labels (0..9) as stored in the package (sorted by class)."""
    image_path, label_path = data_files()
    pixels, labels = read_array(image_path.read_bytes()), read_array(label_path.read_bytes())
    if pixels.shape != (10000, 28, 28) or pixels.dtype != np.uint8 or labels.shape != (10000,) \
            or labels.min() < 0 or labels.max() >= len(CLASSES):
        raise ValueError(f"{image_path} is not animal-mnist 0.4's data: images {pixels.shape} "
                         f"{pixels.dtype}, labels {labels.shape}")
    return pixels, labels.astype(np.int64)


def distinct(pixels: np.ndarray) -> np.ndarray:
    """Sorted indices of the first copy of every distinct image.

    The file holds 284 pairs of identical images (same label); keeping both could put one copy in the
    training set and the other in the test set, so only the first is kept (9,716 images).
    """
    _, first = np.unique(pixels.reshape(len(pixels), -1), axis=0, return_index=True)
    return np.sort(first)


def load_animal_mnist() -> TensorSource:
    """Animal-MNIST as a TensorSource: 28x28 zero-padded to 32x32, grey as RGB, 7,716 / 2,000 split.

    The split is stratified with the fixed seed of the embedded sets (independent of the run seed).
    Training batches get crops with zero padding 2 and horizontal flips: the animals face left and right
    alike in the file, so a mirrored silhouette is the same class (unlike a mirrored digit).
    Normalised with the training images' mean and std.
    """
    pixels, labels = animal_arrays()
    keep = distinct(pixels)
    pixels, labels = pixels[keep], labels[keep]
    images = F.pad(torch.from_numpy(pixels).unsqueeze(1), [2]).expand(-1, 3, -1, -1).contiguous()
    train, test = (torch.as_tensor(s) for s in stratified_split(labels, TEST_SIZE))
    labels_t = torch.as_tensor(labels)
    mean, std = channel_stats(images[train])
    return TensorSource(name="animal-mnist", train_images=images[train], train_labels=labels_t[train],
                        test_images=images[test], test_labels=labels_t[test], num_classes=len(CLASSES),
                        augmentation=CropFlip(2, "constant", flip=True), mean=mean, std=std,
                        default_batch_size=BATCH_SIZE, default_lr=LR)
