"""Adadelta, ASGD and Rprop, as torch.optim's, composed from transforms like the other aliases.

Each is `chain(head, direction, scale_by_learning_rate(lr))` (see `aliases`), so a learning rate may
be a number, a 0-d tensor or a schedule. Two of them fold torch's step size into the learning rate:
ASGD's decaying eta is a schedule derived from `lr` (`current_lr` reports it), and Rprop's per-entry
step sizes are kept in units of `lr` (torch's bounds divided by it), so a schedule scales them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .._pytree import PyTree, register_namedtuple, tree_leaves, tree_map, tree_unflatten, zeros_like
from . import _foreach
from ._checks import flags, non_negative, number
from ._named import shown_as_call
from .aliases import LearningRate, _parts
from .base import GradientTransformation, chain, checked_leaves, leafwise, param_leaves
from .transforms import (
    Schedule,
    add_decayed_weights,
    as_schedule,
    scale_by_learning_rate,
    zero_count,
)


@register_namedtuple
class ScaleByAdadeltaState(NamedTuple):
    """State of `scale_by_adadelta`: running means of squared grads and of squared steps."""

    square_avg: PyTree
    acc_delta: PyTree


def scale_by_adadelta(rho: float = 0.9, eps: float = 1e-6) -> GradientTransformation:
    """Adadelta's direction (Zeiler 2012, Algorithm 1), with torch.optim.Adadelta's op order.

    v_t = rho v_{t-1} + (1 - rho) g_t^2;  d_t = sqrt(u_{t-1} + eps) / sqrt(v_t + eps) * g_t;
    u_t = rho u_{t-1} + (1 - rho) d_t^2;  updates = d_t.

    Args:
        rho, eps: torch.optim.Adadelta's.
    Returns:
        A GradientTransformation with a ScaleByAdadeltaState (trees shaped like the params).
    """
    number("rho", rho, "a number in [0, 1]", lambda v: 0.0 <= v <= 1.0)
    non_negative(eps=eps)

    def init(params):
        return ScaleByAdadeltaState(zeros_like(params), zeros_like(params))

    def update_leaves(g, state, params, spec):
        square_avg = _foreach.mul(checked_leaves(state.square_avg, g, spec), rho)
        square_avg = _foreach.addcmul_(square_avg, g, g, 1.0 - rho)
        std = _foreach.sqrt_(_foreach.add_scalar(square_avg, eps))
        acc_delta = checked_leaves(state.acc_delta, g, spec)
        delta = _foreach.sqrt_(_foreach.add_scalar(acc_delta, eps))
        delta = _foreach.mul_(_foreach.div_(delta, std), g)
        acc_delta = _foreach.addcmul_(_foreach.mul(acc_delta, rho), delta, delta, 1.0 - rho)
        tree = lambda leaves: tree_unflatten(leaves, spec)
        return delta, ScaleByAdadeltaState(tree(square_avg), tree(acc_delta))

    return leafwise(init, update_leaves, ScaleByAdadeltaState)


@shown_as_call
def adadelta(
    lr: LearningRate = 1.0,
    rho: float = 0.9,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """Adadelta, as torch.optim.Adadelta.

    g_t <- -g_t if maximize;  g_t <- g_t + weight_decay * p;  d_t = Adadelta's direction
    (see `scale_by_adadelta`);  p <- p - lr * d_t.

    Args:
        lr, rho, eps, weight_decay, maximize: as torch.optim.Adadelta's, with its defaults; lr may
            also be a 0-d tensor (one per model under vmap) or a schedule.
    Returns:
        A GradientTransformation whose state holds both running means and the learning rate.
    """
    non_negative(weight_decay=weight_decay)
    flags(maximize=maximize)
    direction = scale_by_adadelta(rho, eps)
    return chain(*_parts(maximize, weight_decay, direction), scale_by_learning_rate(lr))


@register_namedtuple
class PolyakAverageState(NamedTuple):
    """State of `polyak_average`: updates done, and the running average of the params (ASGD's
    `ax`: the averaged iterate, the point ASGD returns)."""

    count: Tensor
    ax: PyTree


def polyak_average(t0: float = 1e6) -> GradientTransformation:
    """ASGD's averaged iterate (Polyak & Juditsky 1992), as torch.optim.ASGD's `ax`; updates pass
    through unchanged, so it goes last in a chain (it needs the final updates and the params).

    p_t = p_{t-1} + updates;  mu_t = 1 for t = 1, else 1 / max(1, t - 1 - t0);
    ax_t = p_t if mu_t = 1 else ax_{t-1} + mu_t (p_t - ax_{t-1}).

    Args:
        t0: torch.optim.ASGD's t0, the step after which averaging starts.
    Returns:
        A GradientTransformation with a PolyakAverageState; `averaged_params(state)` reads ax.
    """
    number("t0", t0, "a number", lambda v: True)

    def init(params):
        return PolyakAverageState(zero_count(params), zeros_like(params))

    def update_leaves(g, state, params, spec):
        ax = checked_leaves(state.ax, g, spec)
        new = _foreach.add(param_leaves(params, g, spec, "polyak_average"), g)
        # mu as torch keeps it: set after each step from its count, 1 before the first.
        done = _foreach.value(state.count)
        if isinstance(done, Tensor):
            mu = torch.where(done > 0, 1.0 / torch.clamp(done - t0, min=1.0), 1.0)
            ax = [torch.where(mu == 1.0, p, a + (p - a) * mu) for p, a in zip(new, ax)]
        else:
            mu = 1.0 / max(1.0, done - t0) if done > 0 else 1.0
            ax = (
                new
                if mu == 1.0
                else _foreach.add_(_foreach.mul_(_foreach.add(new, ax, alpha=-1.0), mu), ax)
            )
        return g, PolyakAverageState(state.count + 1, tree_unflatten(list(ax), spec))

    return leafwise(init, update_leaves, PolyakAverageState)


def _asgd_eta(schedule: Schedule, lambd: float, alpha: float) -> Schedule:
    """count -> eta = lr / (1 + lambd lr count)^alpha (Polyak & Juditsky's decaying step, torch's
    form). torch.optim.ASGD computes eta at the end of a step from that step's lr, so under a
    scheduler a step uses the previous step's lr: hence lr at count - 1."""

    def eta(count):
        lr = schedule(torch.clamp(count - 1, min=0))
        return lr / (1.0 + lambd * lr * count.to(torch.float64)) ** alpha

    return eta


@shown_as_call
def asgd(
    lr: LearningRate = 1e-2,
    lambd: float = 1e-4,
    alpha: float = 0.75,
    t0: float = 1e6,
    weight_decay: float = 0.0,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """Averaged SGD (Polyak & Juditsky 1992; Bottou 2012's step sizes), as torch.optim.ASGD.

    g_t <- -g_t if maximize;  g_t <- g_t + weight_decay * p;
    eta_1 = lr, eta_t = lr / (1 + lambd lr (t - 1))^alpha;
    p <- p - eta_t (g_t + lambd p)   (torch: p <- p (1 - lambd eta_t) - eta_t g_t);
    ax, the averaged iterate: see `polyak_average`; read it with `averaged_params(state)`.
    eta_t is the scheduled learning rate: `current_lr` reports it.

    Args:
        lr, lambd, alpha, t0, weight_decay, maximize: as torch.optim.ASGD's, with its defaults;
            lr may also be a 0-d tensor (one per model under vmap) or a schedule (eta then
            follows it a step late, as torch's eta follows a scheduler's lr).
    Returns:
        A GradientTransformation whose state holds eta, the step count and ax.
    """
    non_negative(weight_decay=weight_decay)
    number("lambd", lambd, "a number", lambda v: True)
    number("alpha", alpha, "a number", lambda v: True)
    flags(maximize=maximize)
    eta = _asgd_eta(as_schedule(lr), lambd, alpha)
    decay = [add_decayed_weights(lambd)] if lambd != 0.0 else []
    parts = _parts(maximize, weight_decay, *decay)
    return chain(*parts, scale_by_learning_rate(eta), polyak_average(t0))


@register_namedtuple
class ScaleByRpropState(NamedTuple):
    """State of `scale_by_rprop`: the previous (masked) grads and the per-entry step sizes."""

    prev: PyTree
    step_size: PyTree


def scale_by_rprop(
    etaminus: float = 0.5,
    etaplus: float = 1.2,
    min_step: float | Tensor = 1e-6,
    max_step: float | Tensor = 50.0,
) -> GradientTransformation:
    """Rprop's direction (Riedmiller & Braun 1993; torch.optim.Rprop's variant), step sizes in
    units of the learning rate that follows it (they start at 1).

    c = g_t * g_{t-1};  s_t = clip(s_{t-1} * (etaplus if c > 0, etaminus if c < 0, else 1),
    min_step, max_step);  g_t <- 0 where c < 0;  updates = sign(g_t) * s_t;  g_t is kept.
    The clip and the masks are torch.where's: a gradient through s_t never depends on a tie.

    Args:
        etaminus, etaplus: the factors, 0 < etaminus < 1 < etaplus.
        min_step, max_step: the step sizes' bounds (numbers, or 0-d tensors such as bound / lr).
    Returns:
        A GradientTransformation with a ScaleByRpropState.
    """
    if not (0.0 < etaminus < 1.0 < etaplus):
        raise ValueError(
            f"Invalid eta values: {etaminus}, {etaplus} (expected 0 < etaminus < 1 < etaplus)."
        )

    def init(params):
        return ScaleByRpropState(zeros_like(params), tree_map(torch.ones_like, params))

    def update_leaves(g, state, params, spec):
        prev, step_size = checked_leaves(state.prev, g, spec), tree_leaves(state.step_size)
        grads, sizes = [], []
        for gi, c, s in zip(g, _foreach.mul(g, prev), step_size):
            s = s * torch.where(c > 0, etaplus, torch.where(c < 0, etaminus, torch.ones_like(c)))
            sizes.append(
                torch.where(s < min_step, min_step, torch.where(s > max_step, max_step, s))
            )
            grads.append(torch.where(c < 0, 0.0, gi))
        out = _foreach.mul([torch.sign(gi) for gi in grads], sizes)
        tree = lambda leaves: tree_unflatten(leaves, spec)
        return out, ScaleByRpropState(tree(grads), tree(sizes))

    return leafwise(init, update_leaves, ScaleByRpropState)


@shown_as_call
def rprop(
    lr: LearningRate = 1e-2,
    etas: tuple[float, float] = (0.5, 1.2),
    step_sizes: tuple[float, float] = (1e-6, 50.0),
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """Rprop, as torch.optim.Rprop.

    g_t <- -g_t if maximize;  s_0 = lr;  s_t, the masked g_t: see `scale_by_rprop`, with
    bounds step_sizes;  p <- p - sign(g_t) * s_t.
    Written as p <- p - lr * sign(g_t) * (s_t / lr): the step sizes are kept in units of lr, so
    a schedule scales them (torch's Rprop reads lr once, at its first step, and then ignores a
    scheduler).

    Args:
        lr, etas, step_sizes, maximize: as torch.optim.Rprop's, with its defaults; lr must be
            > 0 (the step sizes are multiples of it); it may also be a 0-d tensor (one per model
            under vmap) or a schedule (its value at step 0 sets the bounds' units).
    Returns:
        A GradientTransformation whose state holds the previous grads, the step sizes and the
        learning rate.
    """
    etaminus, etaplus = _pair("etas", etas, "(etaminus, etaplus), e.g. (0.5, 1.2)")
    low, high = _pair("step_sizes", step_sizes, "(min, max), e.g. (1e-6, 50)")
    non_negative(**{"step_sizes[0]": low})
    number("step_sizes[1]", high, f"a number >= step_sizes[0] = {low}", lambda v: v >= low)
    flags(maximize=maximize)
    schedule = as_schedule(lr)
    unit = lr if isinstance(lr, (int, float, Tensor)) else float(schedule(zero_count([])))
    if not isinstance(unit, Tensor) and unit <= 0.0:
        raise ValueError(
            f"Invalid lr: {unit} (Rprop's step sizes are kept in units of lr, so it must be > 0)."
        )
    direction = scale_by_rprop(etaminus, etaplus, low / unit, high / unit)
    return chain(*_parts(maximize, 0.0, direction), scale_by_learning_rate(lr))


def _pair(name: str, value, expected: str) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"Invalid {name}: {value!r} (expected a pair {expected}).")
    for i, v in enumerate(value):
        number(f"{name}[{i}]", v, "a number", lambda v: True)
    return value[0], value[1]
