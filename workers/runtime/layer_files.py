"""Per-layer state files, keyed by global layer index, so any partition can write them and any can read them.

A file holds one primary layer's weights, its aux net (if the layer has one), the optimizer's per-parameter
state of both (SGD's momentum buffer; AdamW's step and moment estimates: whatever `optimizer.state[p]` holds,
so a new optimizer needs no new format), how many minibatches the layer has applied and the last one it
applied. The classifier head has its own file. Checkpoints and the final result use the same format; a
checkpoint is a folder of such files plus a manifest that the coordinator writes once every worker has
acknowledged (see launch/run/checkpoints.py).

Each file proves what it holds: it carries a SHA-256 of every tensor in it (name, dtype, shape and bytes;
the update counter and last minibatch are checked by type and by the consistent-cut rule instead), and a file
that cannot be read, lacks the digest or does not match it raises `LayerFileDamaged`, one line naming the file.
Checkpoint files are verified before any worker loads them (the manifest's checksums); this covers the final
`layers/` the coordinator assembles the network from, which has no manifest. Files are always loaded onto the
reader's device (the coordinator: the CPU), never onto the device a worker saved them from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
from auglocal.engine.atomic import atomic_torch_save
from auglocal.engine.stage import Stage
from torch import nn


def layer_file(directory: str | Path, layer: int) -> Path:
    return Path(directory) / f"layer_{layer:03d}.pt"


def head_file(directory: str | Path) -> Path:
    return Path(directory) / "head.pt"


DIGEST = "sha256"
_UNHASHED = (DIGEST, "updates", "last_applied")


class LayerFileDamaged(ValueError):
    """A layer file that cannot be read, or whose content does not match its digest."""


def _feed(h, name: str, value) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        h.update(f"{name}:dict{len(value)}\n".encode())
        for key in sorted(value, key=str):
            _feed(h, f"{name}.{key}", value[key])
    elif isinstance(value, (list, tuple)):
        h.update(f"{name}:list{len(value)}\n".encode())
        for i, item in enumerate(value):
            _feed(h, f"{name}.{i}", item)
    else:
        h.update(f"{name}:{value!r}\n".encode())


def digest(state: dict) -> str:
    """SHA-256 of a layer file's content except its counters (see the module docstring)."""
    h = hashlib.sha256()
    for key in sorted(k for k in state if k not in _UNHASHED):
        _feed(h, key, state[key])
    return h.hexdigest()


def _save(state: dict, path: Path) -> None:
    atomic_torch_save({**state, DIGEST: digest(state)}, path)


def read_layer_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A layer or head file's content, loaded onto `map_location`, after its digest matched; LayerFileDamaged
    (one line naming the file) otherwise."""
    try:
        state = torch.load(path, weights_only=True, map_location=map_location)
    except FileNotFoundError:
        raise LayerFileDamaged(f"{path} is missing") from None
    except OSError as err:
        raise LayerFileDamaged(f"{path} cannot be read: {err.strerror or err}") from None
    except Exception as err:     # what torch.load raises on a damaged file varies: zip, pickle, storage errors
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise LayerFileDamaged(f"{path} cannot be read (damaged or cut short): {first}") from None
    if not isinstance(state, dict) or not isinstance(state.get(DIGEST), str):
        raise LayerFileDamaged(f"{path} carries no checksum (damaged, or not written by this auglocal)")
    if digest(state) != state[DIGEST]:
        raise LayerFileDamaged(f"{path} fails its SHA-256 checksum (damaged)")
    return state


def _optim_state(stage: Stage, module: nn.Module | None) -> list[dict[str, torch.Tensor]]:
    """Per parameter of `module`, in order, the optimizer's state (empty before its first update)."""
    if module is None:
        return []
    return [dict(stage.optimizer.state.get(p, {})) for p in module.parameters()]


def _set_optim_state(stage: Stage, module: nn.Module | None, states: list) -> None:
    if module is None:
        return
    params = list(module.parameters())
    if len(params) != len(states):
        raise ValueError(f"checkpoint holds optimizer state for {len(states)} parameters, the module has {len(params)}")
    for p, state in zip(params, states, strict=True):
        if isinstance(state, torch.Tensor):      # a file from before the optimizer choice: SGD's momentum buffer
            state = {"momentum_buffer": state}
        if state:      # None or {}: the parameter had no update yet
            # AdamW's step count stays on the CPU, where torch keeps it (not capturable, not fused)
            stage.optimizer.state[p] = {k: v.to("cpu" if k == "step" else p.device).clone()
                                        if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def _saved_state(state: dict, name: str) -> list:
    """The per-parameter optimizer state of `name` (layer, aux, head); `<name>_momentum` in older files."""
    return state[f"{name}_optim"] if f"{name}_optim" in state else state[f"{name}_momentum"]


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
            _save({
                "layer": layer.state_dict(), "layer_optim": _optim_state(stage, layer),
                "aux": aux.state_dict() if aux is not None else None, "aux_optim": _optim_state(stage, aux),
                "updates": stage.update_counts[layer_id], "last_applied": list(stage.last_applied or (-1, -1)),
            }, layer_file(directory, layer_id))
        if module.head is not None:
            _save({"head": module.head.state_dict(), "head_optim": _optim_state(stage, module.head)},
                  head_file(directory))


def load_stage_layers(stage: Stage, directory: str | Path) -> None:
    """Restore weights, optimizer state, update counters and the last applied minibatch into a freshly built stage."""
    last = set()
    for module in stage.modules:
        for j, (layer_id, layer) in enumerate(zip(module.layer_ids, module.layers, strict=True)):
            state = read_layer_file(layer_file(directory, layer_id), stage.device)
            layer.load_state_dict(state["layer"])
            _set_optim_state(stage, layer, _saved_state(state, "layer"))
            if j == 0 and module.aux is not None:
                module.aux.load_state_dict(state["aux"])
                _set_optim_state(stage, module.aux, _saved_state(state, "aux"))
            stage.update_counts[layer_id] = int(state["updates"])
            last.add(tuple(state["last_applied"]))
        if module.head is not None:
            state = read_layer_file(head_file(directory), stage.device)
            module.head.load_state_dict(state["head"])
            _set_optim_state(stage, module.head, _saved_state(state, "head"))
    if len(last) != 1:
        raise ValueError(f"layers in {directory} stopped at different minibatches {sorted(last)}: not a consistent cut")
    position = last.pop()
    stage.last_applied = None if position == (-1, -1) else position


def load_layers_into(model, aux_nets, directory: str | Path) -> dict[int, int]:
    """Load every per-layer file into a freshly built model and aux nets (on the CPU, whatever device wrote
    them: the coordinator must not take a GPU for this); returns layer -> update count."""
    updates = {}
    for i, layer in enumerate(model.layers):
        state = read_layer_file(layer_file(directory, i), "cpu")
        layer.load_state_dict(state["layer"])
        if i < len(aux_nets):
            aux_nets[i].load_state_dict(state["aux"])
        updates[i] = int(state["updates"])
    model.head.load_state_dict(read_layer_file(head_file(directory), "cpu")["head"])
    return updates
