"""Gradient transformations, the building blocks of the optimizers in `aliases.py`.

Each factory returns a `GradientTransformation` written over the flat list of leaves (see
`base.leafwise`); the arithmetic runs with the multi-tensor ops of `_foreach`, in torch.optim's op
order. Step counts are 0-d int64 tensors on the params' device, and everything derived from them
(bias corrections, scheduled learning rates) is a float64 0-d tensor there, so nothing syncs with
the host and the scalars are rounded as torch.optim rounds its Python floats.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import torch
from torch import Tensor

from .._pytree import (
    PyTree,
    register_namedtuple,
    tree_leaves,
    tree_unflatten,
    zeros_like,
)
from . import _foreach
from ._checks import number
from ._foreach import once
from .base import EmptyState, GradientTransformation, checked_leaves, leafwise, param_leaves
from .schedules import Schedule


def zero_count(params: PyTree) -> Tensor:
    """A 0-d int64 zero on the device of the first leaf of `params`: a fresh step count."""
    leaves = tree_leaves(params)
    return torch.zeros((), dtype=torch.int64, device=leaves[0].device if leaves else None)


def _stateless(update_leaves) -> GradientTransformation:
    # No state, so nothing kept: safe to run within fit's donated steps (see _foreach).
    return leafwise(lambda params: EmptyState(), update_leaves, donates=True)


def scale(factor: float) -> GradientTransformation:
    """updates = factor * grads (factor -1 turns descent into ascent: `maximize`).

    Args:
        factor: a number.
    Returns:
        A stateless GradientTransformation; updates have the grads' tree and shapes.
    """
    return _stateless(lambda g, state, p, spec: (_foreach.mul_(g, factor), state))


def add_decayed_weights(weight_decay: float) -> GradientTransformation:
    """updates = grads + weight_decay * params: L2 decay as torch.optim's weight_decay, or the
    decoupled decay of AdamW when placed after the adaptive scaling.

    Args:
        weight_decay: a number; `update` must then be given the params.
    Returns:
        A stateless GradientTransformation.
    """

    def update_leaves(g, state, params, spec):
        p = param_leaves(params, g, spec, "add_decayed_weights")
        return _foreach.add_(g, p, alpha=weight_decay), state

    return _stateless(update_leaves)


def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    """Scale all grads by min(1, max_norm / (||g|| + 1e-6)), ||g|| the 2-norm of all leaves
    together: the result of `torch.nn.utils.clip_grad_norm_`. Differentiated, the gradient at
    ||g|| + 1e-6 = max_norm is that of the scaled branch.

    Args:
        max_norm: a number >= 0; inf clips nothing, as in torch.
    Returns:
        A stateless GradientTransformation.
    """
    number("max_norm", max_norm, "a number >= 0, or inf for no clipping", allow_inf=True)

    def update_leaves(g, state, p, spec):
        if not g:
            return g, state
        total = torch.linalg.vector_norm(torch.stack(_foreach.norm(g)))
        ratio = max_norm / (total + 1e-6)
        # min(ratio, 1) with a gradient through ratio at ratio = 1, by construction (torch's clamp
        # leaves the tie to the kernel); a NaN norm stays NaN, as in clip_grad_norm_.
        return _foreach.mul_(g, torch.where(ratio > 1.0, 1.0, ratio)), state

    return _stateless(update_leaves)


def clip_by_value(clip_value: float) -> GradientTransformation:
    """Clamp every gradient entry into [-clip_value, clip_value], as
    `torch.nn.utils.clip_grad_value_`. Differentiated, an entry at +-clip_value passes its
    gradient (it is inside the closed interval), on every torch release.

    Args:
        clip_value: a number >= 0; inf clips nothing.
    Returns:
        A stateless GradientTransformation.
    """
    number("clip_value", clip_value, "a number >= 0, or inf for no clipping", allow_inf=True)
    return _stateless(lambda g, state, p, spec: (_foreach.clamp(g, -clip_value, clip_value), state))


@register_namedtuple
class ScaleByLearningRateState(NamedTuple):
    """State of `scale_by_learning_rate`: updates done, and the learning rate of the next one
    (float64, 0-d; what torch's `scheduler.get_last_lr()` reports)."""

    count: Tensor
    lr: Tensor


def scale_by_learning_rate(lr: float | Tensor | Schedule) -> GradientTransformation:
    """updates = -lr_t * grads: the descent step, sign included.

    Args:
        lr: a number >= 0; a 0-d tensor, used as a multiplier and never inspected, so it may be
            batched by vmap (one learning rate per model); or a schedule, `count -> lr` with
            `count` the 0-d int64 number of updates done (see `schedules`).
    Returns:
        A GradientTransformation with a ScaleByLearningRateState.
    """
    schedule = as_schedule(lr)

    def init(params):
        count = zero_count(params)
        return ScaleByLearningRateState(count, _float64(schedule(count), count))

    def update_leaves(g, state, p, spec):
        count = state.count + 1
        if isinstance(lr, numbers.Real):  # the Python float, exactly as torch's alpha=-lr
            step_lr, next_lr = lr, torch.full_like(state.lr, lr)
        else:
            step_lr, next_lr = (
                once(_float64(schedule(state.count), count)),
                _float64(schedule(count), count),
            )
        return _foreach.mul_(g, -step_lr), ScaleByLearningRateState(count, next_lr)

    return leafwise(init, update_leaves, ScaleByLearningRateState, donates=True)


def current_lr(state: PyTree, group=None) -> Tensor:
    """The learning rate the next update of an optimizer will use.

    Args:
        state: the state of an optimizer with one `scale_by_learning_rate` in it (every alias),
            or, with `group`, of `param_groups` / `multi_transform`.
        group: the group's label (its index in `param_groups`), as torch's
            `optimizer.param_groups[group]["lr"]`.
    Returns:
        A float64 0-d tensor on the params' device (batched like the state under vmap).
    """
    if group is not None:
        is_multi = lambda s: hasattr(s, "inner_states")  # groups.MultiTransformState
        multi = [s for s in tree_leaves(state, is_leaf=is_multi) if is_multi(s)]
        if len(multi) != 1 or group not in multi[0].inner_states:
            raise ValueError(
                f"current_lr(state, group={group!r}) needs the state of one param_groups or "
                f"multi_transform with that group; its groups: "
                f"{[list(m.inner_states) for m in multi]}."
            )
        state = multi[0].inner_states[group]
    is_lr = lambda s: isinstance(s, ScaleByLearningRateState)
    found = [s for s in tree_leaves(state, is_leaf=is_lr) if is_lr(s)]
    if len(found) != 1:
        raise ValueError(
            f"current_lr needs a state with exactly one scale_by_learning_rate in it, found "
            f"{len(found)}; pass the state of an optimizer such as optim.adam(...), and group= for "
            "the state of param_groups."
        )
    return found[0].lr


def as_schedule(lr: float | Tensor | Schedule) -> Schedule:
    """`lr` as a schedule `count -> lr`, after checking it (see `scale_by_learning_rate`)."""
    if isinstance(lr, bool) or (not isinstance(lr, (numbers.Real, Tensor)) and not callable(lr)):
        raise TypeError(
            f"lr must be a number, a 0-d tensor or a schedule (count -> lr), got "
            f"{type(lr).__name__}: {lr!r}."
        )
    if isinstance(lr, numbers.Real):
        number("lr", lr, "a number >= 0 (use maximize=True to ascend)")
        return lambda count: torch.full_like(count, lr, dtype=torch.float64)
    if isinstance(lr, Tensor):
        if lr.ndim != 0 or not lr.is_floating_point():
            raise ValueError(
                f"A tensor lr must be a 0-d floating tensor, got shape {tuple(lr.shape)} and dtype "
                f"{lr.dtype}; use one learning rate per optimizer (vmap gives one per model)."
            )
        return lambda count: lr
    return lr


def _float64(value, count: Tensor) -> Tensor:
    return torch.as_tensor(value, dtype=torch.float64, device=count.device)


@register_namedtuple
class TraceState(NamedTuple):
    """State of `trace`: the step count and torch.optim.SGD's momentum buffer."""

    count: Tensor
    momentum_buffer: PyTree


def trace(
    momentum: float, dampening: float = 0.0, nesterov: bool = False
) -> GradientTransformation:
    """torch.optim.SGD's momentum (RMSprop's too, with dampening 0).

    b_1 = g_1;  b_t = momentum * b_{t-1} + (1 - dampening) * g_t;
    updates = g_t + momentum * b_t if nesterov else b_t.
    The first step ignores dampening, as torch does.

    Args:
        momentum, dampening, nesterov: torch.optim.SGD's.
    Returns:
        A GradientTransformation with a TraceState.
    """

    def init(params):
        return TraceState(zero_count(params), zeros_like(params))

    def update_leaves(g, state, p, spec):
        buf = _foreach.owned(checked_leaves(state.momentum_buffer, g, spec))
        if dampening == 0.0:
            # One pass (torch: mul_ then add_, rounding momentum * b once more). b_0 = 0, so the
            # first step gives b_1 = g exactly.
            buf = _foreach.add_into_(g, buf, alpha=momentum)
        else:
            buf = _foreach.mul_(buf, momentum)
            # 1 on the first step, 1 - dampening after: a tensor, so no host sync decides it.
            # In float64, as torch rounds the Python float 1 - dampening (the op casts it).
            keep = 1.0 - dampening * (state.count > 0).to(torch.float64)
            buf = _foreach.add_(buf, _foreach.mul(g, keep))
        # The buffer is kept in the state, so it goes on as a plain list: nobody may write it.
        out = _foreach.add(g, buf, alpha=momentum) if nesterov else list(buf)
        return out, TraceState(state.count + 1, tree_unflatten(buf, spec))

    return leafwise(init, update_leaves, TraceState, donates=True)
