"""Per-coordinate step sizes: the transforms behind RMSprop, Adagrad and the Adam family.

Each returns a direction without the learning rate (`scale_by_learning_rate` comes after it in the
aliases), with torch.optim's arithmetic: its op order, or its multi-tensor code's folding of the
scalars into one denominator, within rounding. Scalars that torch keeps as Python floats (bias
corrections, NAdam's momentum schedule, RAdam's rectification) are derived from the step count
in float64: Python floats in eager CPU code, 0-d tensors elsewhere (no host sync on a GPU; traced
by vmap, grad and compile): see `_foreach.value`. Every transform returns updates with the grads'
tree and shapes; its state holds trees shaped like the params.
Hyper-parameters are checked when a transform is built (finite numbers in range, bool flags), and
each update checks its state (see `base`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .._pytree import PyTree, register_namedtuple, tree_leaves, tree_map, tree_unflatten, zeros_like
from . import _foreach
from ._checks import flags, non_negative, number
from ._foreach import once, scalar_sqrt, select
from .base import GradientTransformation, checked_leaves, leafwise
from .transforms import zero_count


def _steps(count: Tensor) -> float | Tensor:
    return _foreach.value(count)


def _check_betas(**betas: float) -> None:
    for name, value in betas.items():
        number(name, value, "a number in [0, 1)", lambda v: 0.0 <= v < 1.0)


def _scalar_dtype() -> torch.dtype:
    """The dtype torch.optim keeps its scalar state in (`optimizer._get_scalar_dtype`): float64
    when the default dtype is float64, else float32."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _moments(
    g: list[Tensor], state, spec, b1: float, b2: float
) -> tuple[list[Tensor], list[Tensor]]:
    """Adam's moments, as torch updates them: m = lerp(m, g, 1 - b1), v = b2 v + (1 - b2) g^2."""
    mu = _foreach.lerp_(_foreach.owned(checked_leaves(state.mu, g, spec)), g, 1.0 - b1)
    nu = _foreach.mul_(_foreach.owned(tree_leaves(state.nu)), b2)
    return mu, _foreach.addcmul_(nu, g, g, 1.0 - b2)


def _over(numerator: list[Tensor], denom: _foreach.Fresh) -> _foreach.Fresh:
    """numerator / denom, written into `denom` (consumed), as numerator * (1 / denom): the result
    needs no fresh tensor, which above glibc's mmap threshold would be page faulted in (the
    reciprocal rounds once more than a division: within the tests' tolerances, as torch's own
    multi-tensor RAdam does it)."""
    return _foreach.mul_(_foreach.reciprocal_(denom), numerator)


@register_namedtuple
class ScaleByAdamState(NamedTuple):
    """State of `scale_by_adam`: step count, first and second moments, and the running max of the
    second moment (the empty tuple unless amsgrad: torch's pytree counts None as a leaf)."""

    count: Tensor
    mu: PyTree
    nu: PyTree
    nu_max: PyTree


def scale_by_adam(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, amsgrad: bool = False
) -> GradientTransformation:
    """Adam's direction (Kingma & Ba 2015), with torch.optim.Adam's arithmetic.

    m_t = lerp(m_{t-1}, g_t, 1 - b1);  v_t = b2 v_{t-1} + (1 - b2) g_t^2;
    vmax_t = max(vmax_{t-1}, v_t) if amsgrad (the raw moment, before bias correction);
    updates = m_t / (sqrt(v_t) / sqrt(1 - b2^t) + eps) / (1 - b1^t), computed with the bias
    corrections folded into the denominator, as torch's multi-tensor Adam folds them:
    m_t / (sqrt(v_t) ((1 - b1^t) / sqrt(1 - b2^t)) + eps (1 - b1^t)).

    Args:
        b1, b2, eps, amsgrad: torch.optim.Adam's betas, eps and amsgrad.
    Returns:
        A GradientTransformation with a ScaleByAdamState.
    """
    _check_betas(b1=b1, b2=b2)
    non_negative(eps=eps)
    flags(amsgrad=amsgrad)

    def init(params):
        nu_max = zeros_like(params) if amsgrad else ()
        return ScaleByAdamState(zero_count(params), zeros_like(params), zeros_like(params), nu_max)

    def update_leaves(g, state, params, spec):
        count = state.count + 1
        mu, nu = _moments(g, state, spec, b1, b2)
        if amsgrad:
            nu_max = _foreach.maximum_(_foreach.owned(checked_leaves(state.nu_max, g, spec)), nu)
        else:
            nu_max = nu
        t = _steps(count)
        bias_correction1 = 1.0 - b1**t
        bias_correction2_sqrt = scalar_sqrt(1.0 - b2**t)
        denom = _foreach.mul_(_foreach.sqrt(nu_max), once(bias_correction1 / bias_correction2_sqrt))
        out = _over(mu, _foreach.add_scalar_(denom, once(eps * bias_correction1)))
        tree = lambda leaves: tree_unflatten(leaves, spec)
        return out, ScaleByAdamState(count, tree(mu), tree(nu), tree(nu_max) if amsgrad else ())

    return leafwise(init, update_leaves, ScaleByAdamState, donates=True)


@register_namedtuple
class ScaleByAdamaxState(NamedTuple):
    """State of `scale_by_adamax`: step count, first moment, exponentially weighted infinity norm."""

    count: Tensor
    mu: PyTree
    nu: PyTree


def scale_by_adamax(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> GradientTransformation:
    """Adamax's direction (Kingma & Ba 2015, Algorithm 2), with torch.optim.Adamax's arithmetic.

    m_t = lerp(m_{t-1}, g_t, 1 - b1);  u_t = max(b2 u_{t-1}, |g_t| + eps);
    updates = m_t / u_t / (1 - b1^t).

    Args:
        b1, b2, eps: torch.optim.Adamax's betas and eps.
    Returns:
        A GradientTransformation with a ScaleByAdamaxState.
    """
    _check_betas(b1=b1, b2=b2)
    non_negative(eps=eps)

    def init(params):
        return ScaleByAdamaxState(zero_count(params), zeros_like(params), zeros_like(params))

    def update_leaves(g, state, params, spec):
        count = state.count + 1
        mu = _foreach.lerp(checked_leaves(state.mu, g, spec), g, 1.0 - b1)
        decayed = _foreach.mul(tree_leaves(state.nu), b2)
        nu = _foreach.maximum_(decayed, _foreach.add_scalar_(_foreach.abs(g), eps))
        out = _foreach.div_(_foreach.div(mu, nu), once(1.0 - b1 ** _steps(count)))
        return out, ScaleByAdamaxState(count, tree_unflatten(mu, spec), tree_unflatten(nu, spec))

    return leafwise(init, update_leaves, ScaleByAdamaxState)


@register_namedtuple
class ScaleByNadamState(NamedTuple):
    """State of `scale_by_nadam`: step count, the product of the momentum schedule so far (0-d, in
    torch.optim's scalar dtype: float64 when the default dtype is float64 at init, else float32),
    first and second moments."""

    count: Tensor
    mu_product: Tensor
    mu: PyTree
    nu: PyTree


def scale_by_nadam(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, momentum_decay: float = 4e-3
) -> GradientTransformation:
    """NAdam's direction (Dozat 2016), with torch.optim.NAdam's arithmetic.

    mu_t = b1 (1 - 0.96^(t psi) / 2), psi = momentum_decay;  P_t = prod_{i<=t} mu_i;
    m_t, v_t as Adam;  updates = ((1 - mu_t) / (1 - P_t) g_t + mu_{t+1} / (1 - P_t mu_{t+1}) m_t)
                                 / (sqrt(v_t / (1 - b2^t)) + eps).

    Args:
        b1, b2, eps, momentum_decay: torch.optim.NAdam's betas, eps and momentum_decay.
    Returns:
        A GradientTransformation with a ScaleByNadamState.
    """
    _check_betas(b1=b1, b2=b2)
    non_negative(eps=eps, momentum_decay=momentum_decay)

    def init(params):
        count = zero_count(params)
        # torch.optim rounds the product in its scalar dtype, then uses it as a Python float.
        mu_product = torch.ones((), dtype=_scalar_dtype(), device=count.device)
        return ScaleByNadamState(count, mu_product, zeros_like(params), zeros_like(params))

    def update_leaves(g, state, params, spec):
        count = state.count + 1
        t = _steps(count)
        mu_t = b1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))
        mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((t + 1.0) * momentum_decay))
        # Rounded to the product's dtype first, as torch.optim does (a float multiplies so anyway).
        factor = mu_t.to(state.mu_product.dtype) if isinstance(mu_t, Tensor) else mu_t
        mu_product = state.mu_product * factor
        product = _foreach.value(mu_product)
        mu, nu = _moments(g, state, spec, b1, b2)
        denom = _foreach.add_scalar_(_foreach.sqrt_(_foreach.div(nu, once(1.0 - b2**t))), eps)
        grad_part = _foreach.mul(g, once((1.0 - mu_t) / (1.0 - product)))
        momentum_part = _foreach.mul(mu, once(mu_next / (1.0 - product * mu_next)))
        out = _over(_foreach.add_(grad_part, momentum_part), denom)
        mu, nu = tree_unflatten(mu, spec), tree_unflatten(nu, spec)
        return out, ScaleByNadamState(count, mu_product, mu, nu)

    return leafwise(init, update_leaves, ScaleByNadamState, donates=True)


@register_namedtuple
class ScaleByRadamState(NamedTuple):
    """State of `scale_by_radam`: step count, first and second moments."""

    count: Tensor
    mu: PyTree
    nu: PyTree


def scale_by_radam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> GradientTransformation:
    """RAdam's direction (Liu et al. 2020, Algorithm 2), with torch.optim.RAdam's arithmetic.

    m_t, v_t as Adam;  rho_inf = 2 / (1 - b2) - 1;  rho_t = rho_inf - 2 t b2^t / (1 - b2^t);
    r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t));
    updates = m_t / (1 - b1^t) * sqrt(1 - b2^t) / (sqrt(v_t) + eps) * r_t  if rho_t > 5,
    else m_t / (1 - b1^t) (the variance estimate is not yet trusted: plain momentum).
    Both branches are one expression, as torch's multi-tensor RAdam writes them:
    updates = m_t (s_t / (sqrt(v_t) + eps) + u_t), with s_t = sqrt(1 - b2^t) r_t / (1 - b1^t)
    and u_t = 0 if rho_t > 5, else s_t = 0 and u_t = 1 / (1 - b1^t).

    Args:
        b1, b2, eps: torch.optim.RAdam's betas and eps.
    Returns:
        A GradientTransformation with a ScaleByRadamState.
    """
    _check_betas(b1=b1, b2=b2)
    non_negative(eps=eps)
    rho_inf = 2.0 / (1.0 - b2) - 1.0

    def init(params):
        return ScaleByRadamState(zero_count(params), zeros_like(params), zeros_like(params))

    def update_leaves(g, state, params, spec):
        count = state.count + 1
        t = _steps(count)
        mu, nu = _moments(g, state, spec, b1, b2)
        bias_correction1, bias_correction2 = 1.0 - b1**t, 1.0 - b2**t
        rho_t = rho_inf - 2 * t * b2**t / bias_correction2
        rect = scalar_sqrt(
            (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
        )
        # Both branches in one expression, picked by `select`: no host sync decides the step.
        rectified = rho_t > 5.0
        s_t = select(rectified, scalar_sqrt(bias_correction2) * rect / bias_correction1, 0.0)
        u_t = select(rectified, 0.0, 1.0 / bias_correction1)
        # s_t times the reciprocal, not a division by s_t: s_t = 0 then gives 0, and a gradient.
        inverse = _foreach.reciprocal_(_foreach.add_scalar_(_foreach.sqrt(nu), eps))
        out = _foreach.mul_(_foreach.add_scalar_(_foreach.mul_(inverse, once(s_t)), once(u_t)), mu)
        return out, ScaleByRadamState(count, tree_unflatten(mu, spec), tree_unflatten(nu, spec))

    return leafwise(init, update_leaves, ScaleByRadamState)


@register_namedtuple
class ScaleByRmsState(NamedTuple):
    """State of `scale_by_rms`: the running mean of squared grads, and of grads when centered
    (the empty tuple otherwise)."""

    nu: PyTree
    mu: PyTree


def scale_by_rms(
    alpha: float = 0.99, eps: float = 1e-8, centered: bool = False
) -> GradientTransformation:
    """RMSprop's direction (Hinton's lecture 6e; centered: Graves 2013), as torch.optim.RMSprop.

    v_t = alpha v_{t-1} + (1 - alpha) g_t^2;  m_t = lerp(m_{t-1}, g_t, 1 - alpha) if centered;
    updates = g_t / (sqrt(v_t - m_t^2) + eps) if centered else g_t / (sqrt(v_t) + eps).
    eps is added outside the root, as torch does.

    Args:
        alpha, eps, centered: torch.optim.RMSprop's.
    Returns:
        A GradientTransformation with a ScaleByRmsState.
    """
    non_negative(alpha=alpha, eps=eps)
    flags(centered=centered)

    def init(params):
        return ScaleByRmsState(zeros_like(params), zeros_like(params) if centered else ())

    def update_leaves(g, state, params, spec):
        decayed = _foreach.mul_(_foreach.owned(checked_leaves(state.nu, g, spec)), alpha)
        nu = _foreach.addcmul_(decayed, g, g, 1.0 - alpha)
        if centered:
            mu = _foreach.lerp_(_foreach.owned(checked_leaves(state.mu, g, spec)), g, 1.0 - alpha)
            avg = _foreach.sqrt_(_foreach.addcmul(nu, mu, mu, -1.0))
        else:
            avg = _foreach.sqrt(nu)
        out = _over(g, _foreach.add_scalar_(avg, eps))
        return out, ScaleByRmsState(
            tree_unflatten(nu, spec), tree_unflatten(mu, spec) if centered else ()
        )

    return leafwise(init, update_leaves, ScaleByRmsState, donates=True)


@register_namedtuple
class ScaleByRssState(NamedTuple):
    """State of `scale_by_rss`: the running sum of squared grads."""

    sum_of_squares: PyTree


def scale_by_rss(
    initial_accumulator_value: float = 0.0, eps: float = 1e-10
) -> GradientTransformation:
    """Adagrad's direction (Duchi et al. 2011), as torch.optim.Adagrad.

    s_t = s_{t-1} + g_t^2, s_0 = initial_accumulator_value;  updates = g_t / (sqrt(s_t) + eps).

    Args:
        initial_accumulator_value, eps: torch.optim.Adagrad's.
    Returns:
        A GradientTransformation with a ScaleByRssState.
    """
    non_negative(initial_accumulator_value=initial_accumulator_value, eps=eps)

    def init(params):
        return ScaleByRssState(
            tree_map(lambda p: torch.full_like(p, initial_accumulator_value), params)
        )

    def update_leaves(g, state, params, spec):
        total = _foreach.addcmul(checked_leaves(state.sum_of_squares, g, spec), g, g, 1.0)
        out = _over(g, _foreach.add_scalar_(_foreach.sqrt(total), eps))
        return out, ScaleByRssState(tree_unflatten(total, spec))

    return leafwise(init, update_leaves, ScaleByRssState)
