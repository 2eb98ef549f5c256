"""engine/data/augment.py restates torchvision's tensor kernels in plain torch (importing torchvision costs the
coordinator seconds per run): the pixels must stay bitwise those torchvision computes, for every shape, dtype,
padding mode and random draw the data sets use, and then some."""

import pytest
import torch
import torchvision.transforms.v2.functional as F
from auglocal.engine.data.augment import CropFlip, normalise, pad

SHAPES = [(1, 3, 8, 8), (5, 3, 16, 16), (7, 3, 28, 28), (4, 3, 32, 32), (3, 1, 9, 13)]


def torchvision_crop_flip(aug: CropFlip, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """CropFlip as it was written over torchvision.transforms.v2.functional (the same draws, then its ops)."""
    n, _, height, width = images.shape
    tops = torch.randint(0, 2 * aug.pad + 1, (n,), generator=generator).tolist()
    lefts = torch.randint(0, 2 * aug.pad + 1, (n,), generator=generator).tolist()
    flips = torch.rand(n, generator=generator) < 0.5
    padded = F.pad(images, [aug.pad], padding_mode=aug.padding_mode) if aug.pad else images
    out = torch.stack([F.crop(padded[i], tops[i], lefts[i], height, width) for i in range(n)])
    if aug.flip and bool(flips.any()):
        out[flips] = F.horizontal_flip(out[flips])
    return out


def images_of(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        return (torch.rand(shape, generator=g, dtype=torch.float64) * 255).to(dtype)
    high = min(torch.iinfo(dtype).max, 1 << 20) + 1
    return torch.randint(0, high, shape, generator=g, dtype=torch.int64).to(dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("pad_px, mode, flip", [(1, "constant", False), (2, "constant", True), (4, "reflect", True),
                                                (2, "reflect", False), (0, "constant", True)])
def test_crop_flip_equals_torchvision_bitwise(shape, pad_px, mode, flip):
    aug = CropFlip(pad_px, mode, flip=flip)
    images = images_of(shape, torch.uint8, seed=sum(shape) + pad_px)
    for step in range(3):
        ours = aug(images, torch.Generator().manual_seed(step))
        theirs = torchvision_crop_flip(aug, images, torch.Generator().manual_seed(step))
        assert ours.dtype == theirs.dtype == torch.uint8 and ours.shape == theirs.shape == images.shape
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["constant", "reflect"])
@pytest.mark.parametrize("shape", [(3, 5, 6), (2, 3, 8, 8), (2, 2, 3, 4, 4)])
def test_pad_equals_torchvision_bitwise(dtype, mode, shape):
    images = images_of(shape, dtype, seed=len(shape))
    ours, theirs = pad(images, 2, mode), F.pad(images, [2], padding_mode=mode)
    assert ours.dtype == theirs.dtype == dtype and torch.equal(ours, theirs)


def test_pad_names_the_modes_it_has():
    with pytest.raises(ValueError, match="padding_mode must be 'constant' or 'reflect'"):
        pad(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), 1, "edge")


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.float16, torch.float32,
                                   torch.float64])
@pytest.mark.parametrize("shape", [(3, 7, 7), (1, 3, 8, 8), (6, 3, 16, 16), (4, 3, 28, 28), (2, 3, 224, 224),
                                   (2, 1, 5, 9)])
def test_normalise_equals_torchvision_bitwise(dtype, shape):
    channels = shape[-3]
    mean = (0.4914, 0.4822, 0.4465)[:channels] if channels == 3 else (0.1307,)
    std = (0.2470, 0.2435, 0.2616)[:channels] if channels == 3 else (0.3081,)
    images = images_of(shape, dtype, seed=shape[-1])
    before = images.clone()
    ours = normalise(images, mean, std)
    theirs = F.normalize(F.to_dtype(images, torch.float32, scale=True), list(mean), list(std))
    assert ours.dtype == theirs.dtype == torch.float32 and ours.shape == theirs.shape
    assert torch.equal(ours, theirs)
    assert torch.equal(images, before)        # the caller's batch is never changed, float32 ones included


def test_normalise_with_data_derived_statistics_equals_torchvision_bitwise():
    from auglocal.engine.data.augment import channel_stats
    images = images_of((16, 3, 12, 12), torch.uint8, seed=3)
    mean, std = channel_stats(images)
    theirs = F.normalize(F.to_dtype(images, torch.float32, scale=True), list(mean), list(std))
    assert torch.equal(normalise(images, mean, std), theirs)


def test_normalise_refuses_a_zero_std_as_torchvision_does():
    images = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="std evaluated to zero"):
        normalise(images, (0.5, 0.5, 0.5), (0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="std evaluated to zero"):
        F.normalize(F.to_dtype(images, torch.float32, scale=True), [0.5] * 3, [0.2, 0.0, 0.2])


def test_augmenting_and_normalising_a_batch_imports_no_torchvision():
    """The point of the restatement: a fresh process that builds a training batch never imports torchvision."""
    import subprocess
    import sys
    code = ("import sys; from auglocal.engine.data.synthetic import make_synthetic; "
            "d = make_synthetic(seed=1, input_size=16, num_classes=4, train_size=16, test_size=8); "
            "x, y = d.train_batch(0, 0, 0, 8); d.test_batch(0, 8); "
            "print(tuple(x.shape), 'torchvision' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["(8,", "3,", "16,", "16)", "False"]
