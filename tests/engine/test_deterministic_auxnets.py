"""Deterministic formulations of DGL's adaptive pooling and InfoPro's bilinear upsampling (their CUDA backward
raises under deterministic algorithms): equal to torch's operations, and taken exactly when determinism is on."""

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from auglocal.engine.auxnets.deterministic import adaptive_avg_pool2d, interpolate_bilinear
from auglocal.engine.auxnets.dgl import DGLAux
from auglocal.engine.auxnets.infopro import CIFAR10_MEAN, CIFAR10_STD, InfoProAux
from auglocal.workers.runtime.process_setup import CUBLAS_VAR, DETERMINISTIC_VAR, apply_determinism


@pytest.fixture
def deterministic():
    """Turns torch's deterministic algorithms on for one test, then restores the setting."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


def value_and_grad(fn, x):
    x = x.clone().requires_grad_(True)
    out = fn(x)
    (out * torch.arange(out.numel(), dtype=out.dtype).view_as(out).cos()).sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("size_in, size_out", [(32, 8), (16, 4), (8, 2), (7, 2), (7, 3), (5, 2), (6, (2, 4)),
                                               (9, 9)])
def test_adaptive_pool_equals_torchs(size_in, size_out):
    x = torch.randn(2, 3, size_in, size_in, dtype=torch.float64)
    want = value_and_grad(lambda t: F.adaptive_avg_pool2d(t, size_out), x)
    got = value_and_grad(lambda t: adaptive_avg_pool2d(t, size_out), x)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("size_in, size_out", [(8, 32), (4, 16), (3, 7), (1, 5), (16, 32), (5, 3), (2, 2)])
def test_bilinear_upsampling_equals_torchs(size_in, size_out):
    x = torch.randn(2, 3, size_in, size_in + 1, dtype=torch.float64)
    out = (size_out, size_out + 2)
    want = value_and_grad(lambda t: F.interpolate(t, size=out, mode="bilinear", align_corners=True), x)
    got = value_and_grad(lambda t: interpolate_bilinear(t, out), x)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def aux_loss_and_grads(aux, h, y, x=None):
    aux = copy.deepcopy(aux)
    h = h.clone().requires_grad_(True)
    loss = aux(h, y, x) if x is not None else aux(h, y)
    loss.backward()
    return [loss.detach(), h.grad, *(p.grad for p in aux.parameters())]


def forbid(monkeypatch, name):
    """Make torch.nn.functional.<name> fail: the deterministic path must not reach it."""
    def refuse(*args, **kwargs):
        raise RuntimeError(f"{name} has no deterministic CUDA backward")
    monkeypatch.setattr(F, name, refuse)


@pytest.mark.parametrize("spatial", [32, 7])
def test_dgl_takes_the_deterministic_pools_under_determinism_and_equals_the_original(spatial, monkeypatch,
                                                                                    deterministic):
    torch.manual_seed(0)
    aux = DGLAux(layer=0, channels=8, spatial=spatial, num_classes=10)
    h, y = torch.randn(4, 8, spatial, spatial), torch.randint(0, 10, (4,))
    torch.use_deterministic_algorithms(False)
    want = aux_loss_and_grads(aux, h, y)
    torch.use_deterministic_algorithms(True)
    with monkeypatch.context() as m:
        forbid(m, "adaptive_avg_pool2d")
        got = aux_loss_and_grads(aux, h, y)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_dgl_keeps_torchs_pooling_without_determinism(monkeypatch):
    assert not torch.are_deterministic_algorithms_enabled()
    forbid(monkeypatch, "adaptive_avg_pool2d")
    aux = DGLAux(layer=0, channels=8, spatial=32, num_classes=10)
    with pytest.raises(RuntimeError, match="no deterministic CUDA backward"):
        aux(torch.randn(2, 8, 32, 32), torch.zeros(2, dtype=torch.long))


def test_infopro_takes_the_deterministic_upsampling_under_the_flag_and_equals_the_original(monkeypatch):
    """Through AUGLOCAL_DETERMINISTIC=1 and the process set-up, as a worker gets it."""
    torch.manual_seed(0)
    aux = InfoProAux(0, 16, 64, 10, CIFAR10_MEAN, CIFAR10_STD, recon_weight=1.0, ce_weight=0.5)
    h, y, x = torch.randn(4, 16, 8, 8), torch.randint(0, 10, (4,)), torch.randn(4, 3, 32, 32)
    want = aux_loss_and_grads(aux, h, y, x)
    with monkeypatch.context() as m:
        forbid(m, "interpolate")
        with pytest.raises(RuntimeError, match="no deterministic CUDA backward"):
            aux_loss_and_grads(aux, h, y, x)                      # without the flag: torch's interpolate
    monkeypatch.setenv(DETERMINISTIC_VAR, "1")
    monkeypatch.setenv(CUBLAS_VAR, os.environ.get(CUBLAS_VAR, ":4096:8"))
    try:
        assert apply_determinism()
        with monkeypatch.context() as m:
            forbid(m, "interpolate")
            got = aux_loss_and_grads(aux, h, y, x)
    finally:
        torch.use_deterministic_algorithms(False)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
