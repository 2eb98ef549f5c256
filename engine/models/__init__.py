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
