"""Primary networks cut into local layers, and the registry that builds them by name."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

from auglocal.engine.models.base import LayeredModel, LayerInfo
from auglocal.engine.models.cifar_resnet import CIFAR_DEPTHS, CifarResNet
from auglocal.engine.models.imports import build_from_spec, is_spec, model_spec_of, resolve_spec

_BUILDERS: dict[str, Callable[[int, int], LayeredModel]] = {
    f"resnet{depth}": (lambda nc, size, depth=depth: CifarResNet(depth, nc, size)) for depth in CIFAR_DEPTHS
}


def register(name: str, builder: Callable[[int, int], LayeredModel]) -> None:
    """Make `build_model(name, ...)` call `builder(num_classes, input_size)`."""
    _BUILDERS[name] = builder


def model_names() -> list[str]:
    return sorted(_BUILDERS)


def build_model(name: str, num_classes: int = 10, input_size: int = 32) -> LayeredModel:
    """Build a primary network by registered name or by model spec ("package.module:function",
    "path/file.py:function": engine/models/imports.py); unknown names raise ValueError listing the known ones."""
    if is_spec(name):
        return build_from_spec(name, num_classes, input_size)
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(model_names())}")
    return _BUILDERS[name](num_classes, input_size)


__all__ = ["LayeredModel", "LayerInfo", "build_model", "is_spec", "model_names", "model_spec_of", "register",
           "resolve_spec"]

# --- VGG and torchvision-derived networks: built from torchvision's definitions, imported on first use -----------
# (importing torchvision costs seconds, and a dry run or a CIFAR ResNet run does not need it)


def _lazy(module: str, name: str, *args) -> Callable[[int, int], LayeredModel]:
    """A builder that imports `auglocal.engine.models.<module>` (and so torchvision) only when a network is built."""
    def build(num_classes: int, input_size: int) -> LayeredModel:
        return getattr(import_module(f"auglocal.engine.models.{module}"), name)(*args, num_classes, input_size)
    return build


register("vgg19", _lazy("vgg", "Vgg19"))
register("vgg13", _lazy("vgg", "Vgg13"))
register("resnet34", _lazy("torchvision_cuts", "ImageNetResNet", "resnet34"))
register("resnet101", _lazy("torchvision_cuts", "ImageNetResNet", "resnet101"))
register("mobilenetv2", _lazy("torchvision_cuts", "MobileNetV2Cut"))
register("efficientnet_b0", _lazy("torchvision_cuts", "EfficientNetB0Cut"))
register("regnetx_400mf", _lazy("torchvision_cuts", "RegNetX400MFCut"))
for _vit in ("vit_tiny", "vit_b_16", "vit_b_32", "vit_l_16"):
    register(_vit, _lazy("vit", "build_vit", _vit))
