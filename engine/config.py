"""The run configuration: every choice of a run as one plain dataclass, and how its parts are built."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields

import torch
from auglocal.engine.auxnets import DGL_POOLS, RULES, STRATEGIES, build_aux_nets
from auglocal.engine.data import DATASETS, build_dataset, is_user_dataset
from auglocal.engine.models import build_model, is_spec, model_names, resolve_spec
from auglocal.engine.nonfinite import POLICIES as NONFINITE_POLICIES
from auglocal.engine.precision import MEMORY_FORMATS, PRECISIONS, resolve_memory_format
from auglocal.engine.schedule import (
    ADAMW_LR,
    OPTIMIZERS,
    SCHEDULES,
    SHORT_RUN_EPOCHS,
    LRSchedule,
    OptimConfig,
    default_warmup,
)


class UsageError(ValueError):
    """Bad input from the user: the CLI prints it and exits with code 2."""


@dataclass
class RunConfig:
    """All settings of one run. Saved as config.json; a worker rebuilds its modules from it alone."""

    model: str = "resnet32"
    rule: str = "auglocal"
    d: int = 4
    tau: float | None = None          # None: the family default (0.5 CIFAR convention, 0 ImageNet)
    strategy: str = "uniform"
    convention: str | None = None     # None: the model's default
    dataset: str = "mnist5k"
    data_dir: str | None = None
    num_classes: int | None = None    # None: the data set's
    input_size: int | None = None     # None: the data set's
    train_size: int | None = None     # None: the whole training set; else that many evenly spaced images
    test_size: int | None = None      # likewise for the test set (quick runs, grids)
    epochs: int = 3
    batch_size: int | None = None     # None: the data set's default
    lr: float | None = None           # None: the data set's default (sgd), ADAMW_LR (adamw)
    optimizer: str = "sgd"            # sgd: the paper's; adamw: for transformers (engine/schedule.py)
    warmup: int | None = None         # None: 10 of 400 epochs, scaled
    schedule: str = "auto"           # auto: the paper's 'cifar' schedule from 50 epochs on, else 'cosine'
    seed: int = 1234
    max_steps: int | None = None
    device: str = "cpu"
    memory_format: str = "auto"       # auto: the device's faster one (auglocal.engine.precision.AUTO_MEMORY_FORMAT)
    precision: str = "fp32"           # fp32, or bf16/fp16 autocast (weights and optimizer state stay fp32)
    nonfinite: str = "stop"           # a non-finite loss/gradient: 'stop' the run or 'skip' that module's update;
                                      # not in IDENTITY_FIELDS: --resume may change it (engine/nonfinite.py)
    dgl_pool: str = "dgl"             # DGL's first pool: 'dgl' (DGL's code) or 'auglocal' (its ImageNet code's)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        # a config saved before the option existed describes a run that computed in NCHW
        values.setdefault("memory_format", "contiguous")
        return cls(**values)


#: the fields that decide what a run computes: a checkpoint continues only a run with the same values of all
IDENTITY_FIELDS = ("model", "rule", "d", "tau", "strategy", "convention", "dataset", "num_classes", "input_size",
                   "train_size", "test_size", "schedule", "epochs", "batch_size", "lr", "warmup", "seed",
                   "max_steps", "memory_format", "precision", "dgl_pool", "optimizer")
#: identity fields added after runs were first saved, with the value every earlier run had: the digest leaves such
#: a field out while it has that value, so an earlier run's checkpoints still verify
ADDED_IDENTITY = {"dgl_pool": "dgl", "optimizer": "sgd"}


def config_digest(cfg: RunConfig) -> str:
    """SHA-256 of the canonical JSON of IDENTITY_FIELDS: equal exactly when two configs compute the same run."""
    values = {name: getattr(cfg, name) for name in IDENTITY_FIELDS}
    for name, earlier in ADDED_IDENTITY.items():
        if values[name] == earlier:
            del values[name]
    text = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def check_number(flag: str, value: float | int | None, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> None:
    """Reject nan, inf and values outside [low, high] (or (low, high] when low_open) with the flag's name."""
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"{flag} must be a finite number, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise UsageError(f"{flag} must be {'>' if low_open else '>='} {low:g}, got {value:g}")
    if high is not None and value > high:
        raise UsageError(f"{flag} must be <= {high:g}, got {value:g}")


def validate(cfg: RunConfig) -> None:
    """Reject impossible settings early, with the allowed values in the message."""
    if is_spec(cfg.model):
        try:    # import the function now (a typo fails before any worker starts); building it waits for the run
            resolve_spec(cfg.model)
        except ValueError as err:
            raise UsageError(f"--model: {err}") from err
    elif cfg.model not in model_names():
        raise UsageError(f"unknown model {cfg.model!r}; choose one of: {', '.join(model_names())}")
    if cfg.rule not in RULES:
        raise UsageError(f"unknown rule {cfg.rule!r}; choose one of: {', '.join(RULES)}")
    if cfg.strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {cfg.strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    if cfg.dataset not in DATASETS and not is_user_dataset(cfg.dataset):    # user: a Dataset given to train()
        raise UsageError(f"unknown data set {cfg.dataset!r}; choose one of: {', '.join(DATASETS)}")
    if cfg.d < 2:
        raise UsageError(f"--d must be >= 2 (the paper's d counts the aux classifier), got {cfg.d}")
    if cfg.tau is not None and not 0.0 <= cfg.tau <= 1.0:     # also false for nan
        raise UsageError(f"--tau must lie in [0, 1], got {cfg.tau}")
    if cfg.schedule not in (*SCHEDULES, "auto"):
        raise UsageError(f"--schedule must be auto or one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}")
    if cfg.optimizer not in OPTIMIZERS:
        raise UsageError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {cfg.optimizer!r}")
    if cfg.convention not in (None, "cifar", "imagenet"):
        raise UsageError(f"--convention must be cifar or imagenet, got {cfg.convention!r}")
    for name in ("epochs", "batch_size", "max_steps", "num_classes", "input_size", "train_size", "test_size"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    check_number("--lr", cfg.lr, low=0, low_open=True)
    check_number("--seed", cfg.seed, low=0, high=2**63 - 1)
    check_number("--warmup-epochs", cfg.warmup, low=0)
    if cfg.memory_format not in MEMORY_FORMATS:
        raise UsageError(f"--memory-format must be one of {', '.join(MEMORY_FORMATS)}, got {cfg.memory_format!r}")
    if cfg.precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")
    if cfg.dgl_pool not in DGL_POOLS:
        raise UsageError(f"--dgl-pool must be one of {', '.join(DGL_POOLS)}, got {cfg.dgl_pool!r}")
    if cfg.nonfinite not in NONFINITE_POLICIES:
        raise UsageError(f"--nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, got {cfg.nonfinite!r}")


def build_data(cfg: RunConfig, check_files: bool = False):
    """The data source; missing or malformed data directories become UsageErrors naming the file.

    check_files: decode every image of a data set read file by file (ImageNet) now, so that a bad file stops
    the run before training rather than after hours of it."""
    try:
        data = build_dataset(cfg.dataset, cfg.data_dir, seed=cfg.seed, input_size=cfg.input_size,
                             num_classes=cfg.num_classes, train_size=cfg.train_size, test_size=cfg.test_size)
        if check_files and hasattr(data, "check_images"):
            data.check_images()
        return data
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from err


def resolve(cfg: RunConfig, data) -> RunConfig:
    """Fill the data-set dependent defaults (classes, input size, batch, lr, warm-up, tau) and resolve the memory
    format once, here, so the saved config and every worker get the same one."""
    cfg.num_classes = cfg.num_classes or data.num_classes
    cfg.input_size = cfg.input_size or data.input_size
    cfg.batch_size = cfg.batch_size or data.default_batch_size
    cfg.lr = cfg.lr or (ADAMW_LR if cfg.optimizer == "adamw" else data.default_lr)
    if cfg.schedule == "auto":
        cfg.schedule = "cifar" if cfg.epochs >= SHORT_RUN_EPOCHS else "cosine"
    if cfg.warmup is None:
        cfg.warmup = default_warmup(cfg.epochs) if cfg.schedule == "cifar" else 0
    cfg.memory_format = resolve_memory_format(cfg.memory_format, cfg.device)
    return cfg


def build_network(cfg: RunConfig, data=None):
    """Primary network and aux nets, seeded, so that every process builds identical initial weights.

    `data` supplies the input normalisation that InfoPro's reconstruction target needs to undo."""
    torch.manual_seed(cfg.seed)
    try:
        model = build_model(cfg.model, cfg.num_classes or 10, cfg.input_size or 32)
    except ValueError as err:
        if not is_spec(cfg.model):
            raise
        raise UsageError(f"--model: {err}") from err
    convention = cfg.convention or model.convention
    if cfg.tau is None:
        cfg.tau = 0.5 if convention == "cifar" and cfg.rule == "auglocal" else 0.0
    try:
        extra = {"input_mean": data.mean, "input_std": data.std} if data is not None else {}
        aux = build_aux_nets(model, cfg.rule, d=cfg.d, tau=cfg.tau, strategy=cfg.strategy,
                             convention=convention, dgl_pool=cfg.dgl_pool, **extra)
    except ValueError as err:
        raise UsageError(str(err)) from err
    return model, aux


def optim_and_schedule(cfg: RunConfig) -> tuple[OptimConfig, LRSchedule]:
    lr = cfg.lr if cfg.lr is not None else 0.1
    return OptimConfig(lr=lr, kind=cfg.optimizer), LRSchedule(cfg.schedule, lr, cfg.epochs, cfg.warmup or 0)
