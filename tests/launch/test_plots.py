"""The run's pictures from metrics rows: each a PNG of its fixed size, or none when there is nothing to show."""

import math

import numpy as np
from auglocal.launch.report.plots import (
    CURVES_SIZE,
    DPI,
    LOCAL_LOSSES_SIZE,
    MAX_COLUMNS,
    WORKERS_SIZE,
    local_loss_matrix,
    plot_run,
)

from tests.launch.pictures import png_size


def metrics(steps: int, layers: int = 5, workers: int = 3) -> list[dict]:
    rows = []
    for g in range(1, steps + 1):
        rows.append({"kind": "step", "epoch": 0, "step": g - 1, "global_step": g, "loss": 2.0 / g,
                     "accuracy": 50.0, "lr": 0.1, "images_per_s": 100.0, "images": 8,
                     "local_losses": {str(i): 2.0 / g + 0.1 * i for i in range(layers)}})
        if g % 2 == 0:
            rows.append({"kind": "workers", "global_step": g, "seconds": 0.1 * g,
                         "busy": [0.5 + 0.1 * r for r in range(workers)],
                         "queue": [None] + [r % 3 for r in range(1, workers)]})
    rows.append({"kind": "epoch", "epoch": 0, "train_loss": 1.0, "train_accuracy": 60.0, "test_accuracy": 55.0,
                 "best_accuracy": 55.0, "seconds": 1.0})
    return rows


def test_every_picture_has_its_size(tmp_path):
    drawn = plot_run(metrics(40), tmp_path, "test run")
    assert [p.name for p in drawn] == ["curves.png", "local_losses.png", "workers.png"]
    for name, (w, h) in (("curves.png", CURVES_SIZE), ("local_losses.png", LOCAL_LOSSES_SIZE),
                         ("workers.png", WORKERS_SIZE)):
        assert png_size(tmp_path / name) == (w * DPI, h * DPI)


def test_a_sequential_run_has_no_worker_picture(tmp_path):
    rows = [r for r in metrics(10) if r["kind"] != "workers"]
    assert [p.name for p in plot_run(rows, tmp_path, "sequential")] == ["curves.png", "local_losses.png"]
    assert not (tmp_path / "workers.png").exists()


def test_long_runs_are_binned_and_every_layer_is_a_row(tmp_path):
    rows = metrics(3 * MAX_COLUMNS + 7, layers=55, workers=52)
    layers, steps, matrix = local_loss_matrix(rows)
    assert layers == list(range(55)) and matrix.shape == (55, len(steps))
    assert matrix[3, 0] == rows[0]["local_losses"]["3"]
    assert png_size(plot_run(rows, tmp_path, "resnet110, one worker per module")[1]) == \
        (LOCAL_LOSSES_SIZE[0] * DPI, LOCAL_LOSSES_SIZE[1] * DPI)


def test_missing_losses_are_gaps_not_zeros():
    rows = metrics(4, layers=3)
    del rows[0]["local_losses"]["1"]
    _, _, matrix = local_loss_matrix(rows)
    assert math.isnan(matrix[1, 0]) and not np.isnan(matrix[1, 1:]).any()


def test_a_run_resumed_with_more_workers_still_draws(tmp_path):
    """--resume may change --workers: samples of 2 workers, then of 3."""
    rows = metrics(10, workers=2) + [r for r in metrics(20, workers=3) if r["kind"] == "workers"
                                     and r["global_step"] > 10]
    assert png_size(plot_run(rows, tmp_path, "resumed")[2]) == (WORKERS_SIZE[0] * DPI, WORKERS_SIZE[1] * DPI)


def test_log_axes_are_labelled_in_plain_numbers_minor_ticks_included():
    """A short run's loss spans less than a decade, so its minor ticks carry the labels: they must read as
    numbers and be plain text (matplotlib's default writes each as mathtext, parsed per label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from auglocal.launch.report.plots import plain_log_labels

    for low, high, expected in [(1.3, 2.0, {"1.4", "1.6", "2"}), (1e-3, 3.0, {"0.001", "0.01", "0.1", "1"})]:
        fig, ax = plt.subplots()
        ax.plot([1, 2], [low, high])
        ax.set_yscale("log")
        plain_log_labels(ax.yaxis)
        fig.canvas.draw()
        labels = {t.get_text() for t in ax.yaxis.get_majorticklabels() + ax.yaxis.get_minorticklabels()} - {""}
        plt.close(fig)
        assert expected <= labels, labels
        assert not any("$" in label or "e" in label for label in labels), labels
