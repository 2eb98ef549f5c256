"""Data sets as DataSources whose training batches are pure functions of (seed, epoch, step, batch size)."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from pathlib import Path

from auglocal.engine.data.source import DataSource, TensorSource
from auglocal.engine.data.synthetic import make_synthetic
from auglocal.engine.data.user import DatasetSource, is_user_dataset

DATASETS = ("mnist5k", "digits", "animal-mnist", "synthetic", "cifar10", "svhn", "stl10", "imagenet")


def _loader(module: str, name: str, takes_dir: bool = True) -> Callable[[str | Path | None], TensorSource]:
    """A loader that imports its module on first use: the torchvision-based ones import torchvision, which
    costs seconds that a run on the embedded digits (or a dry run) should not pay."""
    def load(data_dir):
        function = getattr(import_module(f"auglocal.engine.data.{module}"), name)
        return function(data_dir) if takes_dir else function()
    return load


_IN_MEMORY = {
    "mnist5k": _loader("embedded", "load_mnist5k", takes_dir=False),
    "digits": _loader("embedded", "load_digits_source", takes_dir=False),
    "animal-mnist": _loader("animal_mnist", "load_animal_mnist", takes_dir=False),
    "cifar10": _loader("torchvision_sets", "load_cifar10"),
    "svhn": _loader("torchvision_sets", "load_svhn"),
    "stl10": _loader("torchvision_sets", "load_stl10"),
}


def build_dataset(name: str, data_dir: str | Path | None = None, *, seed: int = 0,
                  input_size: int | None = None, num_classes: int | None = None,
                  train_size: int | None = None, test_size: int | None = None) -> DataSource:
    """Build a data set by name.

    - synthetic: generated from `seed` with the given input_size, num_classes, train_size, test_size
      (defaults 32, 10, 2048, 512).
    - cifar10, svhn, stl10, imagenet: read from `data_dir` in the official on-disk formats (nothing is ever
      downloaded). imagenet accepts any input_size (default 224).
    - mnist5k, digits, animal-mnist: embedded in installed packages; data_dir is ignored.
    For every set but synthetic, train_size/test_size shrink the set to that many evenly spaced images (for
    quick runs), and input_size/num_classes, if given, must match the data set; `seed` only affects synthetic
    (the splits of the embedded sets are fixed, and the run seed goes to `train_batch`).
    """
    if is_user_dataset(name):
        raise ValueError(f"the run used a Python Dataset ({name}): only auglocal.train(..., train_data, test_data) "
                         "can give it again (docs/api.md)")
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of: {', '.join(DATASETS)}")
    if name == "synthetic":
        return make_synthetic(seed, input_size=32 if input_size is None else input_size,
                              num_classes=10 if num_classes is None else num_classes,
                              train_size=2048 if train_size is None else train_size,
                              test_size=512 if test_size is None else test_size)
    if name == "imagenet":
        from auglocal.engine.data.imagenet import ImageFolderSource

        return ImageFolderSource(data_dir, input_size=224 if input_size is None else input_size,
                                 num_classes=num_classes, train_size=train_size, test_size=test_size)
    source = _IN_MEMORY[name](data_dir)
    for what, asked, actual in (("input_size", input_size, source.input_size),
                                ("num_classes", num_classes, source.num_classes)):
        if asked is not None and asked != actual:
            raise ValueError(f"{name} has {what} {actual}, got {what}={asked}; only synthetic (and imagenet "
                             "for input_size) can change it")
    if train_size is None and test_size is None:
        return source
    return source.subset(train_size, test_size)


__all__ = ["DATASETS", "DataSource", "DatasetSource", "TensorSource", "build_dataset", "is_user_dataset"]
