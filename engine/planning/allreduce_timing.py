"""Measure torch.distributed all_reduce among local processes over sizes, and cache the table.

A plan with replicas is only as good as its reduction figure, and gloo's cost per size depends on the machine
(memory bandwidth, how busy its cores are), so the figure is measured here, once, and kept:

    python -m auglocal.engine.planning.allreduce_timing [--world 2] [--repeats 5]

Each process runs one thread (as the workers do); the time of one size is the median over `repeats` calls
after a warm-up, of the slowest rank (the reduction ends for everyone when the last one has it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Sequence

from auglocal.engine.planning.allreduce import SIZES, AllReduceCache, MeasuredAllReduce, machine_key


def _rank_main(rank: int, world: int, init_file: str, sizes: Sequence[int], repeats: int, out, backend: str):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        times = []
        for nbytes in sizes:
            t = torch.ones(max(nbytes // 4, 1), dtype=torch.float32)
            dist.all_reduce(t)                       # warm-up: gloo's buffers for this size
            samples = []
            for _ in range(repeats):
                dist.barrier()
                start = time.perf_counter()
                dist.all_reduce(t)
                samples.append(time.perf_counter() - start)
            times.append(samples)
        out.put((rank, times))
    finally:
        dist.destroy_process_group()


def measure_allreduce(sizes: Sequence[int] = SIZES, world: int = 2, repeats: int = 5,
                      backend: str = "gloo") -> list[float]:
    """Seconds of one all_reduce of each size (float32 bytes) among `world` fresh processes."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        procs = [ctx.Process(target=_rank_main, args=(r, world, init_file, list(sizes), repeats, queue, backend))
                 for r in range(world)]
        for p in procs:
            p.start()
        results = dict(queue.get(timeout=600) for _ in procs)
        for p in procs:
            p.join()
    # per size and repeat, the slowest rank's time; then the median over repeats
    return [statistics.median(max(results[r][i][j] for r in range(world)) for j in range(repeats))
            for i in range(len(sizes))]


def measure_and_cache(world: int = 2, repeats: int = 5, cache: AllReduceCache | None = None) -> MeasuredAllReduce:
    seconds = measure_allreduce(SIZES, world, repeats)
    cache = cache or AllReduceCache()
    cache.put(machine_key("gloo"), SIZES, seconds, world)
    found = cache.get(machine_key("gloo"))
    return found if found is not None else MeasuredAllReduce(SIZES, tuple(seconds), world, "measured now")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per size (default 5)")
    args = parser.parse_args(argv)
    table = measure_and_cache(args.world, args.repeats)
    for nbytes, s in zip(table.nbytes, table.seconds_at, strict=True):
        print(f"{nbytes:>10} B  {s * 1e3:9.3f} ms  {nbytes / s / 1e9:6.2f} GB/s")
    print(f"cached in {AllReduceCache().path}")


if __name__ == "__main__":
    main()
