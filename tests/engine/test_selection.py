"""Layer selection, pyramidal depth and local-layer counts against the test vectors of docs/method.md 3.3 and 3.6."""

from __future__ import annotations

import functools
from itertools import groupby

import pytest
import torch
from auglocal.engine.auxnets import build_aux_nets
from auglocal.engine.auxnets.auglocal import plan_aux
from auglocal.engine.auxnets.registry import num_local_layers
from auglocal.engine.auxnets.selection import pyramid_ks, select_layers
from auglocal.engine.models import build_model
from auglocal.engine.models.cifar_resnet import BasicBlock

TAU = 0.5


def run_lengths(values: list[int]) -> list[tuple[int, int]]:
    return [(v, len(list(g))) for v, g in groupby(values)]


@functools.cache
def auglocal_nets(name: str, d: int) -> tuple:
    """AugLocal aux nets (tau = 0.5, the model's own convention) of a freshly built CIFAR ResNet."""
    torch.manual_seed(0)
    return tuple(build_aux_nets(build_model(name), "auglocal", d=d, tau=TAU))


def block_shapes(aux) -> list[tuple[int, int, int]]:
    """(in, out, stride) of every BasicBlock in an aux net, read from the built modules."""
    blocks = [m for m in aux.body if isinstance(m, BasicBlock)]
    assert len(blocks) == len(aux.body)
    return [(b.conv1.in_channels, b.conv1.out_channels, b.conv1.stride[0]) for b in blocks]


# --- pyramid (docs/method.md 3.3) ----------------------------------------------------------------------------------
@pytest.mark.parametrize("d, expected", [
    (6, [5, 5, 5, 4, 4, 4, 4, 3, 3, 3]),
    (5, [4, 4, 4, 4, 3, 3, 3, 3, 3, 3, 2]),
    (4, [3] * 6 + [2] * 6),
    (3, [2] * 13),
    (2, [1] * 14),
])
def test_pyramid_resnet32(d, expected):
    n = num_local_layers(16, d - 1, "cifar", "auglocal")
    assert pyramid_ks(d - 1, n, TAU) == expected


@pytest.mark.parametrize("d, expected", [
    (4, [(3, 25), (2, 26)]),
    (5, [(4, 17), (3, 32), (2, 1)]),
    (6, [(5, 12), (4, 25), (3, 12)]),
])
def test_pyramid_resnet110_run_lengths(d, expected):
    n = num_local_layers(55, d - 1, "cifar", "auglocal")
    assert run_lengths(pyramid_ks(d - 1, n, TAU)) == expected


def test_pyramid_last_value_half_to_even():
    # ResNet-32 d=5: the last aux-equipped layer gets round(4 * 0.5 + 0.5) = round(2.5) = 2, not 3
    assert pyramid_ks(4, 11, 0.5)[-1] == 2
    # k=6, ramp to 0.5: round(6 * 0.5 + 0.5) = round(3.5) = 4
    assert pyramid_ks(6, 5, 0.5)[-1] == 4


def test_pyramid_tau_zero_constant_and_tau_one_reaches_one():
    assert pyramid_ks(5, 10, 0.0) == [5] * 10
    ks = pyramid_ks(5, 10, 1.0)
    assert ks[0] == 5 and ks[-1] == 1 and ks == sorted(ks, reverse=True)


def test_pyramid_degenerate_counts():
    assert pyramid_ks(3, 0, 0.5) == []
    assert pyramid_ks(3, 1, 0.5) == [3]
    assert pyramid_ks(1, 6, 1.0) == [1] * 6


@pytest.mark.parametrize("args", [(0, 5, 0.5), (3, -1, 0.5), (3, 5, 1.5), (3, 5, -0.1)])
def test_pyramid_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        pyramid_ks(*args)


# --- selection (docs/method.md 3.2 / 3.6) ---------------------------------------------------------------------------
def test_select_resnet32_d2_every_layer_takes_the_last():
    for layer in range(14):
        assert select_layers(layer, 1, 16) == [15]


@pytest.mark.parametrize("layer, expected", [
    (0, [8, 15]), (2, [8, 15]), (3, [9, 15]), (4, [10, 15]), (6, [10, 15]), (7, [11, 15]), (12, [14, 15]),
])
def test_select_resnet32_d3(layer, expected):
    k = pyramid_ks(2, 14, TAU)[layer]
    assert select_layers(layer, k, 16) == expected


@pytest.mark.parametrize("layer, expected", [(0, [3, 6, 9, 12, 15]), (3, [6, 9, 12, 15]), (9, [11, 13, 15])])
def test_select_resnet32_d6_with_pyramid(layer, expected):
    k = pyramid_ks(5, 10, TAU)[layer]
    assert select_layers(layer, k, 16) == expected


@pytest.mark.parametrize("d, layer, expected", [
    (6, 0, [11, 22, 32, 43, 54]), (6, 18, [27, 36, 45, 54]), (6, 37, [43, 48, 54]),
    (4, 0, [18, 36, 54]), (4, 25, [40, 54]), (4, 50, [52, 54]),
])
def test_select_resnet110(d, layer, expected):
    k = pyramid_ks(d - 1, 55 - d, TAU)[layer]
    assert select_layers(layer, k, 55) == expected


def test_select_half_to_even():
    assert select_layers(0, 2, 16) == [8, 15]     # 7.5 -> 8
    assert select_layers(2, 2, 16) == [8, 15]     # 8.5 -> 8
    assert select_layers(0, 2, 10) == [4, 9]      # 4.5 -> 4
    assert select_layers(0, 2, 6) == [2, 5]       # 2.5 -> 2


def test_select_uses_the_paper_codes_float_expression():
    # 0 + 29 / 14 * 7 is 14.500000000000002 in float, so the paper's code (and ours) picks 15, where exact
    # arithmetic with half-to-even would give 14.
    assert select_layers(0, 14, 30)[6] == 15


def test_select_clamps_to_all_remaining_layers():
    assert select_layers(13, 5, 16) == [14, 15]
    assert select_layers(14, 1, 16) == [15]
    assert select_layers(10, 5, 16) == [11, 12, 13, 14, 15]


@pytest.mark.parametrize("args", [(15, 1, 16), (-1, 1, 16), (0, 0, 16), (0, 1, 1)])
def test_select_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        select_layers(*args)


# --- which layers get aux nets (docs/method.md section 2) -----------------------------------------------------------
def test_num_local_layers():
    assert num_local_layers(16, 3, "cifar", "auglocal") == 12
    assert num_local_layers(55, 5, "cifar", "auglocal") == 49
    assert num_local_layers(16, 3, "imagenet", "auglocal") == 15
    for rule in ("dgl", "predsim", "infopro"):
        assert num_local_layers(16, 3, "cifar", rule) == 15
        assert num_local_layers(17, 4, "imagenet", rule) == 16
    assert num_local_layers(16, 3, "cifar", "bp") == 0
    assert num_local_layers(16, 15, "cifar", "auglocal") == 0


@pytest.mark.parametrize("args", [(16, 3, "other", "auglocal"), (16, 3, "cifar", "sgd"),
                                  (16, 0, "cifar", "auglocal")])
def test_num_local_layers_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        num_local_layers(*args)


# --- built aux nets: in -> out, stride of every aux block (docs/method.md 3.4 / 3.6) ---------------------------------
def test_built_resnet32_d2():
    nets = auglocal_nets("resnet32", 2)
    assert [a.layer for a in nets] == list(range(14))
    widths = [16] * 6 + [32] * 5 + [64] * 3
    for aux, width in zip(nets, widths, strict=True):
        assert aux.selected == [15]
        assert block_shapes(aux) == [(width, 64, 1 if width == 64 else 2)]


def test_built_resnet32_d2_loses_the_excess_halving():
    # 16 -> 64 needs two halvings but one block can only stride once: the output stays 16x16, not 8x8
    aux = auglocal_nets("resnet32", 2)[0]
    assert aux.body(torch.zeros(2, 16, 32, 32)).shape == (2, 64, 16, 16)


def test_carry_over_to_the_next_block():
    model = build_model("resnet32")
    assert [(s.in_channels, s.out_channels, s.stride) for s in plan_aux(model, 0, [11, 15])] == [
        (16, 64, 2), (64, 64, 2)]


@pytest.mark.parametrize("layer, expected", [
    (0, [(16, 32, 2), (32, 64, 2)]),
    (6, [(32, 32, 1), (32, 64, 2)]),
    (7, [(32, 64, 2), (64, 64, 1)]),
    (12, [(64, 64, 1), (64, 64, 1)]),
])
def test_built_resnet32_d3(layer, expected):
    assert block_shapes(auglocal_nets("resnet32", 3)[layer]) == expected


@pytest.mark.parametrize("layer, selected, expected", [
    (0, [3, 6, 9, 12, 15], [(16, 16, 1), (16, 32, 2), (32, 32, 1), (32, 64, 2), (64, 64, 1)]),
    (3, [6, 9, 12, 15], [(16, 32, 2), (32, 32, 1), (32, 64, 2), (64, 64, 1)]),
    (9, [11, 13, 15], [(32, 64, 2), (64, 64, 1), (64, 64, 1)]),
])
def test_built_resnet32_d6(layer, selected, expected):
    aux = auglocal_nets("resnet32", 6)[layer]
    assert aux.selected == selected
    assert block_shapes(aux) == expected


def test_built_resnet32_d6_notation():
    assert auglocal_nets("resnet32", 6)[0].notation == "16R-32Rs2-32R-64Rs2-64R-AP-10FC"
    # one selected layer: the CIFAR head gets a BatchNorm1d before its Linear
    assert auglocal_nets("resnet32", 2)[0].notation == "64Rs2-AP-BN-10FC"


@pytest.mark.parametrize("d, layer, selected, expected", [
    (6, 0, [11, 22, 32, 43, 54], [(16, 16, 1), (16, 32, 2), (32, 32, 1), (32, 64, 2), (64, 64, 1)]),
    (6, 18, [27, 36, 45, 54], [(16, 32, 2), (32, 32, 1), (32, 64, 2), (64, 64, 1)]),
    (6, 37, [43, 48, 54], [(64, 64, 1)] * 3),
    (4, 0, [18, 36, 54], [(16, 16, 1), (16, 32, 2), (32, 64, 2)]),
    (4, 25, [40, 54], [(32, 64, 2), (64, 64, 1)]),
    (4, 50, [52, 54], [(64, 64, 1)] * 2),
])
def test_built_resnet110(d, layer, selected, expected):
    nets = auglocal_nets("resnet110", d)
    assert len(nets) == 55 - d
    aux = nets[layer]
    assert aux.layer == layer and aux.selected == selected
    assert block_shapes(aux) == expected
