"""Private random generators derived from (seed, stream, epoch, step), never from the global RNG."""

from __future__ import annotations

import numpy as np
import torch

#: stream tags keep the epoch permutation and the augmentation draws independent of each other
ORDER_STREAM = 0
AUGMENT_STREAM = 1
SAMPLE_STREAM = 2


def derive_seed(*key: int) -> int:
    """Mix a tuple of non-negative integers into one 63-bit seed.

    numpy's SeedSequence is a well-tested hash for exactly this job: nearby keys (step 5 and step 6) give
    unrelated seeds, so batches do not share random draws.
    """
    for part in key:
        if not isinstance(part, (int, np.integer)) or isinstance(part, bool) or part < 0:
            raise ValueError(f"random keys must be non-negative integers, got {key!r}")
    state = np.random.SeedSequence([int(part) for part in key]).generate_state(1, dtype=np.uint64)[0]
    return int(state) & ((1 << 63) - 1)


def seeded_generator(*key: int) -> torch.Generator:
    """A fresh CPU generator seeded by `derive_seed(*key)`; the global torch RNG is left untouched."""
    return torch.Generator().manual_seed(derive_seed(*key))
