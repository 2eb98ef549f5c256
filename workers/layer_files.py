"""Per-layer state files, keyed by global layer index, so any partition can write them and any can read them.

A file holds one primary layer's weights, its aux net (if the layer has one), the SGD momentum buffers of
both, how many minibatches the layer has applied and the last one it applied. The classifier head has its
own file. Checkpoints and the final result use the same format; a checkpoint is a folder of such files plus a
manifest that the coordinator writes once every worker has acknowledged (see launch/checkpoints.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from engine.atomic import atomic_torch_save
from engine.stage import Stage


def layer_file(directory: str | Path, layer: int) -> Path:
    return Path(directory) / f"layer_{layer:03d}.pt"


def head_file(directory: str | Path) -> Path:
    return Path(directory) / "head.pt"


def _momentum(stage: Stage, module: nn.Module | None) -> list[torch.Tensor | None]:
    if module is None:
        return []
    return [stage.optimizer.state.get(p, {}).get("momentum_buffer") for p in module.parameters()]


def _set_momentum(stage: Stage, module: nn.Module | None, buffers: list[torch.Tensor | None]) -> None:
    if module is None:
        return
    params = list(module.parameters())
    if len(params) != len(buffers):
        raise ValueError(f"checkpoint holds {len(buffers)} momentum buffers for {len(params)} parameters")
    for p, buf in zip(params, buffers, strict=True):
        if buf is not None:
            stage.optimizer.state[p]["momentum_buffer"] = buf.to(p.device).clone()


def save_stage_layers(stage: Stage, directory: str | Path,
                      before_each: Callable[[int], None] | None = None) -> None:
    """Write one file per layer of the stage (and the head file if the stage holds it), each atomically.

    `before_each(layer_id)` runs before each file is written (fault injection kills a worker mid-write).
    """
    for module in stage.modules:
        for j, (layer_id, layer) in enumerate(zip(module.layer_ids, module.layers, strict=True)):
            if before_each is not None:
                before_each(layer_id)
            aux = module.aux if j == 0 else None
            atomic_torch_save({
                "layer": layer.state_dict(), "layer_momentum": _momentum(stage, layer),
                "aux": aux.state_dict() if aux is not None else None, "aux_momentum": _momentum(stage, aux),
                "updates": stage.update_counts[layer_id], "last_applied": list(stage.last_applied or (-1, -1)),
            }, layer_file(directory, layer_id))
        if module.head is not None:
            atomic_torch_save({"head": module.head.state_dict(), "head_momentum": _momentum(stage, module.head)},
                              head_file(directory))


def load_stage_layers(stage: Stage, directory: str | Path) -> None:
    """Restore weights, momentum, update counters and the last applied minibatch into a freshly built stage."""
    last = set()
    for module in stage.modules:
        for j, (layer_id, layer) in enumerate(zip(module.layer_ids, module.layers, strict=True)):
            state = torch.load(layer_file(directory, layer_id), weights_only=True, map_location=stage.device)
            layer.load_state_dict(state["layer"])
            _set_momentum(stage, layer, state["layer_momentum"])
            if j == 0 and module.aux is not None:
                module.aux.load_state_dict(state["aux"])
                _set_momentum(stage, module.aux, state["aux_momentum"])
            stage.update_counts[layer_id] = int(state["updates"])
            last.add(tuple(state["last_applied"]))
        if module.head is not None:
            state = torch.load(head_file(directory), weights_only=True, map_location=stage.device)
            module.head.load_state_dict(state["head"])
            _set_momentum(stage, module.head, state["head_momentum"])
    if len(last) != 1:
        raise ValueError(f"layers in {directory} stopped at different minibatches {sorted(last)}: not a consistent cut")
    position = last.pop()
    stage.last_applied = None if position == (-1, -1) else position


def load_layers_into(model, aux_nets, directory: str | Path) -> dict[int, int]:
    """Load every per-layer file into a freshly built model and aux nets; returns layer -> update count."""
    updates = {}
    for i, layer in enumerate(model.layers):
        state = torch.load(layer_file(directory, i), weights_only=True)
        layer.load_state_dict(state["layer"])
        if i < len(aux_nets):
            aux_nets[i].load_state_dict(state["aux"])
        updates[i] = int(state["updates"])
    model.head.load_state_dict(torch.load(head_file(directory), weights_only=True)["head"])
    return updates
