"""Gantt chart of a traced run: one row per worker, a bar per span, a few steady-state minibatches."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# compute: everything of the minibatch up to the stage output (earlier modules' full local steps, the last
# module's forward); send: handing the output downstream; aux+update: the last module's aux net, backward
# and the optimizer step, which overlap with the downstream worker's compute.
COLORS = {"compute": "tab:blue", "send": "tab:orange", "aux+update": "tab:green", "idle": "lightgrey"}


def read_traces(run_dir: Path) -> list[dict]:
    spans = []
    for path in sorted(Path(run_dir).glob("trace_worker*.jsonl")):
        with open(path, encoding="utf-8") as f:
            spans.extend(json.loads(line) for line in f if line.strip())
    return spans


def run_hosts(run_dir: Path) -> list[list[int]] | None:
    """The host processes of a run of thread workers (plan.json), or None for process workers."""
    try:
        return json.loads((Path(run_dir) / "plan.json").read_text()).get("hosts")
    except (OSError, ValueError, AttributeError):
        return None


def row_label(rank: int, hosts: list[list[int]] | None) -> str:
    """A row per worker, also for thread workers that share a host process (and a core or a GPU)."""
    for h, group in enumerate(hosts or []):
        if rank in group and len(group) > 1:
            return f"worker {rank} (thread, host {h})"
    return f"worker {rank}"


def steady_window(spans: list[dict], steps: int = 4) -> tuple[float, float]:
    """Time window covering `steps` minibatches after the pipeline has filled (skip the first quarter)."""
    train = sorted({(s["epoch"], s["step"]) for s in spans if s["span"] != "idle"})
    if not train:
        return 0.0, 0.0
    start = train[min(len(train) // 4, max(len(train) - steps, 0))]
    chosen = set(train[train.index(start): train.index(start) + steps])
    sel = [s for s in spans if (s["epoch"], s["step"]) in chosen and s["span"] != "idle"]
    return min(s["t0"] for s in sel), max(s["t1"] for s in sel)


def draw_gantt(run_dir: Path, out: Path, steps: int = 4) -> Path | None:
    """Draw the chart; returns None when the run has no trace files."""
    spans = read_traces(run_dir)
    if not spans:
        return None
    t_lo, t_hi = steady_window(spans, steps)
    ranks = sorted({s["rank"] for s in spans})
    hosts = run_hosts(run_dir)
    fig, ax = plt.subplots(figsize=(12, 1 + 0.6 * len(ranks)))
    for s in spans:
        if s["t1"] < t_lo or s["t0"] > t_hi:
            continue
        t0, t1 = max(s["t0"], t_lo), min(s["t1"], t_hi)
        ax.barh(s["rank"], (t1 - t0) * 1e3, left=(t0 - t_lo) * 1e3, color=COLORS.get(s["span"], "black"),
                edgecolor="white", linewidth=0.3)
        if s["span"] == "compute" and (t1 - t0) > 0.05 * (t_hi - t_lo):
            ax.text((t0 - t_lo) * 1e3, s["rank"], f" {s['step']}", va="center", fontsize=7, color="white")
    ax.set_yticks(ranks, [row_label(r, hosts) for r in ranks])
    ax.invert_yaxis()
    ax.set_xlabel("time (ms)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLORS.values()]
    ax.legend(handles, list(COLORS), ncol=len(COLORS), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.45))
    ax.set_title(f"pipeline spans of {steps} steady-state minibatches (numbers: step)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


TEXT_MARKS = {"compute": "#", "send": ">", "aux+update": "a", "idle": "."}


def text_gantt(run_dir: Path, width: int = 100, steps: int = 4) -> str:
    """The same chart as characters, for terminals and the README."""
    spans = read_traces(run_dir)
    if not spans:
        return ""
    t_lo, t_hi = steady_window(spans, steps)
    scale = width / max(t_hi - t_lo, 1e-9)
    rows = []
    for rank in sorted({s["rank"] for s in spans}):
        line = [" "] * width
        for s in (s for s in spans if s["rank"] == rank):
            a, b = int((s["t0"] - t_lo) * scale), int((s["t1"] - t_lo) * scale)
            for i in range(max(a, 0), min(max(b, a + 1), width)):
                line[i] = TEXT_MARKS.get(s["span"], "?")
        rows.append(f"worker {rank} |{''.join(line)}|")
    rows.append(f"{'':9}0{'':{width - 12}}{(t_hi - t_lo) * 1e3:8.0f} ms")
    return "\n".join(rows)
