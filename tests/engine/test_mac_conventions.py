"""The paper's MAC convention counts each operator as fvcore's handles do (fvcore/nn/jit_handles.py), the engine's
counts conv, linear and matmul only; figures worked out by hand from those rules."""

import pytest
import torch
import torch.nn.functional as F
from auglocal.engine.planning.costs import _memo_key, count_macs
from auglocal.engine.planning.mac_conventions import flop_formulas
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

X = (2, 4, 8, 8)            # batch 2: every figure below is per batch, in fvcore's unit (one per MAC)
N = 2 * 4 * 8 * 8


def paper_macs(module: nn.Module, shape=X, device="cpu") -> int:
    with torch.device(device):
        x = torch.zeros(shape)
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=flop_formulas("paper")) as counter:
            module(x)
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("module, expected", [
    (nn.Conv2d(4, 6, 3, padding=1, bias=True), 2 * 6 * 4 * 9 * 64),       # bias not counted, as fvcore
    (nn.BatchNorm2d(4), 2 * N),                                             # eval, affine: 2 per element
    (nn.BatchNorm2d(4, affine=False), N),                                   # eval, no affine: 1 per element
    (nn.AdaptiveAvgPool2d(1), N),                                           # 1 per input element
    (nn.AdaptiveAvgPool2d(3), N),
    (nn.Upsample(size=(16, 16), mode="bilinear", align_corners=True), 4 * 2 * 4 * 256),   # 4 per output element
    (nn.Upsample(size=(16, 16), mode="nearest"), 2 * 4 * 256),
    (nn.MaxPool2d(2), 0), (nn.AvgPool2d(2), 0), (nn.ReLU(), 0),            # fvcore has no handle for these
])
def test_paper_convention_counts_as_fvcore(module, expected, device):
    assert paper_macs(module.to(device).eval(), device=device) == expected


def test_batch_norm_in_training_counts_5_per_element_and_1d_pools_nothing():
    assert paper_macs(nn.BatchNorm2d(4).train()) == 5 * N
    assert paper_macs(nn.BatchNorm2d(4, affine=False).train()) == 4 * N
    assert paper_macs(nn.BatchNorm1d(6).eval(), shape=(2, 6)) == 2 * 12
    assert paper_macs(nn.AdaptiveAvgPool1d(16), shape=(2, 64)) == 0          # fvcore: no adaptive_avg_pool1d handle
    assert paper_macs(lambda x: x.mean((2, 3))) == 0                          # only the pool's 1x1 form counts


def test_engine_convention_is_torchs_count_and_keeps_its_cache_keys():
    layer = nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1)).eval()
    x = torch.zeros(X)
    with torch.no_grad():
        assert count_macs(lambda: layer(x), 2) == 4 * 4 * 64                  # conv only
        assert count_macs(lambda: F.relu(layer(x)), 2) == 4 * 4 * 64
    assert flop_formulas("engine") == {}
    key = _memo_key(layer, (x,), 2)
    assert key.startswith("torch.nn.modules.container.Sequential|") and key == _memo_key(layer, (x,), 2, "engine")
    assert _memo_key(layer, (x,), 2, "paper", "logits").startswith("paper.logits|")
    with pytest.raises(ValueError, match="unknown MAC convention"):
        flop_formulas("fvcore")
