"""Each learning rule is one registry entry with every part (engine/auxnets/registry.py): the check refuses a
broken entry, every entry builds its local modules, and the names the CLI and the old RULES tuple offer are
the registry's."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from auglocal.engine.auxnets import RULES, build_aux_nets
from auglocal.engine.auxnets.registry import REGISTRY, check_rule
from auglocal.engine.local_module import build_local_modules
from auglocal.engine.models import build_model
from auglocal.launch.cli import build_parser


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_rule_has_every_part(name):
    rule = REGISTRY[name]
    assert rule.name == name
    check_rule(rule)


@pytest.mark.parametrize("broken", [dict(build=None), dict(doc=""), dict(doc="  "), dict(doc="two\nlines"),
                                    dict(name=""), dict(name="Bad Name"), dict(name="dgl:2"), dict(name=None),
                                    dict(local_layers=None)])
def test_a_rule_lacking_a_part_is_refused(broken):
    rule = dataclasses.replace(REGISTRY["dgl"], **broken)
    with pytest.raises(ValueError, match="lacks"):
        check_rule(rule)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_rule_builds_its_local_modules_for_a_small_resnet20(name):
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, input_size=16).train()
    aux = build_aux_nets(model, name, d=3, tau=0.5)
    modules = build_local_modules(model, aux)
    assert len(modules) == len(aux) + 1 and modules[-1].is_top
    assert (len(aux) == 0) == (name == "bp")
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    h = x
    for module in modules:
        out = module(h)
        assert torch.isfinite(module.loss(out, y, x)).item()
        h = out.detach()


def cli_rule_names() -> tuple[str, ...]:
    """The --rule choices: argparse's choices when it has them, else the names its help lists."""
    action = next(a for a in build_parser()._actions if a.dest == "rule")
    if action.choices is not None:
        return tuple(action.choices)
    return tuple(re.split(r", | or ", action.help.split(" (default")[0]))


def test_the_registry_names_are_the_cli_rule_choices():
    assert set(cli_rule_names()) == set(REGISTRY)


def test_the_old_rules_tuple_is_unchanged():
    assert RULES == ("bp", "auglocal", "dgl", "predsim", "infopro")
    assert RULES == tuple(REGISTRY)
