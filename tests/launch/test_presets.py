"""Experiment presets: the paper's settings (docs/method.md 4.2), overridable by explicit flags."""

from __future__ import annotations

import pytest
from auglocal.engine.auxnets import RULES
from auglocal.engine.config import RunConfig, resolve, validate
from auglocal.engine.data import DATASETS
from auglocal.engine.models import model_names
from auglocal.launch.run.presets import PRESETS, apply_preset, format_presets, get_preset

# docs/method.md 4.2, copied by hand: data set (or ImageNet model) -> batch, initial lr, epochs
TABLE_4_2 = {"cifar10": (1024, 0.8, 400), "svhn": (1024, 0.8, 400), "stl10": (128, 0.1, 400),
             "vgg13": (256, 0.1, 90), "resnet34": (1024, 0.4, 200), "resnet101": (512, 0.2, 200)}


def settings(cfg: RunConfig) -> dict:
    keys = ("model", "rule", "d", "tau", "dataset", "epochs", "batch_size", "lr", "schedule", "warmup")
    return {k: getattr(cfg, k) for k in keys}


@pytest.mark.parametrize("name, expected", [
    ("cifar10-resnet110-auglocal-d4", dict(model="resnet110", rule="auglocal", d=4, tau=0.5,
                                           dataset="cifar10", epochs=400, batch_size=1024, lr=0.8,
                                           schedule="cifar", warmup=10)),
    ("stl10-resnet32-bp", dict(model="resnet32", rule="bp", d=4, tau=None, dataset="stl10", epochs=400,
                               batch_size=128, lr=0.1, schedule="cifar", warmup=10)),
    ("imagenet-resnet34-auglocal-d5", dict(model="resnet34", rule="auglocal", d=5, tau=0.0,
                                           dataset="imagenet", epochs=200, batch_size=1024, lr=0.4,
                                           schedule="imagenet", warmup=0)),
    ("svhn-resnet32-dgl", dict(model="resnet32", rule="dgl", d=4, tau=None, dataset="svhn", epochs=400,
                               batch_size=1024, lr=0.8, schedule="cifar", warmup=10)),
    ("imagenet-vgg13-auglocal-d3", dict(model="vgg13", rule="auglocal", d=3, tau=0.0, dataset="imagenet",
                                        epochs=90, batch_size=256, lr=0.1, schedule="imagenet", warmup=0)),
    ("imagenet-resnet101-auglocal-d4", dict(model="resnet101", rule="auglocal", d=4, tau=0.0,
                                            dataset="imagenet", epochs=200, batch_size=512, lr=0.2,
                                            schedule="imagenet", warmup=0)),
])
def test_preset_settings_equal_method_md(name, expected):
    assert settings(apply_preset(name, RunConfig(), set())) == expected


def test_every_preset_follows_the_table_and_is_valid():
    for name, preset in PRESETS.items():
        key = preset.model if preset.dataset == "imagenet" else preset.dataset
        assert (preset.batch_size, preset.lr, preset.epochs) == TABLE_4_2[key], name
        assert (preset.schedule, preset.warmup) == (("imagenet", 0) if preset.dataset == "imagenet"
                                                    else ("cifar", 10)), name
        assert preset.model in model_names() and preset.rule in RULES and preset.dataset in DATASETS, name
        validate(apply_preset(name, RunConfig(), set()))


def test_presets_cover_the_papers_grid():
    for dataset in ("cifar10", "svhn", "stl10"):
        for model in ("resnet32", "resnet110"):
            for run in ("bp", "dgl", "predsim", "infopro", *(f"auglocal-d{d}" for d in range(2, 7))):
                assert f"{dataset}-{model}-{run}" in PRESETS
    for model, d in (("vgg13", 3), ("resnet34", 5), ("resnet101", 4)):
        assert f"imagenet-{model}-auglocal-d{d}" in PRESETS and f"imagenet-{model}-bp" in PRESETS
    assert PRESETS["cifar10-resnet32-auglocal-d6"].d == 6


def test_explicit_flags_override_a_preset():
    cfg = RunConfig(model="resnet20", epochs=3, batch_size=64, lr=0.05, dataset="mnist5k")
    given = {"model", "epochs", "batch_size", "lr", "dataset"}
    out = apply_preset("cifar10-resnet110-auglocal-d4", cfg, given)
    assert (out.model, out.epochs, out.batch_size, out.lr, out.dataset) == ("resnet20", 3, 64, 0.05,
                                                                            "mnist5k")
    assert (out.rule, out.d, out.tau, out.schedule) == ("auglocal", 4, 0.5, "cifar")  # from the preset
    assert cfg.model == "resnet20" and cfg.rule == "auglocal" and cfg.lr == 0.05  # the input is not changed


def test_shorter_runs_scale_the_warmup_unless_it_is_given():
    short = apply_preset("cifar10-resnet32-bp", RunConfig(epochs=40), {"epochs"})
    assert short.warmup is None

    class Data:
        num_classes, input_size, default_batch_size, default_lr = 10, 32, 128, 0.1

    assert resolve(short, Data()).warmup == 1  # 10 of 400 epochs, scaled to 40
    given = apply_preset("cifar10-resnet32-bp", RunConfig(epochs=40, warmup=5), {"epochs", "warmup_epochs"})
    assert given.warmup == 5
    imagenet = apply_preset("imagenet-resnet34-bp", RunConfig(epochs=5), {"epochs"})
    assert imagenet.warmup == 0


def test_unknown_preset_lists_the_names():
    with pytest.raises(ValueError, match="unknown preset 'cifar100-resnet32-bp'.*cifar10-resnet32-bp"):
        apply_preset("cifar100-resnet32-bp", RunConfig(), set())
    assert get_preset("svhn-resnet32-dgl").rule == "dgl"


def test_format_presets_lists_every_preset_with_its_settings():
    text = format_presets()
    for name in PRESETS:
        assert name in text
    line = next(row for row in text.splitlines() if row.startswith("imagenet-resnet101-auglocal-d4 "))
    assert line.split()[1:6] == ["512", "0.2", "200", "imagenet", "0"]
