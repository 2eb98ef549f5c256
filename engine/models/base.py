"""A primary network as an ordered list of local layers plus a classifier head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LayerInfo:
    """What the auxiliary-network builders need to know about one local layer.

    `width` is the paper's "net_dim" entry (ResNet "planes"); the channel rule of AugLocal works on it.
    `out_channels` is what the layer actually emits (4 x planes for a Bottleneck). `spatial` is the output
    height (= width) for the model's configured input size. `kind` is the letter used in the paper's
    notation of aux nets ("R" residual block, "B" bottleneck, "C" conv-BN-ReLU, "M" mobile block). `layout` says
    what the layer emits per sample: "map" (C, H, W), or for a stack of blocks (engine/models/stack.py) also
    "tokens" (N, D: width = D, spatial = N) or "vector" (D,); the baselines' aux nets depend on it.
    """

    index: int
    width: int
    out_channels: int
    spatial: int
    kind: str
    layout: str = "map"


class LayeredModel(nn.Module):
    """Primary network = `layers[0] -> ... -> layers[L-1] -> head`.

    Every learning rule cuts the network at layer boundaries, so the layers are kept as a plain ModuleList
    and the head as its own module. Subclasses also know how to build *fresh* copies of a layer's
    architecture with other channel counts and strides (`aux_block`) and a fresh copy of the classifier
    (`aux_head`); that is all the AugLocal builder needs. `state_dict()` of the bare model is the saved
    primary network.
    """

    #: 'cifar_resnet' | 'imagenet_resnet' | 'vgg' | 'mobile'
    family: str = ""
    #: default local-layer convention of docs/method.md section 2: 'cifar' (top d layers global) or 'imagenet'
    convention: str = "cifar"
    #: how an aux net halves the spatial size: 'stride' (stride-2 block) or 'maxpool' (VGG)
    aux_downsample: str = "stride"
    #: True: AugLocal aux nets are fresh copies of the model's own blocks (`copy_aux`), not `aux_block` rebuilds
    builds_aux_by_copy: bool = False

    def __init__(self, layers: list[nn.Module], head: nn.Module, info: list[LayerInfo],
                 num_classes: int, input_size: int, name: str):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.head = head
        self.info = list(info)
        self.num_classes = num_classes
        self.input_size = input_size
        self.name = name

    @property
    def num_layers(self) -> int:
        """L, the number of local layers (the stem counts as layer 0)."""
        return len(self.layers)

    @property
    def widths(self) -> list[int]:
        return [i.width for i in self.info]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.head(x)

    # --- hooks for auxiliary-network builders -------------------------------------------------------------
    def aux_block(self, j: int, in_channels: int, stride: int) -> nn.Module:
        """A freshly initialised block with the architecture of layer j, taking `in_channels` inputs."""
        raise NotImplementedError

    def aux_block_out_channels(self, j: int) -> int:
        """Channels emitted by `aux_block(j, ...)`."""
        return self.info[j].out_channels

    def aux_head(self, in_channels: int, k: int) -> nn.Module:
        """A freshly initialised copy of the classifier head for an aux net with k selected layers."""
        raise NotImplementedError

    def init_aux(self, module: nn.Module) -> None:
        """Apply the family's weight init to an aux net (the paper's code inits aux convs like the primary)."""
