"""Small data sets in the real on-disk formats, written by the tests (nothing can be downloaded here): the
official CIFAR-10 pickled batches and an ImageNet-style class folder of images."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.datasets import CIFAR10


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_cifar10(root: Path, monkeypatch, train: np.ndarray, train_labels, test: np.ndarray, test_labels) -> Path:
    """The official CIFAR-10 format (pickled batches, protocol 2) under root/cifar-10-batches-py: `train`
    (N x 3 x 32 x 32 uint8, N a multiple of 5) split over the five training batches, `test` in the test batch;
    torchvision's md5 table is pointed at these files, so only real damage fails its check."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    per = len(train) // 5
    for k in range(5):
        part = slice(per * k, per * (k + 1))
        entry = {"batch_label": f"training batch {k + 1} of 5", "data": train[part].reshape(per, -1),
                 "labels": list(map(int, train_labels[part])), "filenames": [f"img{i}.png" for i in range(per)]}
        (folder / f"data_batch_{k + 1}").write_bytes(pickle.dumps(entry, protocol=2))
    entry = {"batch_label": "testing batch 1 of 1", "data": test.reshape(len(test), -1),
             "labels": list(map(int, test_labels)), "filenames": [f"t{i}.png" for i in range(len(test))]}
    (folder / "test_batch").write_bytes(pickle.dumps(entry, protocol=2))
    meta = {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{k}", md5(folder / f"data_batch_{k}")]
                                                for k in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5(folder / "test_batch")]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5(folder / "batches.meta")})
    return folder


def write_image_folder(root: Path, suffix: str, per_split: dict[str, int], seed: int) -> None:
    """root/<train|val>/<n001|n002>/img<i><suffix>: small random RGB images, `per_split[split]` per class."""
    rng = np.random.default_rng(seed)
    for split, n in per_split.items():
        for cls in ("n001", "n002"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(
                    root / split / cls / f"img{i}{suffix}")
