"""Animal-MNIST read from the animal-mnist package: the file, the split, padding, augmentation, safety."""

from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest
import torch
from auglocal.engine.data.animal_mnist import (
    CLASSES,
    TEST_SIZE,
    animal_arrays,
    distinct,
    load_animal_mnist,
    read_array,
)


@pytest.fixture(scope="module")
def source():
    return load_animal_mnist()


def test_package_file_holds_10000_images_in_10_classes():
    pixels, labels = animal_arrays()
    assert pixels.shape == (10000, 28, 28) and pixels.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10 and len(CLASSES) == 10
    assert 0 < pixels.mean() < 255


def test_duplicates_are_dropped_so_no_test_image_is_a_training_image(source):
    pixels, _ = animal_arrays()
    keep = distinct(pixels)
    assert len(keep) < 10000 and len(np.unique(pixels[keep].reshape(len(keep), -1), axis=0)) == len(keep)
    train = {bytes(x) for x in source.train_images.numpy()}
    assert not any(bytes(x) in train for x in source.test_images.numpy())
    assert source.train_size + source.test_size == len(keep)


def test_split_is_fixed_and_stratified(source):
    assert source.test_size == TEST_SIZE and source.num_classes == 10
    again = load_animal_mnist()
    assert torch.equal(again.test_images, source.test_images)
    assert torch.equal(again.train_labels, source.train_labels)
    train_share = torch.bincount(source.train_labels, minlength=10) / source.train_size
    test_share = torch.bincount(source.test_labels, minlength=10) / source.test_size
    assert torch.allclose(train_share, test_share, atol=0.005)


def test_images_are_padded_rgb_and_normalised_with_training_stats(source):
    assert source.train_images.shape[1:] == (3, 32, 32) and source.input_size == 32
    assert torch.equal(source.train_images[:, 0], source.train_images[:, 2])
    assert int(source.train_images[:, :, :2].max()) == 0 and int(source.train_images[:, :, :, -2:].max()) == 0
    x, _ = source.test_batch(0, 500)
    assert x.dtype == torch.float32 and x.shape == (500, 3, 32, 32)
    train = source.train_images.double() / 255.0
    assert source.mean[0] == pytest.approx(float(train.mean()))
    assert source.std[0] == pytest.approx(float(train.std(unbiased=False)))
    assert (source.default_batch_size, source.default_lr) == (128, 0.1)


def test_training_batches_are_flipped_and_shifted_crops(source):
    """Each augmented image is a (possibly mirrored) window of its zero-padded original; both kinds occur."""
    batch, labels = source.train_batch(seed=3, epoch=0, step=0, batch_size=64)
    originals = source.train_images[source.train_indices(3, 0, 0, 64)]
    assert torch.equal(labels, source.train_labels[source.train_indices(3, 0, 0, 64)])
    pixels = torch.round((batch[:, :1] * source.std[0] + source.mean[0]) * 255).to(torch.uint8)
    padded = torch.nn.functional.pad(originals[:, :1], (2, 2, 2, 2))
    seen = set()
    for out, pad in zip(pixels, padded, strict=True):
        matches = {(t, l_, f) for t in range(5) for l_ in range(5) for f in (False, True)
                   if torch.equal((pad.flip(-1) if f else pad)[:, t:t + 32, l_:l_ + 32], out)}
        assert matches, "augmented image is not a crop of its padded original"
        flips = {f for *_, f in matches}
        if len(flips) == 1:  # a mirror-symmetric image would match both ways
            seen |= flips
    assert seen == {False, True}  # silhouettes are flip-invariant, so flips are part of the augmentation
    assert torch.equal(batch, source.train_batch(seed=3, epoch=0, step=0, batch_size=64)[0])


def test_reader_refuses_anything_but_numpy_arrays():
    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        read_array(gzip.compress(pickle.dumps(Exploit())))
    with pytest.raises(pickle.UnpicklingError, match="expected a numpy array"):
        read_array(gzip.compress(pickle.dumps([1, 2, 3])))
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(read_array(gzip.compress(pickle.dumps(array))), array)
