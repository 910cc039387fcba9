"""Around an optimizer: gradient accumulation (`multi_steps`), weight averaging (`swa`, `ema`),
`lookahead`, and skipping non-finite steps (`apply_if_finite`), with optax's semantics.

What a wrapper decides per step (emit an update or not, sync or not) is a 0-d bool tensor, and both
outcomes are computed and chosen with torch.where, as optax's lax.cond does under jit: nothing syncs
with the host, so the wrappers trace under vmap and torch.compile. A step that does not move the
params emits -0.0 updates, which leave every param bitwise unchanged (see `groups.set_to_zero`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .._pytree import (
    PyTree,
    clone,
    register_namedtuple,
    tree_flatten,
    tree_leaves,
    tree_map,
    tree_unflatten,
    zeros_like,
)
from ._checks import integer, number
from .base import GradientTransformation, GradientTransformationExtraArgs, apply_updates
from .classic import PolyakAverageState
from .transforms import zero_count


def _where(condition: Tensor, a: PyTree, b: PyTree) -> PyTree:
    """a where condition else b, leaf by leaf (leaves that are not tensors are taken from a)."""
    pick = lambda x, y: torch.where(condition, x, y) if isinstance(x, Tensor) else x
    return tree_map(pick, a, b)


def _hold(updates: PyTree) -> PyTree:
    return tree_map(lambda u: torch.full_like(u, -0.0), updates)


def _inner_update(inner: GradientTransformation):
    """inner.update, forwarding the extra arguments only to a transform that takes them."""
    if isinstance(inner, GradientTransformationExtraArgs):
        return inner.update
    return lambda grads, state, params=None, **extra_args: inner.update(grads, state, params)


def _check_inner(name: str, inner) -> None:
    if not isinstance(inner, GradientTransformation):
        raise TypeError(
            f"{name}'s inner must be a GradientTransformation (e.g. optim.adam(1e-3)), got "
            f"{type(inner).__name__}: {inner!r}."
        )


def _state(name: str, state, cls) -> None:
    if not isinstance(state, cls):
        raise ValueError(
            f"state does not belong to {name}: expected {cls.__name__}, got "
            f"{type(state).__name__}; use this transform's init."
        )


@register_namedtuple
class MultiStepsState(NamedTuple):
    """State of `multi_steps` (optax's fields): micro-steps since the last update, updates done,
    the inner optimizer's state, and the running mean of this update's grads."""

    mini_step: Tensor
    gradient_step: Tensor
    inner_opt_state: PyTree
    acc_grads: PyTree


def multi_steps(inner: GradientTransformation, every_k: int) -> GradientTransformationExtraArgs:
    """Gradient accumulation (optax's MultiSteps): `inner` steps once every `every_k` calls, on
    the mean of their grads; the other calls emit -0.0 updates (the params do not move).

    a_n = a_{n-1} + (g_n - a_{n-1}) / n, n = 1..k;  on call k: updates = inner(a_k), a <- 0.
    Equal, to rounding, to torch's accumulate-then-step with each micro-batch's loss divided by k.

    Args:
        inner: the optimizer.
        every_k: micro-batches per update, >= 1.
    Returns:
        A GradientTransformationExtraArgs with a MultiStepsState.
    """
    _check_inner("multi_steps", inner)
    integer("every_k", every_k, 1)
    step = _inner_update(inner)

    def init(params):
        count = zero_count(params)
        return MultiStepsState(count, count.clone(), inner.init(params), zeros_like(params))

    def update(grads, state, params=None, **extra_args):
        _state("multi_steps", state, MultiStepsState)
        n = state.mini_step + 1
        acc = tree_map(lambda a, g: a + (g - a) / n, state.acc_grads, grads)
        emit = n == every_k
        updates, inner_state = step(acc, state.inner_opt_state, params, **extra_args)
        return _where(emit, updates, _hold(updates)), MultiStepsState(
            torch.where(emit, 0, n),
            state.gradient_step + emit.to(torch.int64),
            _where(emit, inner_state, state.inner_opt_state),
            _where(emit, zeros_like(acc), acc),
        )

    return GradientTransformationExtraArgs(init, update)


@register_namedtuple
class AveragedState(NamedTuple):
    """State of `swa` / `ema`: updates seen, params averaged so far (torch's n_averaged), and the
    average, a tree like the params (read it with `averaged_params`)."""

    count: Tensor
    n_averaged: Tensor
    average: PyTree


def swa(
    avg_fn: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
    multi_avg_fn: Callable[[list, list, Tensor], None] | None = None,
    start: int = 0,
) -> GradientTransformation:
    """torch.optim.swa_utils.AveragedModel as a transform: updates pass through unchanged, and the
    state averages the params they lead to (params + updates), as
    `averaged.update_parameters(model)` after each `optimizer.step()` from update `start` on.

    First averaged: avg = p.  Then avg = avg_fn(avg, p, n), by default the equal average
    avg + (p - avg) / (n + 1) (torch's on CPU; on CUDA torch lerps by a float32 1 / (n + 1)).
    Put it last in a chain: `chain(optim.sgd(0.1), optim.swa(start=100))`; for torch's SWALR
    after `start`, use lr=schedules.join([..., schedules.swa_lr(lr, swa_lr)], [start]).

    Args:
        avg_fn: torch's avg_fn(averaged_param, current_param, num_averaged) -> new average.
        multi_avg_fn: torch's multi_avg_fn(averaged_list, current_list, num_averaged), which
            writes the averaged list in place (given copies here, so torch's own functions such
            as get_ema_multi_avg_fn work as they are).
        start: updates done before the first one averaged.
    Returns:
        A GradientTransformation with an AveragedState; `update` needs the params.
    """
    if avg_fn is not None and multi_avg_fn is not None:
        raise ValueError("give avg_fn or multi_avg_fn, not both (torch uses multi_avg_fn then).")
    for name, fn in (("avg_fn", avg_fn), ("multi_avg_fn", multi_avg_fn)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}: {fn!r}.")
    integer("start", start, 0)

    def average(avg: list[Tensor], p: list[Tensor], n: Tensor) -> list[Tensor]:
        if multi_avg_fn is not None:
            out = [a.clone() for a in avg]
            with torch.no_grad():
                multi_avg_fn(out, p, n)
            return out
        if avg_fn is not None:
            return [avg_fn(a, x, n) for a, x in zip(avg, p)]
        return [a + (x - a) / (n + 1) for a, x in zip(avg, p)]

    def init(params):
        count = zero_count(params)
        return AveragedState(count, count.clone(), clone(params))

    def update(updates, state, params=None):
        _state("swa", state, AveragedState)
        if params is None:
            raise ValueError("swa needs params: call update(updates, state, params).")
        new = apply_updates(params, updates)
        n, (new_leaves, spec) = state.n_averaged, tree_flatten(new)
        mixed = average(tree_leaves(state.average), new_leaves, n)
        first = [torch.where(n == 0, x, m) for x, m in zip(new_leaves, mixed)]  # torch copies
        take = state.count >= start
        avg = _where(take, tree_unflatten(first, spec), state.average)
        return updates, AveragedState(state.count + 1, n + take.to(torch.int64), avg)

    return GradientTransformation(init, update)


def ema(decay: float = 0.999) -> GradientTransformation:
    """An exponential moving average of the params: torch's AveragedModel with
    get_ema_multi_avg_fn(decay), i.e. avg_1 = p_1, avg_t = lerp(avg_{t-1}, p_t, 1 - decay).

    Args:
        decay: in [0, 1].
    Returns:
        `swa` with that average (updates pass through; read it with `averaged_params`).
    """
    number("decay", decay, "a number in [0, 1]", lambda v: 0.0 <= v <= 1.0)
    return swa(avg_fn=lambda avg, p, n: torch.lerp(avg, p, 1 - decay))


def averaged_params(state: PyTree) -> PyTree:
    """The averaged params in an optimizer's state: an `swa` or `ema` average, or ASGD's
    (torch's `state["ax"]`, from `polyak_average`); a params-shaped tree.

    Raises:
        ValueError: unless the state holds exactly one such average.
    """
    is_avg = lambda s: isinstance(s, (AveragedState, PolyakAverageState))
    found = [s for s in tree_leaves(state, is_leaf=is_avg) if is_avg(s)]
    if len(found) != 1:
        raise ValueError(
            f"averaged_params needs a state with exactly one average in it (swa, ema or asgd's), "
            f"found {len(found)}."
        )
    return found[0].average if isinstance(found[0], AveragedState) else found[0].ax


@register_namedtuple
class LookaheadState(NamedTuple):
    """State of `lookahead`: the inner (fast) optimizer's state, updates since the last sync, and
    the slow weights."""

    fast_state: PyTree
    steps_since_sync: Tensor
    slow: PyTree


def lookahead(
    inner: GradientTransformation, sync_period: int = 5, slow_step_size: float = 0.5
) -> GradientTransformation:
    """Lookahead (Zhang et al. 2019, "k steps forward, 1 step back"), optax's semantics with the
    slow weights in the state: the params are the fast weights.

    fast <- fast + inner(g);  every sync_period-th update: slow <- slow + a (fast - slow), and the
    fast weights restart from it (the params after that update are the slow weights, to
    rounding). slow_0 = params at init.

    Args:
        inner: the fast optimizer.
        sync_period: k >= 1.
        slow_step_size: a in [0, 1].
    Returns:
        A GradientTransformation with a LookaheadState; `update` needs the params.
    """
    _check_inner("lookahead", inner)
    integer("sync_period", sync_period, 1)
    number("slow_step_size", slow_step_size, "a number in [0, 1]", lambda v: 0.0 <= v <= 1.0)
    step = _inner_update(inner)

    def init(params):
        return LookaheadState(inner.init(params), zero_count(params), clone(params))

    def update(grads, state, params=None, **extra_args):
        _state("lookahead", state, LookaheadState)
        if params is None:
            raise ValueError("lookahead needs params: call update(grads, state, params).")
        fast_updates, fast_state = step(grads, state.fast_state, params, **extra_args)
        fast = apply_updates(params, fast_updates)
        sync = state.steps_since_sync + 1 == sync_period
        synced = tree_map(lambda s, f: s + slow_step_size * (f - s), state.slow, fast)
        slow = _where(sync, synced, state.slow)
        updates = _where(sync, tree_map(torch.sub, slow, params), fast_updates)
        since = torch.where(sync, 0, state.steps_since_sync + 1)
        return updates, LookaheadState(fast_state, since, slow)

    return (
        GradientTransformationExtraArgs
        if isinstance(inner, GradientTransformationExtraArgs)
        else GradientTransformation
    )(init, update)


@register_namedtuple
class ApplyIfFiniteState(NamedTuple):
    """State of `apply_if_finite` (optax's fields): consecutive non-finite steps, whether the last
    step was finite, all non-finite steps so far, and the inner state."""

    notfinite_count: Tensor
    last_finite: Tensor
    total_notfinite: Tensor
    inner_state: PyTree


def apply_if_finite(
    inner: GradientTransformation, max_consecutive_errors: int
) -> GradientTransformation:
    """Skip a step whose grads hold a NaN or inf (optax's apply_if_finite): updates -0.0 and the
    inner state unchanged, unless it is the (max_consecutive_errors + 1)-th such step in a row,
    which goes through to inner (so a run that keeps diverging shows it).

    Args:
        inner: the optimizer.
        max_consecutive_errors: non-finite steps in a row to skip, >= 0.
    Returns:
        A GradientTransformation with an ApplyIfFiniteState.
    """
    _check_inner("apply_if_finite", inner)
    integer("max_consecutive_errors", max_consecutive_errors, 0)
    step = _inner_update(inner)

    def init(params):
        count = zero_count(params)
        finite = torch.ones((), dtype=torch.bool, device=count.device)
        return ApplyIfFiniteState(count, finite, count.clone(), inner.init(params))

    def update(grads, state, params=None, **extra_args):
        _state("apply_if_finite", state, ApplyIfFiniteState)
        leaves = tree_leaves(grads)
        finite = (
            torch.stack([torch.isfinite(g).all() for g in leaves]).all()
            if leaves
            else state.last_finite
        )
        notfinite = torch.where(finite, 0, state.notfinite_count + 1)
        total = state.total_notfinite + (~finite).to(torch.int64)
        apply = finite | (notfinite > max_consecutive_errors)
        updates, inner_state = step(grads, state.inner_state, params, **extra_args)
        return _where(apply, updates, _hold(updates)), ApplyIfFiniteState(
            notfinite, finite, total, _where(apply, inner_state, state.inner_state)
        )

    return (
        GradientTransformationExtraArgs
        if isinstance(inner, GradientTransformationExtraArgs)
        else GradientTransformation
    )(init, update)
