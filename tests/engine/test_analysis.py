"""Representation analysis: linear CKA, per-layer features, linear probes, and auglocal-analyze end to end."""

from __future__ import annotations

import json

import pytest
import torch
from auglocal.engine.analysis import features, fit_probe, global_pool, head_logits, layer_outputs, linear_cka
from auglocal.engine.config import RunConfig, build_data, build_network, resolve
from auglocal.engine.models import build_model
from auglocal.launch.report.analyze import main as analyze


def gaussian(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def orthogonal(p: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(gaussian(p, p, seed=seed))
    return q


def cka_by_definition(x: torch.Tensor, y: torch.Tensor) -> float:
    """tr(K H L H) / sqrt(tr(K H K H) tr(L H L H)) with an explicit centring matrix H (no shortcuts)."""
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - torch.full((n, n), 1.0 / n, dtype=torch.float64)
    k, l_ = x.reshape(n, -1) @ x.reshape(n, -1).T, y.reshape(n, -1) @ y.reshape(n, -1).T
    hsic = lambda a, b: torch.trace(a @ h @ b @ h)  # noqa: E731
    return float(hsic(k, l_) / torch.sqrt(hsic(k, k) * hsic(l_, l_)))


# ---- CKA ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, p", [(50, 8), (12, 40)])  # feature form (n >= p) and Gram form (n < p)
def test_cka_of_a_representation_with_itself_is_one(n, p):
    x = gaussian(n, p, seed=1)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("n, p, q", [(60, 10, 7), (15, 30, 45)])
def test_cka_matches_its_definition(n, p, q):
    x, y = gaussian(n, p, seed=2), gaussian(n, q, seed=3) + 0.3 * gaussian(n, q, seed=4)
    y[:, :5] += x[:, :5]  # correlated in part, so the value is neither 0 nor 1
    expected = cka_by_definition(x, y)
    assert 0.05 < expected < 0.95
    assert linear_cka(x, y) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("n, p", [(40, 6), (10, 24)])
def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling(n, p):
    x, y = gaussian(n, p, seed=5), gaussian(n, p, seed=6) + gaussian(n, p, seed=5)
    base = linear_cka(x, y)
    transformed = 3.7 * (x @ orthogonal(p, seed=7))
    assert linear_cka(transformed, y) == pytest.approx(base, rel=1e-10)
    assert linear_cka(x, 0.01 * (y @ orthogonal(p, seed=8))) == pytest.approx(base, rel=1e-10)
    assert linear_cka(x, transformed) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_not_invariant_to_anisotropic_scaling():
    x = gaussian(40, 6, seed=9)
    stretched = x * torch.tensor([10.0, 1, 1, 1, 1, 0.1], dtype=torch.float64)
    assert linear_cka(x, stretched) < 0.9


def test_cka_flattens_conv_maps_and_accepts_float32():
    x, y = gaussian(20, 3, 4, 4, seed=10), gaussian(20, 5, 2, 2, seed=11)
    flat = linear_cka(x.reshape(20, -1), y.reshape(20, -1))
    assert linear_cka(x.float(), y) == pytest.approx(flat, rel=1e-6)


def test_cka_bad_input():
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(gaussian(5, 3), gaussian(6, 3))
    with pytest.raises(ValueError, match="at least 2"):
        linear_cka(gaussian(1, 3), gaussian(1, 3))
    assert linear_cka(torch.ones(5, 3), gaussian(5, 3)) != linear_cka(torch.ones(5, 3), gaussian(5, 3))  # NaN


# ---- probes ------------------------------------------------------------------------------------------------
def test_probe_on_linearly_separable_features_reaches_100_percent():
    classes, dim = 5, 16
    centres = 4.0 * gaussian(classes, dim, seed=12)
    labels = torch.arange(300) % classes
    features = centres[labels] + 0.3 * gaussian(300, dim, seed=13)
    result = fit_probe(features[:200].float(), labels[:200], features[200:].float(), labels[200:], classes)
    assert result.train_accuracy == 100.0 and result.test_accuracy == 100.0


def test_probe_cannot_generalise_from_random_labels():
    labels = torch.randint(0, 2, (400,), generator=torch.Generator().manual_seed(14))
    features = gaussian(400, 120, seed=15)
    result = fit_probe(features[:100], labels[:100], features[100:], labels[100:], 2)
    assert result.train_accuracy > 95.0  # 100 points in 120 dimensions: it fits the noise...
    assert result.test_accuracy < 60.0   # ...but that does not carry over


def test_probe_is_deterministic_and_checks_shapes():
    x, y = gaussian(60, 4, seed=16), torch.arange(60) % 3
    assert fit_probe(x, y, x, y, 3) == fit_probe(x, y, x, y, 3)
    with pytest.raises(ValueError, match="same C"):
        fit_probe(x, y, gaussian(60, 5), y, 3)


# ---- features ----------------------------------------------------------------------------------------------
def test_layer_outputs_walk_the_network_one_layer_at_a_time():
    torch.manual_seed(0)
    model = build_model("resnet20", 10, 32)
    model.train()
    images = gaussian(10, 3, 32, 32, seed=17).float()
    outputs = []
    for out in layer_outputs(model, images, batch_size=4):
        assert torch.is_grad_enabled()  # no_grad must not leak into the caller between layers
        outputs.append(out)
    assert not model.training
    expected_shapes = [(i.out_channels, i.spatial, i.spatial) for i in model.info]
    assert [tuple(o.shape[1:]) for o in outputs] == expected_shapes
    assert not outputs[-1].requires_grad
    with torch.no_grad():
        expected = model(images)
    torch.testing.assert_close(head_logits(model, outputs[-1], batch_size=3), expected)
    assert global_pool(outputs[0]).shape == (10, 16)
    torch.testing.assert_close(global_pool(outputs[3])[:, 2], outputs[3][:, 2].mean(dim=(1, 2)))


def test_examples_are_fixed_and_class_mixed():
    data = build_data(RunConfig(dataset="digits"))
    x, y = features.test_examples(data, 50)
    x2, y2 = features.test_examples(data, 50)
    assert x.shape == (50, 3, 32, 32) and torch.equal(x, x2) and torch.equal(y, y2)
    assert len(set(y.tolist())) == 10
    assert features.test_examples(data, None)[0].shape[0] == data.test_size
    tx, ty = features.train_examples(data, 70, batch_size=32)
    assert tx.shape == (70, 3, 32, 32)
    assert torch.equal(ty, features.train_examples(data, 70, batch_size=32)[1])


# ---- auglocal-analyze end to end ---------------------------------------------------------------------------
def save_run(path, model: str = "resnet20", rule: str = "bp", seed: int = 1, save_model: bool = True):
    """A run folder as the trainers write it (config.json + model.pt), with freshly built weights."""
    cfg = RunConfig(model=model, rule=rule, dataset="digits", seed=seed)
    data = build_data(cfg)
    resolve(cfg, data)
    network, _ = build_network(cfg, data)
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(cfg.to_dict()))
    if save_model:
        torch.save(network.state_dict(), path / "model.pt")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {"auglocal": save_run(root / "auglocal", rule="auglocal", seed=1),
            "bp": save_run(root / "bp", seed=2)}


def test_analyze_writes_cka_probes_and_plots(runs, tmp_path, capsys):
    out = tmp_path / "out"
    code = analyze([str(runs["auglocal"]), "--reference", str(runs["bp"]), "--out", str(out),
                    "--max-examples", "64"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "analysis.json").read_text())
    layers = build_model("resnet20").num_layers
    assert len(report["cka"]) == layers and len(report["layers"]) == layers
    assert all(0.0 < v < 1.0 for v in report["cka"])  # two different initialisations: similar, not equal
    for key in ("run", "reference"):
        assert len(report[key]["probe_accuracy"]) == layers
        assert all(0.0 <= a <= 100.0 for a in report[key]["probe_accuracy"])
    assert report["run"]["rule"] == "auglocal" and report["reference"]["rule"] == "bp"
    assert report["test_examples"] == 64 and report["probe_train_examples"] == 64
    assert (out / "cka.png").stat().st_size > 0 and (out / "probes.png").stat().st_size > 0
    assert "layer" in capsys.readouterr().out


def test_analyze_a_run_against_itself_gives_cka_one(runs, tmp_path):
    out = tmp_path / "self"
    assert analyze([str(runs["bp"]), "--reference", str(runs["bp"]), "--out", str(out),
                    "--max-examples", "32"]) == 0
    report = json.loads((out / "analysis.json").read_text())
    assert report["cka"] == pytest.approx([1.0] * len(report["cka"]), abs=1e-9)
    assert report["run"]["probe_accuracy"] == report["reference"]["probe_accuracy"]


def test_analyze_without_reference_writes_probes_only(runs, tmp_path):
    out = tmp_path / "alone"
    assert analyze([str(runs["bp"]), "--out", str(out), "--max-examples", "32"]) == 0
    report = json.loads((out / "analysis.json").read_text())
    assert report["cka"] is None and report["reference"] is None
    assert (out / "probes.png").exists() and not (out / "cka.png").exists()


def test_analyze_bad_input_exits_2(runs, tmp_path, capsys):
    assert analyze([str(tmp_path / "nowhere")]) == 2
    assert "no run folder" in capsys.readouterr().err
    other = save_run(tmp_path / "r32", model="resnet32", save_model=False)
    assert analyze([str(runs["bp"]), "--reference", str(other)]) == 2
    assert "differ in model" in capsys.readouterr().err
    assert analyze([str(other)]) == 2
    assert "model.pt is missing" in capsys.readouterr().err
    mismatched = save_run(tmp_path / "wrong", model="resnet20")
    wrong = RunConfig(model="resnet32", dataset="digits")
    (mismatched / "config.json").write_text(json.dumps(wrong.to_dict()))
    assert analyze([str(mismatched)]) == 2
    assert "does not fit resnet32" in capsys.readouterr().err
