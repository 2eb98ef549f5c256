"""Per-layer state files, keyed by global layer index, so any partition can write and any can read them."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.atomic import atomic_torch_save
from engine.stage import Stage


def layer_file(out_dir: str | Path, layer: int) -> Path:
    return Path(out_dir) / "layers" / f"layer_{layer:03d}.pt"


def head_file(out_dir: str | Path) -> Path:
    return Path(out_dir) / "layers" / "head.pt"


def save_stage_layers(stage: Stage, out_dir: str | Path) -> None:
    """One file per primary layer: its weights, its aux net (if any) and how many updates it has applied."""
    for module in stage.modules:
        for j, (layer_id, layer) in enumerate(zip(module.layer_ids, module.layers, strict=True)):
            aux = module.aux if (module.aux is not None and j == 0) else None
            atomic_torch_save({"layer": layer.state_dict(),
                               "aux": aux.state_dict() if aux is not None else None,
                               "updates": stage.update_counts[layer_id]}, layer_file(out_dir, layer_id))
        if module.head is not None:
            atomic_torch_save({"head": module.head.state_dict()}, head_file(out_dir))


def load_layers_into(model, aux_nets, out_dir: str | Path) -> dict[int, int]:
    """Load every per-layer file into a freshly built model and aux nets; returns layer -> update count."""
    updates = {}
    for i, layer in enumerate(model.layers):
        state = torch.load(layer_file(out_dir, i), weights_only=True)
        layer.load_state_dict(state["layer"])
        if i < len(aux_nets):
            aux_nets[i].load_state_dict(state["aux"])
        updates[i] = int(state["updates"])
    model.head.load_state_dict(torch.load(head_file(out_dir), weights_only=True)["head"])
    return updates
