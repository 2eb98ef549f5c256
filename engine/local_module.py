"""The local module: consecutive primary layers and the one loss that trains them, built from a rule's aux nets
(docs/method.md 2, 4.1); the learning rules themselves are the registry in engine/auxnets/registry.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from auglocal.engine.models.base import LayeredModel
from torch import nn


class LocalModule(nn.Module):
    """Consecutive primary layers trained by one loss: their own aux net's, or (top module) the global CE.

    The layers are the *same* module objects as in the primary network, so training a local module trains
    the model; nothing is copied. Only the top module holds the classifier head.
    """

    def __init__(self, layer_ids: list[int], layers: list[nn.Module], aux: nn.Module | None = None,
                 head: nn.Module | None = None):
        super().__init__()
        if (aux is None) == (head is None):
            raise ValueError("a local module has exactly one of an aux net (hidden layer) or the head (top)")
        self.layer_ids = list(layer_ids)
        self.layers = nn.ModuleList(layers)
        self.aux = aux
        self.head = head

    @property
    def is_top(self) -> bool:
        return self.head is not None

    @property
    def needs_input(self) -> bool:
        return bool(getattr(self.aux, "needs_input", False))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Primary forward only: the aux net is never part of the primary path."""
        for layer in self.layers:
            h = layer(h)
        if self.head is not None:
            h = self.head(h)
        return h

    def loss(self, out: torch.Tensor, y: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Local loss of a hidden module, or the global cross-entropy on the logits of the top module."""
        if self.aux is not None:
            return self.aux(out, y, x)
        return F.cross_entropy(out, y)


def build_local_modules(model: LayeredModel, aux_nets: list[nn.Module]) -> list[LocalModule]:
    """Layer i < n = len(aux_nets) becomes its own module with aux net i; layers n..L-1 + head form the top.

    With no aux nets (BP) the whole network is one top module trained end to end.
    """
    n = len(aux_nets)
    if n >= model.num_layers:
        raise ValueError(f"{n} aux nets for {model.num_layers} layers: at least the last layer must be global")
    for i, aux in enumerate(aux_nets):
        attached = getattr(aux, "layer", i)
        if attached != i:
            raise ValueError(f"aux net {i} is attached to layer {attached}; expected layer {i}")
    modules = [LocalModule([i], [model.layers[i]], aux=aux) for i, aux in enumerate(aux_nets)]
    top_ids = list(range(n, model.num_layers))
    modules.append(LocalModule(top_ids, [model.layers[i] for i in top_ids], head=model.head))
    return modules
