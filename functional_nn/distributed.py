"""Data-parallel training on torch.distributed, the functional way: the pieces a step is built from.

DistributedDataParallel cannot be used: it all-reduces gradients from autograd hooks on module
parameters, and torch.func.grad never fires them. Here the gradient pytree itself is all-reduced.

The convention, which makes P processes follow the trajectory of one process on the same global
batches (to rounding), for sum and mean losses, an unequal last batch included:
- every rank starts from the same params and optimizer state (`broadcast` from rank 0, or
  `check_equal`), and draws the same global batch of B rows at every step;
- rank r of P trains on rows r, r + P, r + 2P, ... of it (`shard`): DistributedSampler's assignment
  of rows to ranks, without its padding. DistributedSampler repeats rows until P divides the data,
  so those rows would count twice; here the shares differ in size by at most one row instead (a rank
  may get none), and every row of the global batch counts exactly once;
- each rank's loss and gradient are weighted and summed over the ranks (`all_reduce_grads`): with
  weight 1 for a sum loss (sse, reduction="sum"), and n_r / B for a mean loss (mse, cross_entropy),
  since mean_B = sum_r (n_r / B) mean_{n_r}. A "mean" loss must be a mean of per-row terms that each
  have the same number of elements (true of every loss in functional_nn.losses);
- decisions (stop on a non-finite loss, early stopping) are agreed with `all_true`, so every rank
  takes the same branch and none waits in a collective the others have left.

A collective that fails (another rank raised and exited, or did not come within the process group's
timeout, `init_process_group(timeout=...)`) raises RuntimeError naming the collective and the rank,
instead of hanging. `group` is always a ProcessGroup, or None for the default group.
"""

from __future__ import annotations

import functools
import inspect
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from . import _collectives, checkpoint, losses
from ._collectives import collective as _collective
from ._collectives import small_device as _small_device
from ._pytree import PyTree, describe, leaf_paths, tree_flatten, tree_map, tree_unflatten

REDUCTIONS = ("sum", "mean")
# Losses that sum over the rows and take no `reduction` option. Proposed instead (losses.py): the
# one line `sse.reduction = "sum"`, which loss_reduction reads first; this table is the fallback.
_SUM_LOSSES = (losses.sse,)


def rank_and_world(group: dist.ProcessGroup | None = None) -> tuple[int, int]:
    """This process's rank in `group` and the group's size; the default group when None.

    Raises:
        RuntimeError: torch.distributed is not initialised.
        TypeError: group is not a ProcessGroup or None.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "torch.distributed is not initialised: call torch.distributed.init_process_group("
            '"gloo" on CPU or "nccl" on CUDA) first, in every process (torchrun sets the '
            "environment it reads)."
        )
    if group is not None and not isinstance(group, dist.ProcessGroup):
        raise TypeError(
            f"group must be a torch.distributed.ProcessGroup or None (the default group), got "
            f"{type(group).__name__}."
        )
    return dist.get_rank(group), dist.get_world_size(group)


def broadcast(tree: PyTree, group: dist.ProcessGroup | None = None) -> PyTree:
    """Rank 0's `tree` on every rank, as new tensors: no tensor of the caller's is written.

    The trees must agree in structure, shapes and dtypes (checked first, in one collective; every
    rank raises the same ValueError if not). Tensors travel in buckets, one collective per bucket.

    Args:
        tree: a pytree of tensors (params, an optimizer state), on each rank's own device.
        group: the ProcessGroup, or None for the default group.
    Returns:
        A tree of the same structure whose tensors are new (one per leaf) and hold rank 0's values.
    """
    _check_same_structure(tree, group, "broadcast")
    leaves, spec = tree_flatten(tree)
    tensors = [t if isinstance(t, Tensor) else None for t in leaves]
    out = list(leaves)
    for bucket in _collectives.plan(tensors, int(_collectives.DEFAULT_CAP_MB * 2**20)):
        flat = _collectives.pack([tensors[i] for i in bucket])
        _collective("broadcast", group, lambda f=flat: dist.broadcast(f, group=group, group_src=0))
        views = _collectives.unpack(flat, [tensors[i] for i in bucket])
        for i, v in zip(bucket, views):  # own storage per leaf: saving one leaf saves only it
            out[i] = v.clone()
    return tree_unflatten(out, spec)


def check_equal(tree: PyTree, group: dist.ProcessGroup | None = None, name: str = "tree") -> None:
    """Raise ValueError on every rank unless `tree` is bitwise the same on every rank.

    Each leaf's bytes are reduced to two integer checksums (their sum and a position-weighted sum,
    wrapping in int64, so the order of summation does not matter); one all_gather compares them.

    Args:
        tree: a pytree of tensors.
        group: the ProcessGroup, or None for the default group.
        name: what the message calls the tree, e.g. "params".
    Raises:
        ValueError: the structures differ, or a leaf differs (the message names the first one and
            the first rank whose leaf differs from rank 0's).
    """
    _check_same_structure(tree, group, "check_equal", name)
    _, world = rank_and_world(group)
    leaves = tree_flatten(tree)[0]
    tensors = [t for t in leaves if isinstance(t, Tensor)]
    device = _small_device(group)
    mine = torch.stack([_collectives.checksum(t).to(device) for t in tensors]) if tensors else None
    if mine is None:
        return
    everyone = [torch.empty_like(mine) for _ in range(world)]
    _collective("check_equal", group, lambda: dist.all_gather(everyone, mine, group=group))
    paths = [p for p, t in zip(leaf_paths(tree, name), leaves) if isinstance(t, Tensor)]
    for r, theirs in enumerate(everyone[1:], start=1):
        differs = (theirs != everyone[0]).any(dim=1).tolist()
        if any(differs):
            raise ValueError(
                f"{paths[differs.index(True)]} differs between rank 0 and rank {r} (of {world}); "
                "start every rank from the same values: the same seed, or broadcast(tree) from "
                "rank 0."
            )


def shard(batch: PyTree, rank: int, world: int) -> PyTree:
    """Rank `rank`'s share of a global batch: rows rank, rank + world, ... of every leaf (views).

    Shares differ in size by at most one row; see the module docstring against DistributedSampler.

    Args:
        batch: a tensor or pytree of tensors, each (B, ...).
        rank, world: 0 <= rank < world.
    Returns:
        The same structure, each leaf (len(range(rank, B, world)), ...).
    """
    if not (isinstance(rank, int) and isinstance(world, int) and 0 <= rank < world):
        raise ValueError(
            f"shard needs integers 0 <= rank < world, got rank={rank!r}, world={world!r}."
        )
    return tree_map(lambda t: t[rank::world], batch)


def shard_sizes(n: int, world: int) -> list[int]:
    """The number of rows each of `world` ranks gets from a global batch of `n` rows (`shard`)."""
    return [len(range(r, n, world)) for r in range(world)]


def loss_reduction(loss: Any, reduction: str | None = None) -> str:
    """Whether `loss` sums ("sum") or averages ("mean") over the rows of a batch.

    Read, in order: `reduction` when given (required for a loss of your own that says nothing);
    the loss's `reduction` attribute; a functools.partial's `reduction=` keyword; the default of
    the function's `reduction` parameter; the losses known to sum (functional_nn.losses.sse).

    Args:
        loss: a loss callable or a name in functional_nn.losses.LOSSES.
        reduction: "sum" or "mean", to say it explicitly.
    Returns:
        "sum" or "mean".
    Raises:
        ValueError: the reduction is neither, or cannot be told.
    """
    found = reduction if reduction is not None else _find_reduction(losses.get_loss(loss))
    if found is None:
        raise ValueError(
            f"cannot tell whether the loss {getattr(loss, '__name__', loss)!r} sums or averages "
            "over the batch's rows, which data-parallel training must know to weight each rank's "
            "gradient; pass reduction='sum' or reduction='mean'."
        )
    if found not in REDUCTIONS:
        raise ValueError(
            f"reduction must be one of {list(REDUCTIONS)} for data-parallel training, got "
            f"{found!r}."
        )
    return found


def _find_reduction(loss: Any) -> Any:
    keywords: dict = {}
    while isinstance(loss, functools.partial):
        keywords = {**loss.keywords, **keywords}  # the outer partial's keywords win
        loss = loss.func
    if "reduction" in keywords:
        return keywords["reduction"]
    if isinstance(getattr(loss, "reduction", None), str):
        return loss.reduction
    try:
        parameter = inspect.signature(loss).parameters.get("reduction")
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        parameter = None
    if parameter is not None and isinstance(parameter.default, str):
        return parameter.default
    return "sum" if any(loss is s for s in _SUM_LOSSES) else None


def all_reduce_grads(
    grads: PyTree,
    loss: Tensor | None,
    n_local: int,
    n_global: int,
    reduction: str,
    group: dist.ProcessGroup | None = None,
    bucket_cap_mb: float = _collectives.DEFAULT_CAP_MB,
) -> tuple[Tensor | None, PyTree]:
    """The global batch's loss and gradient from each rank's, one all_reduce per bucket.

    With w_r = 1 for a sum loss and n_r / n_global for a mean loss, every rank gets
    loss = sum_r w_r loss_r and g = sum_r w_r g_r: the loss and gradient of the global batch. A
    rank with no rows (n_local == 0) adds zeros, whatever its loss (a mean of nothing is NaN).
    The results are identical on every rank, so a non-finite check on them decides alike.

    Args:
        grads: this rank's gradient pytree (not written).
        loss: this rank's 0-d loss, or None; it travels in the gradients' bucket of its dtype.
        n_local: this rank's rows; n_global: the global batch's rows (the sum of all n_local).
        reduction: "sum" or "mean" (see `loss_reduction`).
        group: the ProcessGroup, or None for the default group.
        bucket_cap_mb: the most megabytes (2**20 bytes) a bucket of several tensors holds.
    Returns:
        (global loss or None, global gradient pytree), new tensors (views of the reduced buckets).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {list(REDUCTIONS)}, got {reduction!r}.")
    if not (isinstance(n_local, int) and isinstance(n_global, int) and 0 <= n_local <= n_global):
        raise ValueError(
            f"n_local and n_global must be integers with 0 <= n_local <= n_global, got "
            f"n_local={n_local!r}, n_global={n_global!r}."
        )
    weight = 1.0 if reduction == "sum" else n_local / n_global
    leaves, spec = tree_flatten(grads)
    tensors = [t if isinstance(t, Tensor) else None for t in leaves]
    if loss is not None:
        tensors.append(loss.detach().reshape(1))
    out = list(tensors)
    pending = []
    for bucket in _collectives.plan(tensors, int(bucket_cap_mb * 2**20)):
        flat = _collectives.pack([tensors[i] for i in bucket])
        flat.zero_() if n_local == 0 else flat.mul_(weight)  # flat is ours: pack copies
        work = _collective(
            "all_reduce", group, lambda f=flat: dist.all_reduce(f, group=group, async_op=True)
        )
        pending.append((bucket, flat, work))
    for bucket, flat, work in pending:  # every bucket is in flight before the first wait
        _collective("all_reduce", group, work.wait)
        for i, v in zip(bucket, _collectives.unpack(flat, [tensors[i] for i in bucket])):
            out[i] = v
    global_loss = out.pop().reshape(()) if loss is not None else None
    return global_loss, tree_unflatten(out, spec)


def all_true(flag: bool | Tensor, group: dist.ProcessGroup | None = None) -> bool:
    """Whether `flag` is true on every rank (an all_reduce MIN): the same answer on all of them.

    Use it for every decision that ends or skips a collective (stop on a non-finite loss, early
    stopping), so that no rank waits for the others in a collective they have left. The results of
    all_reduce_grads are the same on every rank already; a flag about a rank's own loss must count
    a rank with no rows as finite (the mean of nothing is NaN).

    Args:
        flag: a bool or a 0-d bool tensor on any device.
        group: the ProcessGroup, or None for the default group.
    """
    t = torch.as_tensor(flag).to(device=_small_device(group), dtype=torch.int32).reshape(1)
    _collective("all_true", group, lambda: dist.all_reduce(t, op=dist.ReduceOp.MIN, group=group))
    return bool(t.item())


def save(
    path: str | os.PathLike,
    params: PyTree,
    opt_state: PyTree = None,
    group: dist.ProcessGroup | None = None,
    **meta: Any,
) -> None:
    """functional_nn.checkpoint.save on rank 0 only; every rank returns once the file is written.

    Call it on every rank (with each rank's own, equal, values). Rank 0 writes; the others wait for
    its outcome (a broadcast that is also the barrier), so `checkpoint.load(path)` afterwards reads
    the new file on every rank that shares rank 0's file system. If rank 0's save fails, rank 0
    raises its error and every other rank a RuntimeError quoting it; the old file stays whole.

    Args:
        path, params, opt_state, meta: as functional_nn.checkpoint.save.
        group: the ProcessGroup, or None for the default group; its rank 0 writes.
    """
    rank, _ = rank_and_world(group)
    error: BaseException | None = None
    if rank == 0:
        try:
            checkpoint.save(path, params, opt_state, **meta)
        except Exception as e:  # every rank must hear of it, or they would wait forever
            error = e
    outcome = [None if error is None else f"{type(error).__name__}: {error}"]
    _collective(
        "save",
        group,
        lambda: dist.broadcast_object_list(
            outcome, group=group, group_src=0, device=_small_device(group)
        ),
    )
    if error is not None:
        raise error
    if outcome[0] is not None:
        raise RuntimeError(
            f"rank 0 could not save the checkpoint {os.fspath(path)!r}: {outcome[0]}"
        )


def _check_same_structure(tree: PyTree, group, what: str, name: str = "tree") -> None:
    """Raise the same ValueError on every rank unless all trees have one structure and shape."""
    _, world = rank_and_world(group)
    mine = describe(tree)
    everyone: list = [None] * world
    _collective(what, group, lambda: dist.all_gather_object(everyone, mine, group=group))
    for r, theirs in enumerate(everyone):
        if theirs != everyone[0]:
            raise ValueError(
                f"{what}: {name} differs in structure between rank 0 and rank {r} (of {world}).\n"
                f"  rank 0: {everyone[0]}\n  rank {r}: {theirs}\n"
                "Build it the same way on every rank (same model, optimizer and dtype)."
            )
