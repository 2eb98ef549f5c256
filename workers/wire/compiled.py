"""The protocol's per-message check, compiled once per (kind, route, schema): one pass, no table lookups.

workers/wire/protocol.py `validate` runs it on every message received and, only when it says no, the table's
general checks, which raise the error that names the field. So this must accept exactly what those accept
(tests/workers/test_one_pass_checks.py compares both over every kind and many wrong messages); it only has
to be fast: what the general checks derive per message (field sets, type hints, tensor specs) is derived here
once, and a wire meta dict becomes its typed record without the dataclass `__init__`.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import Any, Union


def _value_check(annotation: Any) -> Callable[[Any], bool]:
    """`_conforms(value, annotation)` as one closure, built once per meta field."""
    if annotation is Any:
        return lambda v: True
    origin = typing.get_origin(annotation)
    if origin is list:
        (item_check,) = (_value_check(a) for a in typing.get_args(annotation))
        return lambda v: isinstance(v, list) and all(item_check(x) for x in v)
    if origin in (Union, types.UnionType):
        options = [_value_check(a) for a in typing.get_args(annotation)]
        return lambda v: any(check(v) for check in options)
    if origin is dict:
        key_check, value_check = (_value_check(a) for a in typing.get_args(annotation))
        return lambda v: isinstance(v, dict) and all(key_check(k) and value_check(x) for k, x in v.items())
    if annotation is type(None):
        return lambda v: v is None
    if annotation is float:
        return lambda v: type(v) is float or type(v) is int
    return lambda v: type(v) is annotation


def one_pass_check(record: type, hints: dict[str, Any], slots: tuple, specs: dict | None) -> Callable[[Any], bool]:
    """True when a message's meta fits `record` (a wire dict is replaced by the typed record) and its tensors are
    the kind's `slots`, each matching `specs` (name -> (torch dtype, shape with None free)) where given, with one
    batch size. False: let the general checks say what is wrong."""
    names = frozenset(f.name for f in fields(record))
    required = frozenset(f.name for f in fields(record) if f.default is MISSING and f.default_factory is MISSING)
    defaults = {f.name: f.default for f in fields(record) if f.default is not MISSING}
    factories = tuple((f.name, f.default_factory) for f in fields(record) if f.default_factory is not MISSING)
    checks = {name: _value_check(hints[name]) for name in names}
    slot_names = frozenset(t.name for t in slots)
    needed = frozenset(t.name for t in slots if not t.optional)
    new = object.__new__
    plain = not hasattr(record, "__post_init__") and not hasattr(record, "__slots__")

    def check(message) -> bool:
        raw = message.meta
        if type(raw) is record:
            pass
        elif type(raw) is dict:
            keys = raw.keys()
            if not (required <= keys and keys <= names):
                return False
            for name, value in raw.items():
                if not checks[name](value):
                    return False
            if plain:                  # a frozen record without __post_init__: its fields set directly
                typed = new(record)
                values = typed.__dict__
                values.update(defaults)
                for name, factory in factories:
                    if name not in raw:
                        values[name] = factory()
                values.update(raw)
            else:
                typed = record(**raw)
            message.meta = typed
        else:
            return False
        tensors = message.tensors
        if not tensors:
            return not needed
        keys = tensors.keys()
        if not (needed <= keys and keys <= slot_names):
            return False
        if specs is None:
            return True
        batch = None
        for name, tensor in tensors.items():
            dtype, expected = specs[name]
            shape = tensor.shape
            if tensor.dtype is not dtype or len(shape) != len(expected) or not shape:
                return False
            for dim, want in zip(shape, expected, strict=True):
                if want is not None and want != dim:
                    return False
            if batch is None:
                batch = shape[0]
            elif shape[0] != batch:
                return False
        return True

    return check
