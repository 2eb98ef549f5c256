"""The in-process reference run: sequential trainer, progress bar, run folder."""

from __future__ import annotations

import sys
import time

import torch
from auglocal.engine.config import RunConfig, build_network, optim_and_schedule
from auglocal.engine.nonfinite import NonFiniteLoss, value_text
from auglocal.engine.precision import Kernels
from auglocal.engine.trainer import EpochRecord, SequentialTrainer, StepRecord
from auglocal.launch.report.plots import plot_run
from auglocal.launch.report.tensorboard import TensorBoardSink
from auglocal.launch.run.devices import parse_gpus
from auglocal.launch.run.divergence import Divergence, resume_hint
from auglocal.launch.run.progress import epoch_line
from auglocal.launch.run.run_dir import RunDir, default_run_dir
from auglocal.workers.runtime.process_setup import apply_determinism, return_freed_memory
from tqdm import tqdm


def save_networks(run: RunDir, model, aux_nets) -> None:
    """model.pt: the bare primary network's state_dict; aux.pt: {layer index: aux net state_dict};
    for models cut from torchvision also torchvision.pt, which loads into the torchvision model itself.

    Such a model was built through auglocal.engine.models.torchvision_cuts, so where that module was never
    imported the model is no cut: a CIFAR ResNet run does not import torchvision (seconds) only to ask."""
    run.save_state("model.pt", model.state_dict())
    run.save_state("aux.pt", {int(a.layer): a.state_dict() for a in aux_nets})
    cuts = sys.modules.get("auglocal.engine.models.torchvision_cuts")
    if cuts is not None and isinstance(model, cuts.TorchvisionCut):
        run.save_state("torchvision.pt", cuts.to_torchvision_state_dict(model))


def peak_rss_mb() -> float | None:
    """This process's peak resident memory (VmHWM), the figure a whole run is judged by on CPU."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


def sequential_device(gpus: str | None) -> str:
    """The one device of the in-process trainer: the first of --gpus, 'cpu' for --gpus cpu, and without the
    flag the first CUDA device when there is one. Unavailable GPUs are bad input (UsageError)."""
    if gpus is None:
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    devices = parse_gpus(gpus)
    if len(devices) > 1:
        print(f"auglocal-launch: --sequential trains on one device; using {devices[0]} of --gpus {gpus}")
    return devices[0] if devices else "cpu"


def train_sequential(cfg: RunConfig, data, out: str | None = None, progress: bool = True,
                     threads: int | None = None, malloc: str = "keep", tensorboard: bool = True,
                     replicas: int = 1) -> int:
    """Train with the sequential trainer and write the run folder; returns the exit code."""
    if malloc == "return":
        return_freed_memory()
    if threads:
        torch.set_num_threads(threads)
    apply_determinism()   # the oracle obeys AUGLOCAL_DETERMINISTIC as every worker does (runtime/process_setup.py)
    model, aux = build_network(cfg, data)
    optim, schedule = optim_and_schedule(cfg)
    trainer = SequentialTrainer(model, aux, optim, schedule, seed=cfg.seed, device=cfg.device,
                                kernels=Kernels.from_config(cfg), nonfinite=cfg.nonfinite, replicas=replicas)
    run = RunDir(out or default_run_dir(cfg.model, cfg.rule))
    run.truncate_metrics(0)          # a fresh run: records of an earlier, interrupted one in this folder go
    run.write_json("config.json", {**cfg.to_dict(), "trainer": "sequential"})
    tb = TensorBoardSink.open(run.path, tensorboard)
    tb.begin_attempt(0)
    steps = data.steps_per_epoch(cfg.batch_size) * cfg.epochs
    total = min(steps, cfg.max_steps) if cfg.max_steps else steps
    bar = tqdm(total=total, disable=not progress, unit="batch", dynamic_ncols=True)

    def on_step(r: StepRecord) -> None:
        run.log("step", r)
        tb.step(r)
        bar.set_description(f"epoch {r.epoch + 1}/{cfg.epochs}")
        bar.set_postfix(loss=f"{r.loss:.3f}", acc=f"{r.accuracy:.1f}%", img_s=f"{r.images_per_s:.0f}")
        bar.update(1)

    closed: list[EpochRecord] = []

    def on_epoch(r: EpochRecord) -> None:
        closed.append(r)
        run.log("epoch", r)
        tb.epoch(r)
        bar.write(epoch_line(r))

    t0 = time.perf_counter()
    images, train_s = [0], [0.0]

    def counting_on_step(r: StepRecord) -> None:
        images[0] += r.images
        train_s[0] += r.images / max(r.images_per_s, 1e-9)
        on_step(r)

    diverged = None
    try:
        history = trainer.fit(data, cfg.epochs, cfg.batch_size, max_steps=cfg.max_steps,
                              on_step=counting_on_step, on_epoch=on_epoch)
    except NonFiniteLoss as err:
        diverged, history = Divergence(err.epoch, err.step, err.layer, err.what, value_text(err.value)), closed
    finally:
        bar.close()
        save_networks(run, model, aux)
    skipped = {str(k): v for k, v in trainer.stage.skipped.items() if v}
    run.write_json("summary.json", {
        "trainer": "sequential", "best_accuracy": history[-1].best_accuracy if history else None,
        "last_accuracy": history[-1].test_accuracy if history else None,
        "images_per_s": images[0] / max(train_s[0], 1e-9), "train_s": train_s[0],
        "wall_s": time.perf_counter() - t0,
        "peak_rss_mb": peak_rss_mb(), "updates": trainer.stage.update_counts, "nonfinite": cfg.nonfinite,
        "skipped": skipped, "replicas": replicas,
        **({"stopped": "nonfinite", "divergence": diverged.to_dict()} if diverged else {})})
    run.close()
    if diverged is not None:
        tb.close()
        print(f"auglocal-launch: stopped: {diverged.describe()} (--nonfinite stop); "
              f"{resume_hint(run.path, resumable=False)}", file=sys.stderr)
        return 1
    if history:
        tb.pictures(plot_run(run.read_metrics(), run.path, f"{cfg.model} {cfg.rule} d={cfg.d} on {cfg.dataset}"))
    tb.close()
    if history:
        last = history[-1]
        print(f"done: best test accuracy {last.best_accuracy:.2f}%, last {last.test_accuracy:.2f}%; "
              f"run folder {run.path}")
    return 0
