"""Split ordered local modules into k contiguous groups whose largest cost is as small as possible."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise


def _check(costs: Sequence[float], k: int) -> None:
    n = len(costs)
    if n == 0:
        raise ValueError("nothing to partition: the cost list is empty")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"number of workers k must be an integer >= 1, got {k!r}")
    if k > n:
        raise ValueError(f"cannot give {k} workers a module each: there are only {n} local modules; "
                         f"use k <= {n}")
    bad = [(i, c) for i, c in enumerate(costs) if not math.isfinite(c) or c < 0]
    if bad:
        i, c = bad[0]
        raise ValueError(f"module {i} has cost {c!r}; costs must be finite and >= 0")


def partition(costs: Sequence[float], k: int) -> list[range]:
    """Contiguous groups (as ranges of module indices) minimising the maximum group cost; exact.

    In a pipeline the slowest worker sets the pace, so the objective is the bottleneck, not the spread.
    This is the linear-partition problem, solved by dynamic programming over prefix sums
    (O(k n^2), n <= a few hundred modules). Every group is non-empty. Ties are broken deterministically:
    going from the last group backwards, each group is as short as an optimal split allows.
    """
    _check(costs, k)
    n = len(costs)
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + float(c))

    # best[j][i]: smallest bottleneck for the first i modules on j groups; cut[j][i]: start of the last group
    best = [[math.inf] * (n + 1) for _ in range(k + 1)]
    cut = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0.0
    for j in range(1, k + 1):
        for i in range(j, n - (k - j) + 1):
            for s in range(i - 1, j - 2, -1):   # last group = modules s..i-1; latest start first
                value = max(best[j - 1][s], prefix[i] - prefix[s])
                if value < best[j][i]:
                    best[j][i], cut[j][i] = value, s
    bounds = [n]
    for j in range(k, 0, -1):
        bounds.append(cut[j][bounds[-1]])
    bounds.reverse()
    return [range(a, b) for a, b in pairwise(bounds)]


def group_costs(costs: Sequence[float], groups: Sequence[range | Sequence[int]]) -> list[float]:
    """Summed cost of each group of module indices."""
    return [float(sum(costs[i] for i in g)) for g in groups]
