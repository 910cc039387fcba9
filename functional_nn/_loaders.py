"""fit over a loader: a torch DataLoader, or any re-iterable of (xb, yb) batches.

Convention: an epoch is one pass over the loader (`iter(loader)` once), of `len(loader)` batches,
and step t (counted from 0 over the whole run) takes batch `t % len(loader)` of epoch
`t // len(loader)`, as fit's own batches do (`data.py`). Before each epoch e, fit calls
`set_epoch(e)` on the loader's sampler (and batch sampler, and the loader itself) where one has it,
as a torch training loop does for DistributedSampler. So where the loader's order is a function of
a seeded generator and the epoch (DistributedSampler(..., seed=s) with set_epoch, or a sampler of
your own that reseeds per epoch), a resumed run sees the batches an uninterrupted one would:
start_step = s resumes in epoch s // len(loader) and skips its first s % len(loader) batches, which
the loader still loads and collates (their I/O, not their steps: no gradient is computed for them).
A DataLoader(shuffle=True) draws each epoch's order from the state of its generator, which a
restarted process does not have: resume is then not bitwise.

Every batch is checked where it is read, by its metadata only (no host sync): a pair (xb, yb) of
tensors with the dtypes and trailing shapes of the first batch and as many rows in both; the first
batch is checked as fit checks x and y. Batches move to the params' device, with non_blocking copies
from pinned memory (DataLoader(pin_memory=True)), one batch read ahead of the one being trained on.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import torch
from torch import Tensor

from . import _checks, _data_checks
from ._pytree import PyTree, tree_leaves
from .data import batches


def is_loader(x: Any, y: Any = None) -> bool:
    """Whether fit's x is a loader: iterable, neither a tensor nor an array, and y None (a list x
    with a y is data in the wrong type, which fit's check of x names)."""
    iterable = hasattr(x, "__iter__") and not hasattr(x, "__array__")
    return (
        iterable
        and not isinstance(x, (Tensor, str, bytes))
        and (y is None or not isinstance(x, (list, tuple)))
    )


def source(x: Any, y: Any, args: Any) -> tuple[Tensor, Iterator[tuple[Tensor, Tensor]]]:
    """(a tensor like the data's x, on its device; the batches of steps start_step, ...)."""
    if args.loader is not None:
        return args.loader
    return x, batches(x, y, args.batch_size, args.shuffle, args.seed, args.start_step)


def parse(parse_fit: Callable, params: PyTree, x: Any, y: Any, opt: Any, **options: Any):
    """fit's checks with a loader as x: the loader's own first, then fit's on its first batch."""
    from ._fit_args import DEFAULT_STEPS  # _fit_args imports this module

    if y is not None:
        raise ValueError(
            f"x is a loader ({type(x).__name__}), which yields the (xb, yb) batches; pass y=None."
        )
    if hasattr(x, "__next__"):
        raise TypeError(
            f"x is an iterator ({type(x).__name__}), which can be read only once; pass a "
            "re-iterable that every epoch reads again: a DataLoader, or a list of (xb, yb) batches."
        )
    _data_checks.check_opt(opt)
    if options["batch_size"] is not None:
        raise ValueError(
            f"batch_size is {options['batch_size']} but x is a loader, whose batches are the "
            "steps' batches; set the batch size on the loader and pass batch_size=None."
        )
    steps, epochs, start = options["steps"], options["epochs"], options["start_step"]
    if steps is not None and epochs is not None:
        raise ValueError(f"give steps or epochs, not both (got steps={steps}, epochs={epochs}).")
    _checks.integer("steps", steps, 1, allow_none=True)
    _checks.integer("epochs", epochs, 1, allow_none=True)
    _checks.integer("start_step", start, 0)
    _checks.integer("eval_every", options["eval_every"], 1, allow_none=True)
    per_epoch = _length(x)
    evaluates = options["val"] is not None or bool(options.get("callbacks"))
    for needs, what in (
        (epochs is not None, "epochs"),
        (start > 0, "start_step > 0"),
        (evaluates and options["eval_every"] is None, "evaluating once per epoch"),
    ):
        if needs and per_epoch is None:
            raise ValueError(
                f"{what} needs the loader's length, but len(x) fails for {type(x).__name__}; "
                "give the loader a __len__ (a Dataset with __len__), or pass steps (and "
                "eval_every) instead."
            )
    total = epochs * per_epoch if epochs is not None else steps or DEFAULT_STEPS
    tensors = [t for t in tree_leaves(params) if isinstance(t, Tensor)]
    device = tensors[0].device if tensors else torch.device("cpu")  # else parse_fit says why
    stream = _prefetched(_checked(x, device, start, start + total, per_epoch))
    first = next(stream)
    options["val"] = val_tensors(options["val"], device)
    given = dict(options, steps=total, epochs=None, start_step=start, shuffle=False)
    try:
        args = parse_fit(params, *first, opt, **given)
    except (TypeError, ValueError) as e:  # fit's messages say x and y: say which batch they were
        epoch, index = divmod(start, per_epoch) if per_epoch else (0, 0)
        where = f"the loader's batch {index} of epoch {epoch} (step {start})"
        raise type(e)(f"with {where} as x and y: {e}") from None
    if args.eval_every is not None and options["eval_every"] is None:
        args = attrs.evolve(args, eval_every=per_epoch)
    return attrs.evolve(args, loader=(first[0], itertools.chain([first], stream)))


def val_tensors(val: Any, device: torch.device) -> Any:
    """val as given, or a val loader read whole, its batches concatenated on `device`: then the val
    loss is the loss on all of it, as with tensors."""
    if val is None or isinstance(val, (tuple, list)) or not is_loader(val):
        return val
    read: list = []
    for i, batch in enumerate(val):
        read.append(_check(batch, read[0] if read else None, f"batch {i} of the val loader"))
    if not read:
        raise ValueError("val is a loader that yields no batches; give it data or pass val=None.")
    return tuple(torch.cat([b[k] for b in read]).to(device) for k in (0, 1))


def _length(loader: Any) -> int | None:
    try:
        n = len(loader)
    except TypeError:  # an IterableDataset's DataLoader, a generator-backed iterable
        return None
    if n < 1:
        raise ValueError(f"x is a loader of {n} batches; give it at least one batch.")
    return n


def _set_epoch(loader: Any, epoch: int) -> None:
    for holder in (
        loader,
        getattr(loader, "sampler", None),
        getattr(loader, "batch_sampler", None),
    ):
        if callable(getattr(holder, "set_epoch", None)):
            holder.set_epoch(epoch)


def _checked(loader, device, start: int, end: int, per_epoch: int | None):
    """The batches of steps start..end - 1, checked, on `device`."""
    epoch, skip = divmod(start, per_epoch) if per_epoch else (0, 0)
    spec, step = None, start
    while step < end:
        _set_epoch(loader, epoch)
        index = skip - 1
        for index, batch in enumerate(itertools.islice(loader, skip, None), start=skip):
            where = f"the loader's batch {index} of epoch {epoch} (step {step})"
            if per_epoch is not None and index >= per_epoch:
                raise ValueError(f"{where} is past len(x) = {per_epoch}: " + _LIES)
            xb, yb = _check(batch, spec, where)
            spec = spec or (xb, yb)
            yield _to(xb, device), _to(yb, device)
            step += 1
            if step == end:
                return
        if index < skip or (per_epoch is not None and index + 1 != per_epoch):
            raise ValueError(
                f"x yielded {index + 1} batches in epoch {epoch} but len(x) is {per_epoch}: "
                + _LIES
            )
        epoch, skip = epoch + 1, 0


_LIES = (
    "every pass over the loader must yield len(x) batches, so that steps map to (epoch, batch) "
    "and a resumed run sees the same batches."
)


def _prefetched(stream: Iterator) -> Iterator:
    """`stream`, one item read ahead: batch t + 1's copy to the device is under way while the
    step of batch t runs."""
    ahead = next(stream, None)
    while ahead is not None:
        current, ahead = ahead, next(stream, None)
        yield current


def _to(t: Tensor, device: torch.device) -> Tensor:
    # non_blocking only from pinned memory: from pageable memory it would be synchronous anyway.
    return t.to(device, non_blocking=t.is_pinned()) if t.device != device else t


def _check(batch: Any, spec: tuple[Tensor, Tensor] | None, where: str):
    """batch as a pair of tensors like `spec` (the first batch), or an error naming `where`."""
    if not (
        isinstance(batch, (tuple, list))
        and len(batch) == 2
        and all(isinstance(t, Tensor) for t in batch)
    ):
        kinds = [type(t).__name__ for t in batch] if isinstance(batch, (tuple, list)) else None
        raise TypeError(
            f"{where} must be a pair (xb, yb) of tensors, got {type(batch).__name__}"
            + (f" of {kinds}" if kinds is not None else "")
            + "; make the loader yield (xb, yb), e.g. DataLoader(TensorDataset(x, y))."
        )
    xb, yb = batch
    if xb.ndim == 0 or yb.ndim == 0 or xb.shape[0] != yb.shape[0] or xb.shape[0] == 0:
        raise ValueError(
            f"{where} must have xb and yb with the same number of rows, at least one, got "
            f"xb of shape {tuple(xb.shape)} and yb of shape {tuple(yb.shape)}."
        )
    for name, t, want in zip(("xb", "yb"), batch, spec or (None, None)):
        if want is not None and t.dtype != want.dtype:
            raise TypeError(
                f"{where} has {name} of dtype {t.dtype}, but the first batch's is {want.dtype}; "
                "make every batch of one dtype."
            )
        if want is not None and t.shape[1:] != want.shape[1:]:
            raise ValueError(
                f"{where} has {name} of shape {tuple(t.shape)}, but the first batch's is "
                f"{tuple(want.shape)}; every batch must have the same shape but for its rows."
            )
    return xb, yb
