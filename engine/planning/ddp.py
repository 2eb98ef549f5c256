"""Data-parallel BP (torch DDP) over N devices, modelled with the same all-reduce costs as the replicas.

The baseline a user with many devices would otherwise pick, so a layout's prediction is only worth as much as
the comparison with this one. The model, DDP's own (torch.nn.parallel.DistributedDataParallel, default
buckets): each of N devices runs forward and backward of the whole network on B/N images; gradients are
packed into buckets in reverse parameter order, the first bucket of 1 MB and the others of 25 MB, and each
bucket's all-reduce starts once backward has filled it, beside the rest of the backward. All-reduces run one
at a time. Backward is taken to produce gradients at a steady rate, so bucket i is ready when its share of the
bytes is done; the step ends when the last all-reduce does. Time is proportional to the batch, as in
engine/planning/replicas.py.
"""

from __future__ import annotations

from dataclasses import dataclass

#: torch DDP's defaults: bucket_cap_mb = 25, and the first bucket capped at 1 MB (dist._DEFAULT_FIRST_BUCKET_BYTES)
BUCKET_BYTES = 25 * 2**20
FIRST_BUCKET_BYTES = 2**20


def buckets(param_bytes: int, first: int = FIRST_BUCKET_BYTES, cap: int = BUCKET_BYTES) -> list[int]:
    """The bucket sizes DDP fills, in the order backward fills them."""
    sizes, left = [], int(param_bytes)
    while left > 0:
        size = min(left, first if not sizes else cap)
        sizes.append(size)
        left -= size
    return sizes


@dataclass
class DdpPrediction:
    devices: int
    per_device_batch: float
    step_s: float
    compute_s: float
    exposed_reduce_s: float
    images_per_s: float


def predict_ddp(devices: int, batch: int, forward_s: float, backward_s: float, param_bytes: int, reduce,
                overlap: bool = True) -> DdpPrediction:
    """Global batch `batch` over `devices`; `forward_s`, `backward_s`: the whole network's seconds at the global
    batch on one device (scaled by 1 / devices); `overlap` False: every all-reduce after the backward."""
    if devices < 1:
        raise ValueError(f"devices must be >= 1, got {devices}")
    fwd, bwd = forward_s / devices, backward_s / devices
    sizes = buckets(param_bytes)
    t = fwd + (0.0 if overlap else bwd)
    done, end = 0, t
    for size in sizes:
        done += size
        ready = fwd + bwd * done / param_bytes if overlap else t
        end = max(end, ready) + reduce.seconds(size, devices)
    step = max(end, fwd + bwd)
    return DdpPrediction(devices, batch / devices, step, fwd + bwd, step - fwd - bwd, batch / step)
