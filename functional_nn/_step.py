"""The training step as a pure function, eager, vmapped over K models, or compiled.

`make_step` builds one step over the user's params and state trees: gradient, optimizer update
(with value= and value_fn= for a GradientTransformationExtraArgs) and a finite flag, all on the
device; fit's loop (`_loop.py`) runs it. The compiled variants are cached on their arguments.
"""

from __future__ import annotations

import functools
import time
import types
from collections.abc import Callable

import torch
from torch import Tensor

from . import _data_checks
from ._pytree import PyTree, tree_leaves, tree_map
from .optim import _foreach
from .optim.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    LeafwiseUpdate,
    apply_updates,
)

Loss = Callable[[Tensor, Tensor], Tensor]


def make_step(
    apply: Callable, loss: Loss, opt: GradientTransformation, reduce: Callable | None = None
) -> Callable:
    """One training step as a pure function, for fit's loop (and for torch.compile or vmap).

    Args:
        apply, loss, opt: the model's apply, the loss and the optimizer. An opt that is a
            GradientTransformationExtraArgs is given `value=` and `value_fn=` (see fit).
        reduce: None, or `reduce(grads, loss, xb) -> (loss, grads)` run between the gradient
            and the update: data parallel's all-reduce (`_fit_distributed.py`).
    Returns:
        `step(params, state, xb, yb) -> (params, state, loss, finite)`: the params and state after
        one update on the batch (trees of the structures given), the loss before it (0-d), and a
        0-d bool that is True when the loss, every gradient and every updated param are finite
        (an update can overflow where the gradients did not, e.g. adam's eps vanishes in
        float16). Nothing syncs with the host. It raises TypeError or ValueError, as fit's
        checks do, when the model returns no tensor or the loss no 0-d floating tensor.
    """

    def checked_loss(p, xb, yb):
        # fit checks these on meta tensors before any work, unless the model or loss cannot run
        # there (.item()); then here, at the first step, before any update: metadata only, free.
        pred = apply(p, xb)
        _data_checks.check_pred(pred, "model(params, x)")
        value = loss(pred, yb)
        _data_checks.check_loss_value(value, "loss(pred, y)")
        return value

    value_and_grad = torch.func.grad_and_value(checked_loss)
    extra = isinstance(opt, GradientTransformationExtraArgs)

    def step(params, state, xb, yb):
        grads, value = value_and_grad(params, xb, yb)
        if reduce is not None:
            value, grads = reduce(grads, value, xb)
        if extra:
            value_fn = lambda p: checked_loss(p, xb, yb)
            updates, state = opt.update(grads, state, params, value=value, value_fn=value_fn)
        else:
            updates, state = opt.update(grads, state, params)
        params = apply_updates(params, updates)
        return params, state, value, _finite([value, *tree_leaves(grads), *tree_leaves(params)])

    if isinstance(opt.update, LeafwiseUpdate) and opt.update.donates:
        step.donating = _donating(step, True)
        step.donating_state = _donating(step, False)
    return step


def _donating(step: Callable, params: bool) -> Callable:
    """`step` within `_foreach.donated(params)`: it writes the new optimizer state (and params)
    into the old ones. Only for fit's eager loop, on a state (params) that it made itself and
    nobody else has seen (see `_loop._Loop._segment`)."""

    def donating(*args):
        with _foreach.donated(params):
            return step(*args)

    return donating


def _finite(tensors: list[Tensor]) -> Tensor:
    """True when every tensor is finite: NaN and inf survive a sum, so one sum per tensor (a read
    of it) tells, where isfinite would write a mask of it. The sums run in float32 at least, so
    that finite float16 params do not overflow theirs; a sum that overflows float32 counts as
    non-finite: that is divergence in all but name."""
    dtype = functools.reduce(torch.promote_types, [t.dtype for t in tensors], torch.float32)
    return torch.isfinite(torch.stack([t.sum(dtype=dtype) for t in tensors])).all()


@functools.lru_cache(maxsize=32)
def compiled_step(apply: Callable, loss: Loss, opt: GradientTransformation, mode: str):
    """make_step(apply, loss, opt) compiled whole (gradient and update) by torch.compile.

    Cached on its arguments, so fits with the same model, loss and optimizer objects share one
    compiled step (torch.compile itself recompiles only for new shapes, dtypes, devices or tree
    structures). Modes with CUDA graphs replay into memory the next replay overwrites, so there
    every output is cloned before the loop keeps it.
    """
    step = torch.compile(_own_code(make_step(apply, loss, opt)), mode=mode, fullgraph=True)
    if mode not in ("reduce-overhead", "max-autotune"):
        return step

    def graphed(params, state, xb, yb):
        torch.compiler.cudagraph_mark_step_begin()
        return tree_map(torch.clone, step(params, state, xb, yb))

    return graphed


def _own_code(fn: Callable) -> Callable:
    """`fn` with a code object of its own. torch.compile keeps its compiled variants per code
    object, at most torch._dynamo.config.recompile_limit (8) of them; every step that make_step
    makes shares one code object, so without this the ninth (model, loss, opt) would fail."""
    return types.FunctionType(
        fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )


def timing_first_call(step: Callable, seconds: list[float]) -> Callable:
    """`step`, appending to `seconds` how long its first call took."""

    def timed(*args):
        if seconds:
            return step(*args)
        start = time.perf_counter()
        out = step(*args)
        seconds.append(time.perf_counter() - start)
        return out

    return timed


def _dims(tree: PyTree) -> PyTree:
    """vmap's in_dims or out_dims for a tree of K stacked models: 0 at each tensor, None at any
    other leaf (vmap maps tensors only; a state may hold None)."""
    return tree_map(lambda leaf: 0 if isinstance(leaf, Tensor) else None, tree)


def vmapped_step(apply, loss, opt, per_model_lr: bool, per_model_data: bool):
    """make_step over K models: vmapped over params, state, lrs and (per_model_data) batches;
    each model's optimizer sees its own params and state trees.

    Returns:
        `step(params, state, xb, yb, lrs) -> (params, state, losses, finite)`.
    """

    def one(p, s, xb, yb, lr):
        return make_step(apply, loss, opt(lr) if per_model_lr else opt)(p, s, xb, yb)

    data_dim = 0 if per_model_data else None

    def step(params, state, xb, yb, lrs):
        p_dims, s_dims = _dims(params), _dims(state)
        in_dims = (p_dims, s_dims, data_dim, data_dim, 0 if per_model_lr else None)
        batched = torch.func.vmap(one, in_dims=in_dims, out_dims=(p_dims, s_dims, 0, 0))
        return batched(params, state, xb, yb, lrs)

    return step


@functools.lru_cache(maxsize=32)
def compiled_vmapped_step(*key_and_mode):
    """vmapped_step compiled whole, cached as compiled_step is (the lrs are an input, not part
    of the key)."""
    *key, mode = key_and_mode
    return torch.compile(_own_code(vmapped_step(*key)), mode=mode, fullgraph=True)


def vmapped_eval(apply, loss, val) -> Callable[[PyTree], Tensor]:
    val_x, val_y = val
    one = lambda p: loss(apply(p, val_x), val_y)
    return lambda params: torch.func.vmap(one, in_dims=(_dims(params),))(params)
