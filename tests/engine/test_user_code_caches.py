"""The MAC and timing caches outlive a process; a user who edits their network's code must not get the old
network's counts or times back (the caches key blocks by class and repr, networks by spec: neither changes)."""

import sys

from auglocal.engine.auxnets import build_aux_nets
from auglocal.engine.config import RunConfig
from auglocal.engine.models import build_model
from auglocal.engine.models.imports import PRIVATE_PREFIX
from auglocal.engine.planning import CostKey, costs, layer_costs, mac_cache

NETS = """
import torch.nn as nn


class Mixer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return {body}


def net(num_classes):
    blocks = [nn.Conv2d(3, 8, 3, padding=1)] + [Mixer() for _ in range(3)]
    return blocks, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
"""


def _write(path, body: str) -> None:
    path.write_text(NETS.format(body=body))
    for name in [n for n in sys.modules if n.startswith(PRIVATE_PREFIX)]:
        del sys.modules[name]          # a new process: the file is loaded again


def _counts(spec: str) -> list:
    model = build_model(spec, 10, 16)
    aux = build_aux_nets(model, "auglocal", d=2, tau=0.5, strategy="uniform", convention="cifar")
    return layer_costs(model, aux)


def test_an_edited_block_is_counted_again_and_timed_again(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(costs, "_MEMO", {})
    monkeypatch.setattr(costs, "_UNSAVED", {})
    monkeypatch.setattr(costs, "_LOADED", False)
    script = tmp_path / "nets.py"
    spec = f"{script}:net"
    _write(script, "self.conv(x)")
    once = _counts(spec)
    key_once = CostKey.of(RunConfig(model=spec, num_classes=10, input_size=16, batch_size=8, d=2))
    assert (tmp_path / "cache" / "auglocal" / mac_cache.FILE_NAME).is_file()      # the counts were saved

    monkeypatch.setattr(costs, "_MEMO", {})        # a later process, reading the saved counts
    monkeypatch.setattr(costs, "_LOADED", False)
    _write(script, "self.conv(self.conv(x))")      # same classes, same repr, twice the convolutions
    twice = _counts(spec)
    key_twice = CostKey.of(RunConfig(model=spec, num_classes=10, input_size=16, batch_size=8, d=2))
    assert twice != once
    assert key_twice != key_once

    monkeypatch.setattr(costs, "_MEMO", {})
    monkeypatch.setattr(costs, "_LOADED", False)
    _write(script, "self.conv(x)")                 # back as it was: the first counts, from the file
    assert _counts(spec) == once
