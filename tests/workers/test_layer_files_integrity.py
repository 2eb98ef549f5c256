"""Layer files prove what they hold and load onto the reader's device: a file a GPU worker wrote loads onto the
coordinator's CPU, and a damaged, cut-short, missing or unsealed file is one LayerFileDamaged line."""

import pytest
import torch
import torch.serialization
from auglocal.engine.config import build_network
from auglocal.workers.runtime.layer_files import (
    DIGEST,
    LayerFileDamaged,
    head_file,
    layer_file,
    load_layers_into,
    load_stage_layers,
    read_layer_file,
    save_stage_layers,
)

from tests.workers.test_layer_files import CFG, stages, train_one_step


def saved(tmp_path):
    (stage,) = stages([])
    train_one_step([stage])
    save_stage_layers(stage, tmp_path)
    return stage


def test_files_saved_from_a_gpu_load_onto_the_cpu(tmp_path, monkeypatch):
    """Storages tagged cuda:0, as a GPU worker's are: the coordinator loads them onto the CPU (without
    map_location torch would put them on its GPU, or fail where it has none)."""
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    stage = saved(tmp_path)
    monkeypatch.undo()
    model, aux = build_network(CFG)
    updates = load_layers_into(model, aux, tmp_path)
    assert set(updates.values()) == {1}
    assert all(p.device.type == "cpu" for p in [*model.parameters(), *model.buffers()])
    for p_loaded, p_saved in zip(model.layers.parameters(), [p for m in stage.modules for p in m.layers.parameters()],
                                 strict=True):
        assert torch.equal(p_loaded, p_saved)


def test_a_changed_tensor_fails_the_checksum(tmp_path):
    saved(tmp_path)
    path = layer_file(tmp_path, 2)
    state = torch.load(path, weights_only=True)
    name = next(iter(state["layer"]))
    state["layer"][name] = state["layer"][name] + 1e-7        # the digest stays the one written
    torch.save(state, path)
    model, aux = build_network(CFG)
    with pytest.raises(LayerFileDamaged, match=r"layer_002\.pt fails its SHA-256 checksum \(damaged\)"):
        load_layers_into(model, aux, tmp_path)
    (fresh,) = stages([])
    with pytest.raises(LayerFileDamaged, match="layer_002.pt fails"):
        load_stage_layers(fresh, tmp_path)


@pytest.mark.parametrize("damage, words", [
    (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "cannot be read (damaged or cut short)"),
    (lambda p: p.unlink(), "is missing"),
    (lambda p: torch.save({k: v for k, v in torch.load(p, weights_only=True).items() if k != DIGEST}, p),
     "carries no checksum"),
])
def test_damage_is_one_line_naming_the_file(damage, words, tmp_path):
    saved(tmp_path)
    damage(head_file(tmp_path))
    with pytest.raises(LayerFileDamaged) as info:
        read_layer_file(head_file(tmp_path))
    line = str(info.value)
    assert "\n" not in line and str(head_file(tmp_path)) in line and words in line, line
