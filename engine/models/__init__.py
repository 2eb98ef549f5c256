"""Primary networks cut into local layers, and the registry that builds them by name."""

from __future__ import annotations

from collections.abc import Callable

from engine.models.base import LayeredModel, LayerInfo
from engine.models.cifar_resnet import CIFAR_DEPTHS, CifarResNet

_BUILDERS: dict[str, Callable[[int, int], LayeredModel]] = {
    f"resnet{depth}": (lambda nc, size, depth=depth: CifarResNet(depth, nc, size)) for depth in CIFAR_DEPTHS
}


def register(name: str, builder: Callable[[int, int], LayeredModel]) -> None:
    """Make `build_model(name, ...)` call `builder(num_classes, input_size)`."""
    _BUILDERS[name] = builder


def model_names() -> list[str]:
    return sorted(_BUILDERS)


def build_model(name: str, num_classes: int = 10, input_size: int = 32) -> LayeredModel:
    """Build a primary network by name; unknown names raise ValueError listing the known ones."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(model_names())}")
    return _BUILDERS[name](num_classes, input_size)


__all__ = ["LayeredModel", "LayerInfo", "build_model", "model_names", "register"]

# --- VGG and torchvision-derived networks (imported last: they import the modules above) --------------------
from engine.models.torchvision_cuts import (  # noqa: E402
    EfficientNetB0Cut,
    ImageNetResNet,
    MobileNetV2Cut,
    RegNetX400MFCut,
)
from engine.models.vgg import Vgg13, Vgg19  # noqa: E402

register("vgg19", lambda num_classes, input_size: Vgg19(num_classes, input_size))
register("vgg13", lambda num_classes, input_size: Vgg13(num_classes, input_size))
register("resnet34", lambda num_classes, input_size: ImageNetResNet("resnet34", num_classes, input_size))
register("resnet101", lambda num_classes, input_size: ImageNetResNet("resnet101", num_classes, input_size))
register("mobilenetv2", lambda num_classes, input_size: MobileNetV2Cut(num_classes, input_size))
register("efficientnet_b0", lambda num_classes, input_size: EfficientNetB0Cut(num_classes, input_size))
register("regnetx_400mf", lambda num_classes, input_size: RegNetX400MFCut(num_classes, input_size))
