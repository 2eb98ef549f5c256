"""The run's pictures as PNGs: loss and accuracy, local losses per layer over time, worker usage over time."""

from __future__ import annotations

from pathlib import Path

import numpy as np

DPI = 100
#: (width, height) in inches of each picture; at DPI 100 the PNG is 100x that in pixels
CURVES_SIZE = (10, 4)
LOCAL_LOSSES_SIZE = (10, 5)
WORKERS_SIZE = (10, 5)
#: at most this many columns in a heat map: longer runs are averaged over bins of consecutive steps
MAX_COLUMNS = 400


def _pyplot():
    """matplotlib, imported when a picture is drawn: importing it costs a second a dry run need not pay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plain_log_labels(axis) -> None:
    """Label a log axis in plain text ("0.5", "2") instead of matplotlib's default mathtext ("$10^{0}$"):
    the same ticks and which of them are labelled, but without parsing TeX for each label, which was most of
    the time a run spent drawing its pictures (a short run's log axis spans less than a decade, so every
    minor tick is labelled)."""
    from matplotlib.ticker import LogFormatter

    class PlainLogFormatter(LogFormatter):
        """LogFormatter decides which ticks get a label; each label reads as a number ("0.01", not "1e-02")."""

        def _num_to_string(self, x, vmin, vmax):
            return f"{x:.3g}"

    axis.set_major_formatter(PlainLogFormatter(labelOnlyBase=False))
    axis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
    return path


def plot_curves(metrics: list[dict], path: Path, title: str) -> Path:
    """Training loss per step (left) and train/test accuracy per epoch (right)."""
    steps = [m for m in metrics if m["kind"] == "step"]
    epochs = [m for m in metrics if m["kind"] == "epoch"]
    fig, (ax_loss, ax_acc) = _pyplot().subplots(1, 2, figsize=CURVES_SIZE)
    ax_loss.plot([m["global_step"] for m in steps], [m["loss"] for m in steps], lw=1)
    ax_loss.set_xlabel("minibatch")
    ax_loss.set_ylabel("global loss (top module CE)")
    ax_loss.set_yscale("log")
    plain_log_labels(ax_loss.yaxis)
    ax_loss.grid(alpha=0.3)
    ep = [m["epoch"] + 1 for m in epochs]
    ax_acc.plot(ep, [m["train_accuracy"] for m in epochs], "o-", label="train (augmented)")
    ax_acc.plot(ep, [m["test_accuracy"] for m in epochs], "s-", label="test")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def _binned(matrix: np.ndarray, max_columns: int = MAX_COLUMNS) -> tuple[np.ndarray, int]:
    """Columns averaged in bins of consecutive steps so that at most max_columns remain; (matrix, bin)."""
    n = matrix.shape[1]
    size = max(1, -(-n // max_columns))
    if size == 1:
        return matrix, 1
    pad = (-n) % size
    padded = np.pad(matrix, ((0, 0), (0, pad)), constant_values=np.nan)
    return np.nanmean(padded.reshape(matrix.shape[0], -1, size), axis=2), size


def local_loss_matrix(metrics: list[dict]) -> tuple[list[int], list[int], np.ndarray]:
    """(layers, global steps, losses[layer, step]) from the step rows' local_losses; NaN where absent."""
    steps = [m for m in metrics if m["kind"] == "step"]
    layers = sorted({int(k) for m in steps for k in m.get("local_losses", {})})
    row = {layer: i for i, layer in enumerate(layers)}
    matrix = np.full((len(layers), len(steps)), np.nan)
    for j, m in enumerate(steps):
        for k, v in m.get("local_losses", {}).items():
            matrix[row[int(k)], j] = float(v)
    return layers, [m["global_step"] for m in steps], matrix


def plot_local_losses(metrics: list[dict], path: Path, title: str) -> Path | None:
    """Heat map of every local layer's loss over the run (layer x minibatch, log colour scale).

    What only local learning shows: each layer has its own loss, so one can watch the early layers settle
    while the deep ones still learn, or spot a layer whose aux net does not learn at all. The top row is
    the global loss of the top group. None when the rows carry no local losses.
    """
    layers, steps, matrix = local_loss_matrix(metrics)
    if not layers or not steps:
        return None
    from matplotlib.colors import LogNorm

    matrix, size = _binned(matrix)
    positive = matrix[np.isfinite(matrix) & (matrix > 0)]
    norm = LogNorm(vmin=max(positive.min(), 1e-4), vmax=positive.max()) if positive.size else None
    fig, ax = _pyplot().subplots(figsize=LOCAL_LOSSES_SIZE)
    image = ax.imshow(np.ma.masked_invalid(matrix), aspect="auto", origin="lower", interpolation="nearest",
                      cmap="viridis", norm=norm, extent=(steps[0] - 0.5, steps[-1] + 0.5, -0.5, len(layers) - 0.5))
    ticks = np.linspace(0, len(layers) - 1, min(len(layers), 12)).round().astype(int)
    ax.set_yticks(ticks, [str(layers[i]) for i in ticks])
    ax.set_xlabel("minibatch" + (f" (mean of {size} per column)" if size > 1 else ""))
    ax.set_ylabel(f"local layer (top: {layers[-1]}, global loss)")
    bar = fig.colorbar(image, ax=ax, label="loss")
    if norm is not None:
        plain_log_labels(bar.ax.yaxis)
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def _padded(samples: list[list[float | None]]) -> np.ndarray:
    """[worker, sample] with NaN where a sample has no such worker: a run resumed with another --workers
    has samples of different lengths (and None, worker 0's queue, is NaN too)."""
    width = max(len(s) for s in samples)
    out = np.full((width, len(samples)), np.nan)
    for j, sample in enumerate(samples):
        out[: len(sample), j] = [np.nan if v is None else v for v in sample]
    return out


def plot_worker_usage(metrics: list[dict], path: Path, title: str) -> Path | None:
    """Each worker's busy fraction over the run (heat map: worker x minibatch, dark = idle) and the
    queue in front of each worker (minibatches finished upstream, not yet by it). None without samples."""
    rows = [m for m in metrics if m["kind"] == "workers"]
    if not rows:
        return None
    steps = np.array([m["global_step"] for m in rows], dtype=float)
    busy = np.ma.masked_invalid(_padded([m["busy"] for m in rows]))
    queue = _padded([m["queue"] for m in rows])
    edges = np.concatenate([[0.0], steps])          # sample i covers the minibatches after the previous one
    workers = np.arange(busy.shape[0] + 1) - 0.5
    from matplotlib.ticker import MaxNLocator

    fig, (ax_busy, ax_queue) = _pyplot().subplots(2, 1, figsize=WORKERS_SIZE, sharex=True,
                                            gridspec_kw={"height_ratios": [3, 2]})
    mesh = ax_busy.pcolormesh(edges, workers, busy, cmap="magma", vmin=0, vmax=1, shading="flat")
    ticks = np.linspace(0, busy.shape[0] - 1, min(busy.shape[0], 10)).round().astype(int)
    ax_busy.set_yticks(ticks, [str(t) for t in ticks])
    ax_busy.set_ylabel("worker")
    ax_busy.set_title(title)
    for rank in range(1, queue.shape[0]):
        ax_queue.step(steps, queue[rank], where="pre", lw=1, label=f"worker {rank}")
    ax_queue.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_queue.set_ylim(-0.2, max(2.0, float(np.nanmax(queue, initial=0.0))) + 0.5)
    ax_queue.set_ylabel("queue (minibatches)")
    ax_queue.set_xlabel("minibatch")
    ax_queue.grid(alpha=0.3)
    if 1 < queue.shape[0] <= 8:
        ax_queue.legend(fontsize=7, loc="upper right")
    fig.colorbar(mesh, ax=[ax_busy, ax_queue], label="busy fraction (the rest idle)")
    return _save(fig, path)


def plot_run(metrics: list[dict], run_dir: Path, title: str) -> list[Path]:
    """Every picture a run's metrics allow: curves.png, local_losses.png and (pipeline) workers.png."""
    run_dir = Path(run_dir)
    drawn = [plot_curves(metrics, run_dir / "curves.png", title),
             plot_local_losses(metrics, run_dir / "local_losses.png", f"local losses: {title}"),
             plot_worker_usage(metrics, run_dir / "workers.png", f"worker usage: {title}")]
    return [p for p in drawn if p is not None]
