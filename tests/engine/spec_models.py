"""Model functions the model-spec tests name by import path ("tests.engine.spec_models:<function>")."""

from __future__ import annotations

from auglocal.engine.models import build_model
from torch import nn

CALLS: list[dict] = []


def tiny_resnet(num_classes: int = 10, input_size: int = 32):
    """A registered network returned as is (a LayeredModel), recording what it was called with."""
    CALLS.append({"num_classes": num_classes, "input_size": input_size})
    return build_model("resnet20", num_classes, input_size)


def no_arguments():
    """Zero-argument model functions are fine: the engine passes only what a function accepts."""
    return build_model("resnet20", 10, 32)


def only_classes(num_classes):
    CALLS.append({"num_classes": num_classes})
    return build_model("resnet20", num_classes, 32)


def small_cnn(num_classes: int = 10):
    """(blocks, head): conv stem and two same-width blocks, pooled linear head."""
    blocks = [nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
              nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
              nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())]
    return blocks, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


def not_a_model():
    return 42


NOT_CALLABLE = 3
