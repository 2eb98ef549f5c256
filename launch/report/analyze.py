"""`auglocal-analyze`: per-layer CKA against a reference (BP) run and per-layer linear probes (paper 4.3)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from auglocal.engine.analysis import global_pool, head_logits, layer_outputs, linear_cka, probe_layers
from auglocal.engine.analysis.features import test_examples, train_examples
from auglocal.engine.atomic import DamagedFileError, atomic_write_bytes, read_torch_state
from auglocal.engine.config import RunConfig, UsageError, build_data, build_network, resolve, validate
from auglocal.engine.models.base import LayeredModel

EPILOG = """examples:
  auglocal-analyze runs/resnet32-auglocal-x --reference runs/resnet32-bp-y
  auglocal-analyze runs/resnet32-dgl-z --max-examples 2000 --out figures/dgl

Writes analysis.json, probes.png and (with --reference) cka.png into --out (default: RUN_DIR).
exit codes: 0 success, 2 bad input (missing run folder or files, runs of different models or data sets)."""


@dataclass
class LoadedRun:
    """A run folder's config (resolved against the data set) and its trained primary network."""

    path: Path
    cfg: RunConfig
    model: LayeredModel


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="auglocal-analyze",
        description="Compare the layers of a trained primary network with a reference run (linear CKA) and "
                    "measure how linearly separable each layer is (a linear probe per layer, network "
                    "frozen).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder with config.json and model.pt")
    p.add_argument("--reference", metavar="BP_RUN_DIR", default=None,
                   help="run folder of the same model on the same data set (usually BP) to compare with "
                        "by CKA")
    p.add_argument("--out", default=None, help="folder for analysis.json and the plots (default RUN_DIR)")
    p.add_argument("--max-examples", type=int, default=1000,
                   help="test images for CKA and probe evaluation, and training images for fitting the "
                        "probes (default 1000; memory grows with it: one layer's activations of these "
                        "images)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward chunk (default 256)")
    p.add_argument("--data-dir", default=None, help="data folder, if not where the runs were trained")
    p.add_argument("--device", default="cpu", help="torch device for the forward passes (default cpu)")
    return p


def read_config(run_dir: Path) -> RunConfig:
    """RunConfig of a run folder; a missing folder or config.json is a UsageError naming the path."""
    if not run_dir.is_dir():
        raise UsageError(f"no run folder at {run_dir}")
    path = run_dir / "config.json"
    if not path.is_file():
        raise UsageError(f"{run_dir} is not a run folder: {path} is missing")
    try:
        return RunConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError) as err:
        raise UsageError(f"{path} is not a valid run config: {err}") from err


def check_comparable(run: RunConfig, reference: RunConfig) -> None:
    """CKA pairs layer i with layer i on identical inputs: same model and data set, or a UsageError."""
    for name in ("model", "dataset", "num_classes", "input_size"):
        a, b = getattr(run, name), getattr(reference, name)
        if a != b:
            raise UsageError(f"the runs differ in {name}: {a!r} vs reference {b!r}; CKA compares layer by "
                             "layer on the same images, so pass a reference run of the same model and data "
                             "set")


def load_run(run_dir: Path, cfg: RunConfig, data, device: str) -> LoadedRun:
    """Rebuild the run's primary network from its config and load model.pt into it."""
    validate(cfg)
    resolve(cfg, data)
    model, _ = build_network(cfg, data)
    path = run_dir / "model.pt"
    if not path.is_file():
        raise UsageError(f"{run_dir} has no trained network: {path} is missing")
    try:
        model.load_state_dict(read_torch_state(path))
    except DamagedFileError as err:
        raise UsageError(str(err)) from err
    except (RuntimeError, KeyError) as err:
        raise UsageError(f"{path} does not fit {cfg.model} as configured in config.json: {err}") from err
    return LoadedRun(run_dir, cfg, model.to(device))


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else value


def analyse(run: LoadedRun, reference: LoadedRun | None, data, max_examples: int, batch_size: int) -> dict:
    """CKA per layer (with a reference), probe accuracies per layer and the networks' own test accuracy."""
    test_x, test_y = test_examples(data, max_examples)
    train_x, train_y = train_examples(data, max_examples, batch_size)
    runs = [run] if reference is None else [run, reference]
    sweeps = [layer_outputs(r.model, test_x, batch_size) for r in runs]
    test_features: list[list[torch.Tensor]] = [[] for _ in runs]
    cka: list[float | None] = []
    last: list[torch.Tensor] = []
    for outputs in zip(*sweeps, strict=True):
        if reference is not None:
            cka.append(_json_number(linear_cka(outputs[0], outputs[1])))
        for features, out in zip(test_features, outputs, strict=True):
            features.append(global_pool(out))
        last = list(outputs)
    report = {"max_examples": max_examples, "test_examples": len(test_y),
              "probe_train_examples": len(train_y), "layers": [asdict(info) for info in run.model.info],
              "cka": cka if reference is not None else None}
    for key, r, features, out in zip(("run", "reference"), runs, test_features, last, strict=False):
        logits = head_logits(r.model, out, batch_size)
        train_features = [global_pool(o) for o in layer_outputs(r.model, train_x, batch_size)]
        probes = probe_layers(train_features, train_y, features, test_y, r.cfg.num_classes)
        report[key] = {"path": str(r.path), "model": r.cfg.model, "rule": r.cfg.rule, "d": r.cfg.d,
                       "dataset": r.cfg.dataset,
                       "test_accuracy": 100.0 * float((logits.argmax(1) == test_y).double().mean()),
                       "probe_accuracy": [p.test_accuracy for p in probes],
                       "probe_train_accuracy": [p.train_accuracy for p in probes]}
    report.setdefault("reference", None)
    return report


def _label(entry: dict) -> str:
    rule = entry["rule"] + (f" d={entry['d']}" if entry["rule"] == "auglocal" else "")
    return f"{rule} ({Path(entry['path']).name})"


def plot_cka(report: dict, path: Path) -> Path:
    """CKA of each layer with the same layer of the reference network (paper Figure 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    values = [math.nan if v is None else v for v in report["cka"]]
    label = f"{_label(report['run'])} vs {_label(report['reference'])}"
    ax.plot(range(len(values)), values, "o-", label=label)
    ax.set_xlabel("layer index (0 = stem)")
    ax.set_ylabel("linear CKA")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{report['run']['model']} on {report['run']['dataset']}: similarity to the reference")
    return _save(fig, path)


def plot_probes(report: dict, path: Path) -> Path:
    """Held-out accuracy of a linear probe on each layer, run and reference (paper Figure 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, marker in (("run", "o-"), ("reference", "s--")):
        entry = report[key]
        if entry is not None:
            ax.plot(range(len(entry["probe_accuracy"])), entry["probe_accuracy"], marker, label=_label(entry))
    ax.set_xlabel("layer index (0 = stem)")
    ax.set_ylabel("linear probe test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{report['run']['model']} on {report['run']['dataset']}: linear separability")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def print_summary(report: dict) -> None:
    ref = report["reference"]
    print(f"{'layer':>5} {'CKA':>7} {'probe run %':>12}" + (f" {'probe ref %':>12}" if ref else ""))
    for i, acc in enumerate(report["run"]["probe_accuracy"]):
        cka = report["cka"][i] if report["cka"] else None
        line = f"{i:>5} {'-' if cka is None else f'{cka:.4f}':>7} {acc:>12.2f}"
        print(line + (f" {ref['probe_accuracy'][i]:>12.2f}" if ref else ""))
    print(f"network test accuracy on these images: run {report['run']['test_accuracy']:.2f} %"
          + (f", reference {ref['test_accuracy']:.2f} %" if ref else ""))


def run_analysis(args: argparse.Namespace) -> int:
    for name in ("max_examples", "batch_size"):
        if getattr(args, name) < 2:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 2, got {getattr(args, name)}")
    run_dir = Path(args.run_dir)
    cfg = read_config(run_dir)
    ref_dir = Path(args.reference) if args.reference else None
    ref_cfg = read_config(ref_dir) if ref_dir else None
    for c in (cfg, ref_cfg):
        if c is not None and args.data_dir:
            c.data_dir = args.data_dir
    if ref_cfg is not None:
        check_comparable(cfg, ref_cfg)
    data = build_data(cfg)
    run = load_run(run_dir, cfg, data, args.device)
    reference = load_run(ref_dir, ref_cfg, data, args.device) if ref_cfg is not None else None
    if reference is not None:
        check_comparable(run.cfg, reference.cfg)  # again, with the data set's defaults filled in
    report = analyse(run, reference, data, args.max_examples, args.batch_size)
    out = Path(args.out) if args.out else run_dir
    atomic_write_bytes(out / "analysis.json", json.dumps(report, indent=2).encode())
    plot_probes(report, out / "probes.png")
    if reference is not None:
        plot_cka(report, out / "cka.png")
    print_summary(report)
    print(f"wrote {out / 'analysis.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_analysis(args)
    except UsageError as err:
        print(f"auglocal-analyze: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
