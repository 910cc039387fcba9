"""fit(..., distributed=True | ProcessGroup): data parallel over torch.distributed, in fit's step.

Built from functional_nn.distributed (see its module docstring for the convention). At the start,
params and the optimizer state are broadcast from rank 0 (new tensors; the caller's stay as they
are). With tensors, every rank draws the same global batch (fit's own order, from the seed) and
trains on its share of it (`distributed.shard`: rows r, r + P, ...); with a loader, the loader's
batches are the rank's share (the user's DistributedSampler). Inside the step, between the gradient
and the update, the loss and gradient are summed over the ranks in buckets, one all_reduce each: as
they are for a sum loss, and for a mean loss weighted by each rank's rows over the global batch's,
whose count rides in the same bucket (so a loader's unequal shares need no other collective and no
host sync). Every rank then holds the global loss and gradient, bitwise the same, so the finite
flag, FitResult.losses and every decision fit takes from them agree on all ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import attrs
import torch
import torch.distributed as dist
from torch import Tensor

from . import distributed
from ._pytree import PyTree, tree_map
from .optim.base import GradientTransformationExtraArgs


@attrs.frozen
class DataParallel:
    """fit's resolved distributed=: the group, this rank, the world size, and the loss's reduction."""

    group: dist.ProcessGroup | None
    rank: int
    world: int
    reduction: str

    def start(
        self, params: PyTree, state: PyTree, data: Iterator, sharded: bool
    ) -> tuple[PyTree, PyTree, Iterator, Callable]:
        """Rank 0's params and state on every rank; this rank's batches (its share of each global
        batch when `sharded`); and the step's `reduce(grads, loss, xb) -> (loss, grads)`."""
        params = distributed.broadcast(params, self.group)
        state = distributed.broadcast(state, self.group)
        if sharded:
            data = (distributed.shard(batch, self.rank, self.world) for batch in data)
        return params, state, data, self.reduce

    def reduce(self, grads: PyTree, loss: Tensor, xb: Tensor) -> tuple[Tensor, PyTree]:
        """The global batch's loss and gradient from this rank's, on its batch xb (n rows)."""
        n = xb.shape[0]
        if self.reduction == "sum":
            return distributed.all_reduce_grads(grads, loss, n, n, "sum", self.group)
        # mean_B = (sum_r n_r mean_r) / B: each rank sends n_r times its mean and its n_r, in one
        # bucket; a rank without rows sends zeros (all_reduce_grads zeroes its mean of nothing).
        count = torch.full((), n, dtype=loss.dtype, device=loss.device)
        scaled = (count, tree_map(lambda g: g * n, grads))
        total, (rows, summed) = distributed.all_reduce_grads(
            scaled, loss * n, n, n, "sum", self.group
        )
        return total / rows, tree_map(lambda g: g / rows, summed)


def resolve(given: Any, *, loss: Callable, opt: Any, compile: Any, stateful: bool):
    """distributed= checked: None for False, else a DataParallel (before any work)."""
    if given is False or given is None:
        return None
    if given is not True and not isinstance(given, dist.ProcessGroup):
        raise TypeError(
            "distributed must be False, True (the default process group) or a "
            f"torch.distributed.ProcessGroup, got {type(given).__name__}."
        )
    group = None if given is True else given
    rank, world = distributed.rank_and_world(group)
    for bad, what in (
        (compile, "compile"),
        (stateful, "a model with state or randomness (each rank would see only its rows)"),
        (isinstance(opt, GradientTransformationExtraArgs), "an opt that takes value_fn"),
    ):
        if bad:
            raise ValueError(
                f"distributed=True does not support {what} yet; train data-parallel without it."
            )
    return DataParallel(group, rank, world, distributed.loss_reduction(loss))
