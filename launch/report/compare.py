"""`auglocal-compare`: a grid of runs (rules x d x seeds) on one data set, resumable, as a table and plots.

Each cell runs in its own process (`auglocal-launch --sequential`), so its peak memory is its own and a
crash costs one run. A run whose folder holds summary.json is done and is skipped when the grid is run again:
an interrupted grid resumes where it stopped.

    auglocal-compare --dataset digits --model resnet20 --cells bp auglocal:2 auglocal:4 dgl \\
        --seeds 1 2 3 --epochs 5 --out results/grid
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CELLS = ["bp", "auglocal:2", "auglocal:3", "auglocal:4", "auglocal:6", "dgl", "predsim", "infopro"]


@dataclass(frozen=True)
class Cell:
    """One column of the grid: a rule, its d (AugLocal only) and tau."""

    rule: str
    d: int = 2
    tau: float | None = None

    @classmethod
    def parse(cls, text: str) -> Cell:
        """'bp', 'dgl', 'auglocal:4', 'auglocal:4:0.5' (rule:d:tau)."""
        rule, *rest = text.split(":")
        try:
            d = int(rest[0]) if rest else 2
            tau = float(rest[1]) if len(rest) > 1 else None
        except ValueError:
            raise ValueError(f"bad cell {text!r}: expected RULE[:D[:TAU]], e.g. auglocal:4:0.5") from None
        return cls(rule, d, tau)

    @property
    def name(self) -> str:
        if self.rule != "auglocal":
            return self.rule
        return f"auglocal-d{self.d}" + (f"-tau{self.tau:g}" if self.tau is not None else "")


def run_cell(cell: Cell, seed: int, args: argparse.Namespace, folder: Path) -> dict:
    """Run one (cell, seed) unless its summary exists; returns the run's summary plus its MACs."""
    summary = folder / "summary.json"
    if not summary.exists():
        cmd = [sys.executable, "-m", "auglocal.launch.cli", "--sequential", "--no-progress", "--model", args.model,
               "--rule", cell.rule, "--d", str(cell.d), "--dataset", args.dataset, "--epochs", str(args.epochs),
               "--seed", str(seed), "--out", str(folder), "--threads", str(args.threads),
               "--worker-malloc", args.malloc, "--optimizer", args.optimizer]
        for flag, value in (("--tau", cell.tau), ("--batch-size", args.batch_size), ("--lr", args.lr),
                            ("--max-steps", args.max_steps), ("--data-dir", args.data_dir),
                            ("--train-size", args.train_size), ("--test-size", args.test_size)):
            if value is not None:
                cmd += [flag, str(value)]
        print(f"[{cell.name} seed {seed}] {' '.join(cmd[2:])}", flush=True)
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not summary.exists():
            raise RuntimeError(f"{cell.name} seed {seed} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    result = json.loads(summary.read_text())
    result.update(macs(cell, args))
    return result


def macs(cell: Cell, args: argparse.Namespace) -> dict:
    """Forward MACs (G) of primary and aux nets for this cell, counted by auglocal.engine.planning."""
    from auglocal.engine.config import RunConfig, build_data, build_network, resolve
    from auglocal.engine.planning import cost_totals, head_cost, layer_costs

    cfg = RunConfig(model=args.model, rule=cell.rule, d=cell.d, tau=cell.tau, dataset=args.dataset,
                    data_dir=args.data_dir)
    data = build_data(cfg)
    resolve(cfg, data)
    model, aux = build_network(cfg, data)
    totals = cost_totals(layer_costs(model, aux), head_cost(model))
    return {"primary_gmacs": totals.primary_macs / 1e9, "aux_gmacs": totals.aux_macs / 1e9}


def summarise(results: dict[Cell, list[dict]]) -> list[dict]:
    rows = []
    for cell, runs in results.items():
        best = [r["best_accuracy"] for r in runs]
        rows.append({
            "cell": cell.name, "rule": cell.rule, "d": cell.d if cell.rule == "auglocal" else "",
            "tau": cell.tau if cell.tau is not None else "", "seeds": len(runs),
            "best_mean": statistics.mean(best), "best_std": statistics.stdev(best) if len(best) > 1 else 0.0,
            "last_mean": statistics.mean(r["last_accuracy"] for r in runs),
            "total_gmacs": runs[0]["primary_gmacs"] + runs[0]["aux_gmacs"], "aux_gmacs": runs[0]["aux_gmacs"],
            "peak_rss_mb": statistics.mean(r["peak_rss_mb"] for r in runs if r.get("peak_rss_mb")),
            "images_per_s": statistics.mean(r["images_per_s"] for r in runs)})
    return rows


def write_table(rows: list[dict], out: Path, title: str) -> None:
    with open(out / "table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# {title}", "", "| rule | best acc % (mean ± std) | last acc % | fwd GMACs (aux) | peak RSS MB | "
             "images/s |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['cell']} | {r['best_mean']:.2f} ± {r['best_std']:.2f} | {r['last_mean']:.2f} | "
                     f"{r['total_gmacs']:.3f} ({r['aux_gmacs']:.3f}) | {r['peak_rss_mb']:.0f} | "
                     f"{r['images_per_s']:.0f} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")


#: accuracy.png: (width, height) in inches at DPI dots per inch
PLOT_SIZE, DPI = (12, 4.5), 100


def _series(rows: list[dict]) -> dict[str, list[dict]]:
    """AugLocal cells grouped into one line per tau (sorted by d); every other rule on its own."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["rule"] == "auglocal":
            name = "AugLocal" + (f" tau={r['tau']:g}" if r["tau"] != "" else "")
        else:
            name = r["cell"]
        groups.setdefault(name, []).append(r)
    return {name: sorted(g, key=lambda r: r["d"] if r["d"] != "" else 0) for name, g in groups.items()}


def plot(rows: list[dict], out: Path, title: str) -> Path:
    """accuracy.png: best test accuracy vs aux depth d per rule (left; rules without a d are horizontal
    lines with their ± std band) and vs the aux nets' forward GMACs per image (right; the cost axis of the
    paper's Table 7), each point the mean ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_d, ax_f) = plt.subplots(1, 2, figsize=PLOT_SIZE)
    for i, (name, group) in enumerate(_series(rows).items()):
        color = f"C{i}"
        mean = [r["best_mean"] for r in group]
        std = [r["best_std"] for r in group]
        if group[0]["rule"] == "auglocal":
            ax_d.errorbar([r["d"] for r in group], mean, std, fmt="o-", color=color, label=name, capsize=3)
        else:
            ax_d.axhline(mean[0], ls="--", color=color, label=name)
            ax_d.axhspan(mean[0] - std[0], mean[0] + std[0], color=color, alpha=0.12)
        macs = [r["aux_gmacs"] for r in group]
        ax_f.errorbar(macs, mean, std, fmt="o-" if len(group) > 1 else "s", color=color, label=name, capsize=3)
        for r in group:
            ax_f.annotate(r["cell"], (r["aux_gmacs"], r["best_mean"]), fontsize=7, xytext=(3, 3),
                          textcoords="offset points")
    ax_d.set_xlabel("aux depth d (AugLocal)")
    ax_d.set_ylabel("best test accuracy (%)")
    ax_d.legend(fontsize=8)
    ax_d.grid(alpha=0.3)
    ax_f.set_xlabel("aux-net forward GMACs per image")
    ax_f.set_ylabel("best test accuracy (%)")
    ax_f.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = out / "accuracy.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="auglocal-compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--cells", nargs="+", default=DEFAULT_CELLS, help="RULE[:D[:TAU]] per grid column")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd",
                   help="every run's optimizer (auglocal-launch --optimizer; adamw for the ViT)")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--train-size", type=int, default=None, help="evenly spaced training subset per run")
    p.add_argument("--test-size", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--malloc", choices=("return", "keep"), default="keep",
                   help="allocator policy of each run (--worker-malloc); keep is about 2x faster on CPU")
    p.add_argument("--out", required=True, help="grid folder (runs/, table.md, table.csv, accuracy.png)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from auglocal.engine.auxnets import RULES

    try:
        cells = [Cell.parse(c) for c in args.cells]
        unknown = [c.rule for c in cells if c.rule not in RULES]
        if unknown:
            raise ValueError(f"unknown rule(s) {unknown}; choose from {', '.join(RULES)}")
    except ValueError as err:
        print(f"auglocal-compare: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[Cell, list[dict]] = {}
    try:
        for cell in cells:
            results[cell] = [run_cell(cell, seed, args, out / "runs" / f"{cell.name}-seed{seed}")
                             for seed in args.seeds]
    except RuntimeError as err:
        print(f"auglocal-compare: {err}\nrun the same command again to resume the grid", file=sys.stderr)
        return 1
    subset = f", {args.train_size or 'all'} train / {args.test_size or 'all'} test images"
    title = (f"{args.model} on {args.dataset}{subset}, {args.epochs} epochs, seeds {args.seeds}, "
             f"malloc {args.malloc}")
    rows = summarise(results)
    write_table(rows, out, title)
    plot(rows, out, title)
    print((out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
