"""Which layers an AugLocal aux net copies and how deep it is (docs/method.md 3.2, 3.3); which layers get one is
each rule's own count (engine/auxnets/registry.py's num_local_layers)."""

from __future__ import annotations

CONVENTIONS = ("cifar", "imagenet")


def select_layers(layer: int, k: int, num_layers: int) -> list[int]:
    """The k primary layers (0-based) whose architectures the aux net of `layer` copies: uniform sampling.

    idx_i = round(layer + (L - 1 - layer) / k * i), i = 1..k, with Python's round (half-to-even) on the float
    value computed in exactly this order, as the paper's code does (docs/method.md 3.2); so float rounding decides
    ties the way it did for the paper's runs. When k >= L - 1 - layer there are not enough layers left to
    sample from and the aux net copies all remaining layers layer+1..L-1 (the min(.) clamp of eq. 3).
    The last selected index is therefore always L - 1.
    """
    if num_layers < 2:
        raise ValueError(f"num_layers must be >= 2 to have a layer with an aux net, got {num_layers}")
    if not 0 <= layer < num_layers - 1:
        raise ValueError(f"layer must be in 0..{num_layers - 2} (the last layer has no aux net), got {layer}")
    if k < 1:
        raise ValueError(f"k (number of selected layers, = d - 1) must be >= 1, got {k}")
    remaining = num_layers - 1 - layer
    if k >= remaining:
        return list(range(layer + 1, num_layers))
    return [round(layer + remaining / k * i) for i in range(1, k + 1)]


def pyramid_ks(k: int, num_aux: int, tau: float) -> list[int]:
    """Selected-layer counts k_i of the pyramidal depth rule for aux nets i = 0..num_aux-1 (docs/method.md 3.3).

    r_i = tau * i / (num_aux - 1) and k_i = max(1, round(k * (1 - r_i) + 1 * r_i)): depth shrinks linearly
    from k at the first aux-equipped layer towards d_min - 1 = 1, weighted by tau. num_aux - 1 equals the
    paper code's M - 2 (M = L - k under the cifar convention); with one aux net (or none) there is no ramp.
    tau = 0 gives a constant k. Evaluated in float in this order, like the paper's code (5.5 may land on
    5.4999... and round to 5), so the counts match the runs behind the paper's FLOPs tables.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if num_aux < 0:
        raise ValueError(f"num_aux must be >= 0, got {num_aux}")
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau (pyramid decay rate) must be in [0, 1], got {tau}")
    if num_aux <= 1:
        return [k] * num_aux
    ks = []
    for i in range(num_aux):
        r = tau * i / (num_aux - 1)
        ks.append(max(1, round(k * (1 - r) + 1 * r)))
    return ks
