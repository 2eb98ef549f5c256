"""ImageNet-style image-folder data set (train/<class>/*, val/<class>/*), decoded lazily per batch."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as F
from auglocal.engine.data.augment import normalise
from auglocal.engine.data.seeding import SAMPLE_STREAM, derive_seed
from auglocal.engine.data.source import DataSource, evenly_spaced
from auglocal.engine.data.torchvision_sets import require_dir
from PIL import Image
from torchvision.datasets import ImageFolder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageDecodeError(ValueError):
    """An image file that does not decode; the message names the file. The CLI exits 2 with it."""


def _decode_problem(path: str) -> str | None:
    """Why the image at `path` does not decode, or None when it does."""
    try:
        if os.path.getsize(path) == 0:       # PIL would only say it "cannot identify" the file
            return "an empty file: 0 bytes"
        with Image.open(path) as image:
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return str(err) or type(err).__name__
    return None


def _scan(folder: Path) -> ImageFolder:
    if not folder.is_dir():
        raise FileNotFoundError(f"imagenet: expected folder {folder} is missing; the data directory must "
                                "hold train/<class>/<images> and val/<class>/<images>")
    try:
        return ImageFolder(str(folder))
    except FileNotFoundError as err:  # ImageFolder's way of saying "no class folders" or "no images"
        raise FileNotFoundError(f"imagenet: no usable images under {folder}: {err}") from err


class ImageFolderSource(DataSource):
    """ImageNet read through torchvision's ImageFolder and decoded image by image for each batch.

    Only file paths are held in memory. Training: RandomResizedCrop(input_size) + horizontal flip, as in
    docs/method.md 4.4; those transforms draw from the global torch RNG, so each sample runs them inside
    `torch.random.fork_rng`, seeded by (seed, epoch, position in the epoch): the global RNG state is the same
    before and after, and the sample's crop does not depend on anything else. (fork_rng swaps the
    process-wide state for the duration, so do not draw from the global RNG in another thread meanwhile.)
    Evaluation: Resize(input_size * 256/224) + CenterCrop(input_size).
    """

    def __init__(self, data_dir: str | Path | None, *, input_size: int = 224, num_classes: int | None = None,
                 train_size: int | None = None, test_size: int | None = None):
        root = require_dir(data_dir, "imagenet", "train/<class>/ and val/<class>/ image folders")
        train, val = _scan(root / "train"), _scan(root / "val")
        if train.classes != val.classes:
            missing = sorted(set(train.classes) ^ set(val.classes))
            raise ValueError(f"imagenet: class folders of {root / 'train'} and {root / 'val'} differ "
                             f"(e.g. {missing[:5]}); both must hold the same class names")
        if num_classes is not None and num_classes != len(train.classes):
            raise ValueError(f"imagenet: {root / 'train'} holds {len(train.classes)} classes, "
                             f"but num_classes={num_classes} was requested")
        if not isinstance(input_size, int) or input_size < 8:
            raise ValueError(f"imagenet: input_size must be an integer >= 8, got {input_size!r}")
        self.loader = train.loader
        self.train_samples = [train.samples[i] for i in evenly_spaced(len(train.samples), train_size,
                                                                      "train_size").tolist()]
        self.test_samples = [val.samples[i] for i in evenly_spaced(len(val.samples), test_size,
                                                                   "test_size").tolist()]
        self.classes = list(train.classes)
        self.train_transform = T.Compose([T.RandomResizedCrop(input_size, antialias=True),
                                          T.RandomHorizontalFlip()])
        self.test_transform = T.Compose([T.Resize(round(input_size * 256 / 224), antialias=True),
                                         T.CenterCrop(input_size)])
        super().__init__(name="imagenet", num_classes=len(train.classes), input_size=input_size,
                         mean=IMAGENET_MEAN, std=IMAGENET_STD, train_size=len(self.train_samples),
                         test_size=len(self.test_samples), default_batch_size=256, default_lr=0.1)

    def check_images(self, threads: int | None = None) -> None:
        """Decode every training and test image once, before training: a bad file is named now, not mid-run.

        JPEGs decode in draft mode (1/8 scale): libjpeg still reads every byte, so truncated and corrupt files
        fail, at a fraction of a full decode's cost. Threads overlap the reads (PIL releases the GIL)."""
        paths = sorted({path for path, _ in self.train_samples + self.test_samples})
        if len(paths) > 20000:
            print(f"imagenet: checking that {len(paths)} images decode (once, before training)")
        with ThreadPoolExecutor(max_workers=threads or min(32, os.cpu_count() or 1)) as pool:
            for path, problem in zip(paths, pool.map(_decode_problem, paths), strict=True):
                if problem is not None:
                    raise ImageDecodeError(f"imagenet: cannot decode image {path} ({problem}); remove or replace "
                                           "the file")

    def _decode(self, path: str) -> torch.Tensor:
        try:
            return F.pil_to_tensor(self.loader(path))
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise ImageDecodeError(f"imagenet: cannot decode image {path} ({err}); remove or replace the file") \
                from err

    def _train_examples(self, indices: torch.Tensor, seed: int, epoch: int, step: int,
                        batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for offset, index in enumerate(indices.tolist()):
            path, label = self.train_samples[index]
            image = self._decode(path)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(seed, SAMPLE_STREAM, epoch, step * batch_size + offset))
                images.append(self.train_transform(image))
            labels.append(label)
        return normalise(torch.stack(images), self.mean, self.std), torch.tensor(labels, dtype=torch.int64)

    def _test_examples(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        samples = self.test_samples[start:stop]
        images = torch.stack([self.test_transform(self._decode(path)) for path, _ in samples])
        labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
        return normalise(images, self.mean, self.std), labels
