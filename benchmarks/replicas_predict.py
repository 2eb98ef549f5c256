"""The simulator's side of benchmarks/replicas.py: predicted R x K layouts against DDP BP, CPU here and GPUs.

Everything here is a prediction (engine/planning/replicas.py for AugLocal x replicas, engine/planning/ddp.py
for DDP BP, the same all-reduce model for both), labelled as such in every heading it writes.
"""

from __future__ import annotations

import os

from auglocal.engine.planning.allreduce import RingModel, cpu_model_of_allreduce, gpu_model
from auglocal.engine.planning.ddp import predict_ddp
from auglocal.engine.planning.replicas import best_layout, network_of, param_bytes, simulate_layout
from auglocal.engine.planning.simulator import DEFAULT_CPU_LINK, LinkCost, run_events

GPU_MACS_PER_S = 4e12                                 # assumed, as benchmarks/speedup.py section 4
GPU_LINK = LinkCost(latency_s=150e-6, bytes_per_s=3e9)
EVENTS = run_events(40, 1, 0)                         # 40 train steps: the steady state, fill excluded


def _modules(model: str, rule: str, d: int, batch: int):
    from auglocal.engine.config import RunConfig, build_network, resolve
    from auglocal.engine.data import build_dataset
    from auglocal.engine.local_module import build_local_modules

    data = build_dataset("synthetic", seed=0, input_size=32, num_classes=10, train_size=batch * 2, test_size=batch)
    cfg = resolve(RunConfig(model=model, rule=rule, d=d, dataset="synthetic", batch_size=batch, seed=0), data)
    net, aux = build_network(cfg, data)
    x, y = data.train_batch(0, 0, 0, batch)
    return build_local_modules(net, aux), x, y, cfg


def cpu_prediction(model: str = "resnet32", d: int = 4, batch: int = 128, cores: int | None = None) -> list[str]:
    """The measured rows' layouts as the simulator predicts them on this machine's cores, from module times
    measured at one thread (or cached by an earlier plan here)."""
    from auglocal.engine.planning.timing import module_costs_timed

    cores = cores or os.cpu_count() or 1
    modules, x, y, _ = _modules(model, "auglocal", d, batch)
    bp_modules, bx, by, _ = _modules(model, "bp", d, batch)
    # both timed now, one after the other (a cached time from another hour of a shared machine would not compare)
    bp = module_costs_timed(bp_modules, bx, by, steps=3)[0]
    times = module_costs_timed(modules, x, y, steps=3)
    net = network_of(modules, x[:2], times, "s", batch)
    reduce = cpu_model_of_allreduce()
    ddp = predict_ddp(2, batch, bp / 3, 2 * bp / 3, param_bytes(bp_modules[0]), reduce)
    from auglocal.engine.planning.partition import partition

    step_costs = [t.total_s for t in net.times]
    rows = [("DDP BP, 2 processes", ddp.images_per_s),
            ("AugLocal K = 2, R = 1", simulate_layout(net, partition(step_costs, 2), 1, reduce, EVENTS,
                                                      DEFAULT_CPU_LINK, cores=cores).images_per_s),
            ("AugLocal K = 1, R = 2", simulate_layout(net, partition(step_costs, 1), 2, reduce, EVENTS,
                                                      DEFAULT_CPU_LINK, cores=cores).images_per_s)]
    best = best_layout(2, net, reduce, EVENTS, DEFAULT_CPU_LINK, cores=cores).best
    lines = [f"## 2. Predicted (simulator, not measured): the same rows on {cores} CPU cores", "",
             f"{model}, d = {d}, batch {batch}; AugLocal's module times and BP's step (the whole network, one "
             f"third forward: {bp * 1e3:.0f} ms at batch {batch}) timed now at one thread, medians of 3 "
             f"(load average {os.getloadavg()[0]:.2f}); all-reduce: {reduce.label}. DDP BP: "
             "buckets of 1 MB then 25 MB, each reduced once backward has filled it.", "",
             "| layout | predicted images/s | / DDP BP |", "|---|---:|---:|"]
    lines += [f"| {name} | {rate:.1f} | {rate / ddp.images_per_s:.2f} |" for name, rate in rows]
    lines += ["", f"Best layout for 2 devices by the chooser: {best.name} (R x K), {best.images_per_s:.1f} "
                  "images/s.", ""]
    return lines


def gpu_rows(model: str, d: int, per_gpu: int, gpus: int, reduce=None) -> dict:
    """One prediction: the best R x K for `gpus` at global batch per_gpu x gpus, R = N x K = 1, and DDP BP."""
    batch = per_gpu * gpus
    from auglocal.engine.planning.costs import module_costs_flops

    modules, x, y, _ = _modules(model, "auglocal", d, 2)
    net = network_of(modules, x, module_costs_flops(modules, x, y), "MAC", batch, GPU_MACS_PER_S)
    reduce = reduce or gpu_model(gpus)
    choice = best_layout(gpus, net, reduce, EVENTS, GPU_LINK)
    replicas_only = next(lay for lay in choice.candidates if lay.k == 1 and lay.replicas == gpus)
    bp_modules, bx, by, _ = _modules(model, "bp", d, 2)
    bp_macs = module_costs_flops(bp_modules, bx, by)[0] * batch / GPU_MACS_PER_S
    ddp = predict_ddp(gpus, batch, bp_macs / 3, 2 * bp_macs / 3, param_bytes(bp_modules[0]), reduce)
    return {"best": choice.best, "replicas_only": replicas_only, "ddp": ddp, "batch": batch,
            "modules": len(modules), "reduce": reduce}


def gpu_prediction(gpus=(8, 16, 64), models=("resnet110", "resnet32"), per_gpu=(32, 128), d: int = 4) -> list[str]:
    lines = ["## 3. Predicted (simulator, not measured): 8, 16 and 64 GPUs, AugLocal x replicas vs DDP BP", "",
             f"**Assumptions, not measurements.** Module and BP times from MACs at {GPU_MACS_PER_S:.0e} MAC/s per "
             "GPU (3 x forward MACs per image; forward one third), proportional to the batch; pipeline links "
             f"{GPU_LINK.latency_s * 1e6:.0f} us + bytes / {GPU_LINK.bytes_per_s / 1e9:.0f} GB/s; all-reduce: "
             f"{gpu_model(8).label} up to 8 GPUs, {gpu_model(16).label} beyond; 40 train steps (fill excluded). "
             "Global batch = GPUs x per-GPU batch for both; DDP BP: every GPU on its share, buckets of 1 MB "
             "then 25 MB reduced beside the backward; AugLocal: the chooser's best R x K <= GPUs, each replica "
             "on B/R, each module's gradients reduced after its backward beside the stage's later modules, "
             "the stage's step waiting for them all (as the runtime does).", "",
             "| model | per-GPU batch | GPUs | best R x K | AugLocal images/s | K = 1, R = N | DDP BP images/s | "
             "best / DDP BP | DDP's exposed all-reduce ms |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    ratios = []
    for model in models:
        for b in per_gpu:
            for n in gpus:
                r = gpu_rows(model, d, b, n)
                ratio = r["best"].images_per_s / r["ddp"].images_per_s
                ratios.append((ratio, model, b, n, r["best"].name))
                lines.append(f"| {model} | {b} | {n} | {r['best'].name} | {r['best'].images_per_s:,.0f} | "
                             f"{r['replicas_only'].images_per_s:,.0f} | {r['ddp'].images_per_s:,.0f} | "
                             f"{ratio:.2f} | {r['ddp'].exposed_reduce_s * 1e3:.3f} |")
    best = max(ratios)
    over = [r for r in ratios if r[0] > 1]
    lines += ["", ("**AugLocal x replicas overtakes DDP BP** in " + ", ".join(
        f"{m} b {b} on {n} GPUs ({name}: {x:.2f}x)" for x, m, b, n, name in over)) if over else
        (f"**AugLocal x replicas does not overtake DDP BP** in any of these cases: its best is {best[0]:.2f}x "
         f"DDP BP's images/s ({best[1]}, per-GPU batch {best[2]}, {best[3]} GPUs, {best[4]})."), ""]
    lines += slow_network_sweep(gpus[-1])
    return lines


def slow_network_sweep(gpus: int, model: str = "resnet110", per_gpu: int = 32, d: int = 4) -> list[str]:
    """Where the crossover would be: the same case with slower all-reduce links (DDP reduces the whole network
    among all N, a replica stage only its own parameters among R)."""
    lines = [f"What the interconnect would have to be for a crossover (predicted, {model}, per-GPU batch "
             f"{per_gpu}, {gpus} GPUs, 50 us per all-reduce, bandwidth swept):", "",
             "| all-reduce bandwidth | best R x K | AugLocal images/s | DDP BP images/s | best / DDP BP |",
             "|---:|---|---:|---:|---:|"]
    for bw in (40e9, 4e9, 1e9, 0.5e9, 0.25e9):
        r = gpu_rows(model, d, per_gpu, gpus, RingModel(50e-6, bw, f"{bw / 1e9:g} GB/s"))
        lines.append(f"| {bw / 1e9:g} GB/s | {r['best'].name} | {r['best'].images_per_s:,.0f} | "
                     f"{r['ddp'].images_per_s:,.0f} | {r['best'].images_per_s / r['ddp'].images_per_s:.2f} |")
    return lines + [""]
