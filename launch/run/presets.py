"""Named experiment presets: the paper's settings per data set, model and rule (docs/method.md 4.2)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from auglocal.engine.config import RunConfig, UsageError

#: argparse option names that differ from the RunConfig field they set
ARG_TO_FIELD = {"warmup_epochs": "warmup"}


@dataclass(frozen=True)
class Preset:
    """RunConfig fields one of the paper's experiments fixes; None leaves the field as configured.

    Only what docs/method.md 4.2 states is set: the optimiser (SGD Nesterov, wd 1e-4) and the seed are the
    engine's defaults anyway, and the data pipeline of each data set lives with the data set. Precision is
    set explicitly to the paper's fp32 (a flag given with the preset may still choose bf16/fp16); the memory
    format is explicitly 'auto', the device's faster layout, which changes only the order of float sums inside
    a convolution, not what is trained.
    """

    description: str
    model: str
    rule: str
    dataset: str
    epochs: int
    batch_size: int
    lr: float
    schedule: str
    warmup: int
    d: int | None = None
    tau: float | None = None
    precision: str = "fp32"
    memory_format: str = "auto"


@dataclass(frozen=True)
class _Setting:
    """One column of the docs/method.md 4.2 table."""

    batch_size: int
    lr: float
    epochs: int
    schedule: str
    warmup: int
    note: str


# CIFAR family: 10 warm-up epochs from lr 0.01, then cosine, per epoch. STL-10's batch and lr are the ones
# the paper's script hard-codes (it ignores --lr). Its 100-output-unit quirk (docs/method.md 8.10) is not copied:
# the model gets the data set's 10 classes.
_CIFAR_FAMILY = {
    "cifar10": _Setting(1024, 0.8, 400, "cifar", 10, "CIFAR-10"),
    "svhn": _Setting(1024, 0.8, 400, "cifar", 10, "SVHN (train split, no flips)"),
    "stl10": _Setting(128, 0.1, 400, "cifar", 10, "STL-10 96x96 (batch and lr hard-coded by the paper)"),
}
# ImageNet: cosine over e = 0..E-1 without warm-up.
_IMAGENET = {
    "vgg13": (_Setting(256, 0.1, 90, "imagenet", 0, "ImageNet"), {"auglocal": 3, "dgl": None}),
    "resnet34": (_Setting(1024, 0.4, 200, "imagenet", 0, "ImageNet"), {"auglocal": 5}),
    "resnet101": (_Setting(512, 0.2, 200, "imagenet", 0, "ImageNet"), {"auglocal": 4}),
}
_BASELINES = {
    "bp": "end-to-end backpropagation",
    "dgl": "DGL aux nets (AugLocal-repo version)",
    "predsim": "PredSim (AugLocal-repo version)",
    "infopro": "InfoPro (AugLocal-repo version, CE head)",
}
#: AugLocal depths of the paper's CIFAR-family tables (Table 1); tau 0.5 throughout (docs/method.md 0)
CIFAR_DEPTHS = (2, 3, 4, 5, 6)
CIFAR_TAU = 0.5
#: the ImageNet code exposes no pyramid (docs/method.md 2B): constant aux depth
IMAGENET_TAU = 0.0


def _preset(setting: _Setting, model: str, dataset: str, rule: str, d: int | None = None) -> Preset:
    what = f"AugLocal d={d}" if rule == "auglocal" else _BASELINES[rule]
    tau = None if rule != "auglocal" else (CIFAR_TAU if setting.schedule == "cifar" else IMAGENET_TAU)
    return Preset(description=f"{setting.note}, {model}, {what}", model=model, rule=rule, dataset=dataset,
                  epochs=setting.epochs, batch_size=setting.batch_size, lr=setting.lr,
                  schedule=setting.schedule, warmup=setting.warmup, d=d, tau=tau)


def _name(dataset: str, model: str, rule: str, d: int | None) -> str:
    return f"{dataset}-{model}-{rule}" + (f"-d{d}" if rule == "auglocal" else "")


def _build_presets() -> dict[str, Preset]:
    presets: dict[str, Preset] = {}
    for dataset, setting in _CIFAR_FAMILY.items():
        for model in ("resnet32", "resnet110"):
            runs = [(rule, None) for rule in _BASELINES] + [("auglocal", d) for d in CIFAR_DEPTHS]
            for rule, d in runs:
                presets[_name(dataset, model, rule, d)] = _preset(setting, model, dataset, rule, d)
    for model, (setting, rules) in _IMAGENET.items():
        for rule, d in {"bp": None, **rules}.items():
            presets[_name("imagenet", model, rule, d)] = _preset(setting, model, "imagenet", rule, d)
    return presets


#: every preset by name, e.g. cifar10-resnet110-auglocal-d4, svhn-resnet32-dgl, imagenet-resnet34-auglocal-d5
PRESETS: dict[str, Preset] = _build_presets()

_OVERRIDES = tuple(f.name for f in fields(Preset) if f.name != "description")


def get_preset(name: str) -> Preset:
    """The preset called `name`; an unknown name is a UsageError (a ValueError) listing all of them."""
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)} "
                         "(auglocal-launch --list-presets describes them)")
    return PRESETS[name]


def apply_preset(name: str, cfg: RunConfig, explicit: set[str]) -> RunConfig:
    """A copy of `cfg` with the preset's settings, except the fields in `explicit` (set on the command line).

    `explicit` holds RunConfig field names; argparse names such as warmup_epochs are accepted too. The
    preset's 10 warm-up epochs belong to its 400: when the user changes the epochs but not the warm-up,
    the warm-up is left to `resolve`, which scales it (10 per 400 epochs).
    """
    preset = get_preset(name)
    explicit = {ARG_TO_FIELD.get(n, n) for n in explicit}
    changes = {k: getattr(preset, k) for k in _OVERRIDES
               if k not in explicit and getattr(preset, k) is not None}
    if "epochs" in explicit and "warmup" not in explicit and preset.schedule == "cifar":
        changes["warmup"] = None
    return replace(cfg, **changes)


def format_presets() -> str:
    """A table of every preset and its settings, for --list-presets."""
    header = f"{'preset':<32} {'batch':>5} {'lr':>5} {'epochs':>6} {'schedule':<8} {'warmup':>6}  description"
    rows = [header, "-" * len(header)]
    for name, p in PRESETS.items():
        rows.append(f"{name:<32} {p.batch_size:>5} {p.lr:>5g} {p.epochs:>6} {p.schedule:<8} {p.warmup:>6}  "
                    f"{p.description}")
    rows.append("every preset trains in fp32 (the paper's) with --memory-format auto; flags given with --preset "
                "override its settings (e.g. --epochs 3 --batch-size 64 --precision bf16).")
    return "\n".join(rows)
