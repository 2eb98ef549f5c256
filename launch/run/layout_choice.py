"""--replicas in planning: the dry run's R x K table and the layout `--replicas auto` picks for the devices.

Both come from engine/planning/replicas.py, fed with what the run's plan balanced (module times when this
machine measured them, else MACs at an assumed rate, said so) and the all-reduce model of where the workers
compute: gloo measured on this machine (or the project's measured default) on CPU, the assumed NCCL ring on
GPUs.
"""

from __future__ import annotations

import argparse
import os

from auglocal.engine.config import RunConfig, UsageError

#: ASSUMED effective rates, used only when a plan's costs are MACs (nothing measured): a GPU on CIFAR ResNet
#: layers (benchmarks/speedup.py's label) and one CPU core (ResNet-32 BP at ~58 images/s per core here, 3 x 69
#: MMAC per image: ~1.2e10)
GPU_MACS_PER_S = 4e12
CPU_MACS_PER_S = 1e10


def replicas_asked(args: argparse.Namespace) -> int | str:
    """--replicas as given: an int >= 1 or 'auto' (1 before that flag exists)."""
    value = getattr(args, "replicas", 1)
    if value is None:
        return 1
    if isinstance(value, str) and value != "auto":
        try:
            value = int(value)
        except ValueError:
            raise UsageError(f"--replicas {value!r}: expected auto or a number >= 1") from None
    if value != "auto" and value < 1:
        raise UsageError(f"--replicas must be auto or a number >= 1, got {value}")
    return value


def _inputs(cfg: RunConfig, data, plan, modules, on_gpu: bool):
    from auglocal.engine.planning.allreduce import cpu_model_of_allreduce
    from auglocal.engine.planning.replicas import network_of

    x, _ = data.shape_batch(2)
    rate = GPU_MACS_PER_S if on_gpu else CPU_MACS_PER_S
    net = network_of(modules, x, plan.module_costs, plan.unit, cfg.batch_size, None if plan.unit == "s" else rate)
    costs = ("module times (" + plan.source + ")" if plan.unit == "s" else
             f"MACs at an assumed {rate:.0e} MAC/s per {'GPU' if on_gpu else 'core'} (not measured)")
    return net, costs, (None if on_gpu else cpu_model_of_allreduce())


def layout_choice(cfg: RunConfig, data, plan, modules, devices: int, on_gpu: bool, replicas: int | str,
                  fixed_k: int | None):
    """(LayoutChoice, label): the candidates for `devices` (R fixed unless 'auto'; K fixed if given)."""
    from auglocal.engine.planning.allreduce import gpu_model
    from auglocal.engine.planning.replicas import best_layout
    from auglocal.engine.planning.simulator import DEFAULT_CPU_LINK, LinkCost, run_events

    net, costs, cpu_reduce = _inputs(cfg, data, plan, modules, on_gpu)
    reduce = gpu_model(devices) if on_gpu else cpu_reduce
    events = run_events(data.steps_per_epoch(cfg.batch_size), 1, data.num_test_batches(cfg.batch_size),
                        max_steps=cfg.max_steps)
    link = LinkCost(150e-6, 3e9) if on_gpu else DEFAULT_CPU_LINK
    cores = None if on_gpu else (os.cpu_count() or 1)
    r_values = None if replicas == "auto" else [int(replicas)]
    if r_values and r_values[0] * (fixed_k or 1) > devices:
        devices = r_values[0] * (fixed_k or 1)      # the user asked for more: predict what was asked
    choice = best_layout(devices, net, reduce, events, link, cores=cores, replicas=r_values,
                         ks=[fixed_k] if fixed_k else None)
    where = "GPUs" if on_gpu else f"CPU processes on {cores} cores"
    label = f"{devices} {where}; costs: {costs}; all-reduce: {reduce.label}; time proportional to the batch"
    return choice, label


def dry_run_table(cfg: RunConfig, data, args: argparse.Namespace, plan, placement, network) -> str | None:
    """The dry run's R x K report, or None when --replicas is 1."""
    from auglocal.engine.local_module import build_local_modules
    from auglocal.engine.planning.replicas import format_candidates, format_layout

    replicas = replicas_asked(args)
    if replicas == 1:
        return None
    on_gpu = placement.devices[0].startswith("cuda")
    devices = len(set(placement.devices)) if on_gpu else (os.cpu_count() or 1)
    fixed_k = plan.k if (replicas != "auto" or str(args.workers) != "auto") else None
    modules = build_local_modules(*network)
    choice, label = layout_choice(cfg, data, plan, modules, devices, on_gpu, replicas, fixed_k)
    lines = ["", f"replicas ({'--replicas auto' if replicas == 'auto' else f'--replicas {replicas}'}): "
                 f"R copies of the K-worker pipeline, each on B/R = a shard of the batch; {label}"]
    if replicas == "auto":
        lines += [format_candidates(choice), f"chosen: {choice.best.name} (R x K)"]
    lines.append(format_layout(choice.best))
    return "\n".join(lines)
