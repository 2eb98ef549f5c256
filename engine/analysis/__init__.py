"""Representation analysis of trained primary networks: linear CKA and per-layer linear probes (paper 4.3)."""

from __future__ import annotations

from auglocal.engine.analysis.cka import linear_cka
from auglocal.engine.analysis.features import global_pool, head_logits, layer_outputs, test_examples, train_examples
from auglocal.engine.analysis.probes import ProbeResult, fit_probe, probe_layers

__all__ = ["ProbeResult", "fit_probe", "global_pool", "head_logits", "layer_outputs", "linear_cka",
           "probe_layers", "test_examples", "train_examples"]
