"""Loss and accuracy curves of a run as a PNG (people would rather look than read)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(metrics: list[dict], path: Path, title: str) -> Path:
    """Training loss per step (left) and train/test accuracy per epoch (right)."""
    steps = [m for m in metrics if m["kind"] == "step"]
    epochs = [m for m in metrics if m["kind"] == "epoch"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot([m["global_step"] for m in steps], [m["loss"] for m in steps], lw=1)
    ax_loss.set_xlabel("minibatch")
    ax_loss.set_ylabel("global loss (top module CE)")
    ax_loss.set_yscale("log")
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
