"""The minibatches fit trains on, as a pure function of (seed, epoch).

Convention: an epoch is one pass over the N examples in `ceil(N / batch_size)` batches, the last one
short when batch_size does not divide N (torch's DataLoader with drop_last=False). With shuffling,
epoch e visits the examples in the order `epoch_order(N, seed, e)`: `torch.randperm(N)` drawn on the
CPU (so the order does not depend on the device) from a generator seeded by `epoch_seed(seed, e)`,
the first 8 bytes, little-endian, of the BLAKE2b digest of the text "seed,e". Each epoch's order
comes from (seed, e) alone, so starting at any epoch costs the same. Step t (counted from 0 over the
whole training run) takes batch `t % steps_per_epoch` of epoch `t // steps_per_epoch`, so a run
resumed at step t sees the same batches as one never interrupted.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor


def steps_per_epoch(n: int, batch_size: int | None) -> int:
    """The number of batches in one pass over n examples; 1 for full batch (batch_size None)."""
    return 1 if batch_size is None else -(-n // batch_size)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch `epoch`'s order, in [0, 2**64): a hash of (seed, epoch), so that nearby
    seeds and epochs give unrelated orders."""
    digest = hashlib.blake2b(f"{seed},{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The shuffled order of n examples in epoch `epoch` (counted from 0) for `seed`: (n,) int64,
    on the CPU; batch i of that epoch is rows order[i * batch_size : (i + 1) * batch_size]."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))


def batches(
    x: Tensor,
    y: Tensor,
    batch_size: int | None,
    shuffle: bool,
    seed: int | Sequence[int],
    start_step: int = 0,
) -> Iterator[tuple[Tensor, Tensor]]:
    """The (x, y) batches of steps start_step, start_step + 1, ..., without end.

    Args:
        x: (N, ...); y: (N, ...).
        batch_size: examples per batch; None for the whole data at every step.
        shuffle: draw a new order each epoch; else batches are consecutive rows, as in x.
        seed: an int, or one int per model of an ensemble; each model's batches are then those
            of its own seed, stacked on a new leading axis.
        start_step: the step the first batch is for.
    Yields:
        (xb, yb): (B, ...) each, or (K, B, ...) for K seeds; B = batch_size except in an epoch's
        last batch. Views of one gathered copy per epoch, so a step costs no gather.
    """
    seeds = [seed] if isinstance(seed, int) else list(seed)
    stacked = not isinstance(seed, int)
    if batch_size is None:
        yield from itertools.repeat(_same_for_all(x, y, len(seeds)) if stacked else (x, y))
        return
    n = x.shape[0]
    per_epoch = steps_per_epoch(n, batch_size)
    epoch, first = divmod(start_step, per_epoch)
    dim = 1 if stacked else 0
    for e in itertools.count(epoch):
        xs, ys = _epoch_data(x, y, seeds, e, shuffle, stacked)
        for i in range(first, per_epoch):
            size = min(batch_size, n - i * batch_size)
            yield xs.narrow(dim, i * batch_size, size), ys.narrow(dim, i * batch_size, size)
        first = 0


def _epoch_data(
    x: Tensor, y: Tensor, seeds: list[int], epoch: int, shuffle: bool, stacked: bool
) -> tuple[Tensor, Tensor]:
    """x and y in epoch `epoch`'s order: (N, ...), or (K, N, ...) with one order per seed."""
    n = x.shape[0]
    if not shuffle:
        return _same_for_all(x, y, len(seeds)) if stacked else (x, y)
    order = torch.stack([epoch_order(n, s, epoch) for s in seeds]).to(x.device)
    order = order if stacked else order[0]
    return x[order], y[order]


def _same_for_all(x: Tensor, y: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """x and y seen by each of k models: (k, N, ...) views, no copy."""
    return x.expand(k, *x.shape), y.expand(k, *y.shape)
