"""Randomness keyed by (seed, stream, index) instead of by process.

Every random draw of a training clip (view roll, sigma, noise, noise augmentation, per-sample CFG coin) comes from
a generator seeded with (seed, stream, global sample position); the per-batch CFG coin from (seed, step). A rank
therefore draws different numbers than its peers (each rank owns different positions), a run gives the same clips
whatever the number of processes, and resuming at step k replays exactly what the uninterrupted run would draw.
"""

from __future__ import annotations

import numpy as np
import torch

STREAM_DATA = 0  # view roll / ring choice in the dataset
STREAM_TRAIN = 1  # sigma, latent noise, noise augmentation, per-sample CFG coin
STREAM_BATCH = 2  # per-batch CFG coin (one per optimizer micro-step, shared by all ranks)
STREAM_ORDER = 3  # object order of each epoch
STREAM_INIT = 4  # re-initialised tensors of a recipe's surgery


def keyed_seed(seed: int, stream: int, index: int) -> int:
    """A 63-bit seed from the triple (well mixed by numpy's SeedSequence)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(stream), int(index)]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def keyed_generator(seed: int, stream: int, index: int) -> torch.Generator:
    """A CPU torch.Generator for the triple."""
    return torch.Generator().manual_seed(keyed_seed(seed, stream, index))
