"""Every learning rule as one entry, so what a rule is (its name, its line of doc, which layers get an aux net,
how its aux nets are built) lives in the rule's own file instead of a tuple and an if-chain in
engine/auxnets/__init__.py.

Adding a rule is one file and one entry: write engine/auxnets/<rule>.py with its aux net, a builder
`build(model, n, spec) -> list[AuxNet]` and `RULE = Rule(name, doc, build, local_layers)` (engine/auxnets/rule.py),
then add that RULE to `REGISTRY` below. The names other code imports (`RULES`, `build_aux_nets` in
engine/auxnets/__init__.py, and through them RunConfig's check and the CLI's --rule) follow from it. `check_rule`
refuses an entry that lacks a part; it runs on every entry here, and tests/engine/test_rule_registry.py shows it
failing on broken ones.
"""

from __future__ import annotations

import re

from auglocal.engine.auxnets.auglocal_rule import RULE as AUGLOCAL
from auglocal.engine.auxnets.bp import RULE as BP
from auglocal.engine.auxnets.dgl import RULE as DGL
from auglocal.engine.auxnets.infopro import RULE as INFOPRO
from auglocal.engine.auxnets.predsim import RULE as PREDSIM
from auglocal.engine.auxnets.rule import AuxSpec, Rule
from auglocal.engine.auxnets.selection import CONVENTIONS

_NAME = re.compile(r"[a-z][a-z0-9_]*")


def check_rule(rule: Rule) -> None:
    """Raise ValueError unless `rule` has every part: a lower-case name, a one-line doc, a builder and a
    layer count."""
    problems = [what for what, bad in (
        ("a name (lower case, letters, digits, _)", not isinstance(rule.name, str) or not _NAME.fullmatch(rule.name)),
        ("a one-line doc", not isinstance(rule.doc, str) or not rule.doc.strip() or "\n" in rule.doc),
        ("a builder", not callable(rule.build)),
        ("a local-layer count", not callable(rule.local_layers)),
    ) if bad]
    if problems:
        raise ValueError(f"rule {rule.name!r} lacks {', '.join(problems)}")


def _collect(*rules: Rule) -> dict[str, Rule]:
    registry: dict[str, Rule] = {}
    for rule in rules:
        check_rule(rule)
        if rule.name in registry:
            raise ValueError(f"two rules are named {rule.name!r}")
        registry[rule.name] = rule
    return registry


#: in the order listings show them (BP first, then AugLocal and the baselines it is compared with)
REGISTRY: dict[str, Rule] = _collect(BP, AUGLOCAL, DGL, PREDSIM, INFOPRO)


def get_rule(name: str) -> Rule:
    if name not in REGISTRY:
        raise ValueError(f"unknown rule {name!r}; choose one of: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def num_local_layers(num_layers: int, k: int, convention: str, rule: str) -> int:
    """How many layers (0..n-1) get an aux net under `rule`; layers n..L-1 and the head are trained by the global
    loss (docs/method.md 2). k = d - 1. Returns 0 (never negative) when k is too large to leave a local layer."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; choose one of: {', '.join(CONVENTIONS)}")
    return get_rule(rule).local_layers(num_layers, k, convention)


__all__ = ["REGISTRY", "AuxSpec", "Rule", "check_rule", "get_rule", "num_local_layers"]
