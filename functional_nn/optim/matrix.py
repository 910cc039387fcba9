"""Optimizers that treat matrices specially: Adafactor (factored second moments) and Muon
(orthogonalized momentum), with torch.optim's names, defaults and op order.

Muon's learning rate only scales its step, so `muon` is `chain(scale_by_muon, add_decayed_weights,
scale_by_learning_rate)` and takes schedules as every alias does. Adafactor's does not (its relative
step size is min(lr, 1/sqrt(t)) and its decay lr * weight_decay), so `adafactor` is one transform
that reads the learning rate (a number, 0-d tensor or schedule) itself and returns the whole step.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch
from torch import Tensor

from .._pytree import (
    PyTree,
    register_namedtuple,
    tree_flatten,
    tree_leaves,
    tree_unflatten,
    zeros_like,
)
from . import _foreach
from ._checks import flags, integer, non_negative, number
from ._named import shown_as_call
from .base import GradientTransformation, chain, checked_leaves, leafwise, param_leaves
from .transforms import add_decayed_weights, as_schedule, scale, scale_by_learning_rate, zero_count


@register_namedtuple
class AdafactorState(NamedTuple):
    """State of `adafactor`: the step count and, per param, the row and column means of the
    squared grads (shapes (..., R, 1) and (..., 1, C), for params of >= 2 dims) or the full mean
    (for 0-d and 1-d params); a slot that does not apply holds an empty tensor."""

    count: Tensor
    row_var: PyTree
    col_var: PyTree
    variance: PyTree


@shown_as_call
def adafactor(
    lr=1e-2,
    beta2_decay: float = -0.8,
    eps: tuple[float | None, float] = (None, 1e-3),
    d: float = 1.0,
    weight_decay: float = 0.0,
    *,
    foreach: bool | None = None,
    maximize: bool = False,
) -> GradientTransformation:
    """Adafactor (Shazeer & Stern 2018), as torch.optim.Adafactor (its single-tensor arithmetic).

    g <- -g if maximize; t the step; beta2_t = 1 - t^beta2_decay; rho_t = min(lr, 1/sqrt(t));
    alpha = max(eps2, RMS(p)) rho_t; for p of >= 2 dims (factored over its last two):
    R <- lerp(R, mean_{-1}(g^2), 1 - beta2_t), C <- lerp(C, mean_{-2}(g^2), 1 - beta2_t),
    V = R C / max(mean_{-2}(R), eps1); else V <- lerp(V, g^2, 1 - beta2_t);
    U = g / sqrt(max(V, eps1^2)); p <- p (1 - lr weight_decay) - alpha / max(1, RMS(U) / d) U.
    eps1 None is the params' dtype's machine epsilon.

    Args:
        lr, beta2_decay, eps, d, weight_decay, maximize: torch.optim.Adafactor's, with its
            defaults; lr may also be a 0-d tensor or a schedule. foreach: accepted for torch's
            signature and ignored (one arithmetic).
    Returns:
        A GradientTransformation with an AdafactorState; its updates carry the sign and lr.
    """
    schedule = as_schedule(lr)
    number("beta2_decay", beta2_decay, "a number <= 0", lambda v: v <= 0.0)
    if not isinstance(eps, (tuple, list)) or len(eps) != 2:
        raise ValueError(f"Invalid eps: {eps!r} (expected a pair (eps1 or None, eps2)).")
    eps1, eps2 = eps
    if eps1 is not None:
        number("eps[0] (epsilon1)", eps1)
    number("eps[1] (epsilon2)", eps2)
    number("d (clipping threshold)", d, "a number >= 1", lambda v: v >= 1.0)
    non_negative(weight_decay=weight_decay)
    flags(maximize=maximize)
    if foreach is not None:
        flags(foreach=foreach)

    def init(params):
        empty = lambda x: x.new_zeros(0)
        factored = lambda x, dim: x.new_zeros((*x.shape[:dim], 1, *x.shape[dim + 1 :]))
        slot = lambda fn, want: lambda x: fn(x) if (x.ndim > 1) == want else empty(x)
        tree = lambda fn: tree_unflatten(
            list(map(fn, tree_leaves(params))), tree_flatten(params)[1]
        )
        return AdafactorState(
            zero_count(params),
            tree(slot(lambda x: factored(x, x.ndim - 1), True)),
            tree(slot(lambda x: factored(x, x.ndim - 2), True)),
            tree(slot(torch.zeros_like, False)),
        )

    def update_leaves(g, state, params, spec):
        p = param_leaves(params, g, spec, "adafactor")
        slots = [tree_flatten(s) for s in (state.row_var, state.col_var, state.variance)]
        if any(s[1] != spec for s in slots):
            raise ValueError("state does not belong to these params; use adafactor's init on them.")
        count = state.count + 1
        t = _foreach.value(count)
        weight = t**beta2_decay
        lr_t = lr if isinstance(lr, numbers.Real) else schedule(state.count)
        inv_sqrt = 1 / (t**0.5)
        rho = _minimum(lr_t, inv_sqrt)
        out, rows, cols, variances = [], [], [], []
        for gi, x, row, col, var in zip(g, p, *(s[0] for s in slots)):
            e1 = torch.finfo(x.dtype).eps if eps1 is None else eps1
            w = weight.to(x.dtype) if isinstance(weight, Tensor) else weight
            if x.ndim > 1:
                row = row.lerp(_mean_square(gi, -1), w)
                col = col.lerp(_mean_square(gi, -2), w)
                v = (row @ col).div(row.mean(dim=-2, keepdim=True).clamp(min=e1))
            else:
                var = var.lerp(gi * gi, w)
                v = var
            u = v.clamp(min=e1 * e1).rsqrt().mul(gi)
            alpha = _norm(x, 1.0).clamp(min=eps2) * rho
            denom = _norm(u, d).clamp(min=1.0)
            step = u.mul(-alpha / denom)
            if weight_decay != 0.0:
                step = step.add(x.mul(lr_t * weight_decay), alpha=-1.0)
            out.append(step), rows.append(row), cols.append(col), variances.append(var)
        tree = lambda leaves: tree_unflatten(leaves, spec)
        return out, AdafactorState(count, tree(rows), tree(cols), tree(variances))

    direction = leafwise(init, update_leaves, AdafactorState)
    return chain(scale(-1.0), direction) if maximize else direction


def _mean_square(g: Tensor, dim: int) -> Tensor:
    """mean(g^2) over `dim`, as torch.optim.Adafactor computes it (a norm, squared)."""
    return torch.linalg.vector_norm(g, dim=dim, keepdim=True).square().div(g.size(dim))


def _norm(x: Tensor, d: float) -> Tensor:
    """||x||_2 / (sqrt(numel) d): RMS(x) / d, in float64 as torch's .item() / (numel**0.5 * d)."""
    return torch.linalg.vector_norm(x).to(torch.float64) / (x.numel() ** 0.5 * d)


def _minimum(a, b):
    """min(a, b) of numbers or 0-d float64 tensors (a step's lr and 1/sqrt(t)), no host sync."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        a, b = (torch.as_tensor(v, dtype=torch.float64) for v in (a, b))
        return torch.where(b < a, b, a)
    return min(a, b)


# Keller Jordan's quintic Newton-Schulz coefficients and eps, torch.optim.Muon's defaults.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
_ADJUST = {
    "original": lambda a, b: math.sqrt(max(1, a / b)),
    "match_rms_adamw": lambda a, b: 0.2 * math.sqrt(max(a, b)),
    "spectral_unclamped": lambda a, b: math.sqrt(a / b),
}


@register_namedtuple
class ScaleByMuonState(NamedTuple):
    """State of `scale_by_muon`: the step count and the momentum buffer, shaped like the params."""

    count: Tensor
    momentum_buffer: PyTree


def scale_by_muon(
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    eps: float = 1e-7,
    ns_steps: int = 5,
    adjust_lr_fn: str | None = None,
    *,
    ns_dtype: torch.dtype = torch.bfloat16,
) -> GradientTransformation:
    """Muon's direction (Jordan et al. 2024), as torch.optim.Muon computes it, for 2-d params.

    B <- lerp(B, g, 1 - momentum); M = lerp(g, B, momentum) if nesterov else B;
    X = M / max(||M||_F, eps) (transposed when it has more rows than columns), in ns_dtype; then
    ns_steps times: A = X X^T, X <- a X + (b A + c A A) X; updates = ratio(R, C) X, with ratio
    sqrt(max(1, R/C)) ("original", None), 0.2 sqrt(max(R, C)) ("match_rms_adamw") or sqrt(R/C)
    ("spectral_unclamped", torch >= 2.14's).

    Args:
        momentum, nesterov, ns_coefficients (a, b, c), eps, ns_steps, adjust_lr_fn: torch's.
        ns_dtype: the dtype of the iteration; torch's bfloat16 by default (float64 to check it).
    Returns:
        A GradientTransformation with a ScaleByMuonState.
    """
    non_negative(momentum=momentum, eps=eps)
    flags(nesterov=nesterov)
    integer("ns_steps", ns_steps, 0)
    if ns_steps >= 100:
        raise ValueError(f"Invalid ns_steps: {ns_steps} (must be less than 100, as torch's).")
    if not isinstance(ns_coefficients, (tuple, list)) or len(ns_coefficients) != 3:
        raise ValueError(f"ns_coefficients must be 3 numbers (a, b, c), got {ns_coefficients!r}.")
    for i, c in enumerate(ns_coefficients):
        number(f"ns_coefficients[{i}]", c, "a number", lambda v: True)
    if adjust_lr_fn is not None and adjust_lr_fn not in _ADJUST:
        raise ValueError(
            f"Adjust learning rate function {adjust_lr_fn} is not supported; use None or one of "
            f"{sorted(_ADJUST)}."
        )
    ratio = _ADJUST[adjust_lr_fn or "original"]

    def init(params):
        for i, x in enumerate(tree_leaves(params)):
            if x.ndim != 2:
                raise ValueError(
                    f"Muon only supports 2D parameters, got leaf {i} of shape {tuple(x.shape)}; "
                    "give the others another optimizer (e.g. adamw, with multi_transform)."
                )
        return ScaleByMuonState(zero_count(params), zeros_like(params))

    def update_leaves(g, state, params, spec):
        buf = _foreach.lerp(checked_leaves(state.momentum_buffer, g, spec), g, 1.0 - momentum)
        out = []
        for gi, b in zip(g, buf):
            m = gi.lerp(b, momentum) if nesterov else b
            x = _newton_schulz(m, ns_coefficients, ns_steps, eps, ns_dtype).to(gi.dtype)
            out.append(x.mul(ratio(*gi.shape)))
        return out, ScaleByMuonState(state.count + 1, tree_unflatten(buf, spec))

    return leafwise(init, update_leaves, ScaleByMuonState)


def _newton_schulz(m: Tensor, coefficients, steps: int, eps: float, dtype: torch.dtype) -> Tensor:
    """The quintic Newton-Schulz iteration towards the orthogonal factor of m, in torch's ops."""
    a, b, c = coefficients
    tall = m.size(0) > m.size(1)
    x = m.to(dtype)
    x = x.T if tall else x
    x = x.div(x.norm().clamp(min=eps))
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


@shown_as_call
def muon(
    lr=1e-3,
    weight_decay: float = 0.1,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    eps: float = 1e-7,
    ns_steps: int = 5,
    adjust_lr_fn: str | None = None,
    *,
    ns_dtype: torch.dtype = torch.bfloat16,
) -> GradientTransformation:
    """Muon, as torch.optim.Muon: p <- p (1 - lr weight_decay) - lr ratio NS(M) (see
    `scale_by_muon`), here p - lr (ratio NS(M) + weight_decay p). Every param must be 2-d.

    Args:
        lr: a number >= 0, a 0-d tensor or a schedule; the rest: as `scale_by_muon`, and
            weight_decay (decoupled, scaled by lr) as torch's, with torch's defaults.
    Returns:
        A GradientTransformation: chain(scale_by_muon, add_decayed_weights, scale_by_learning_rate).
    """
    non_negative(weight_decay=weight_decay)
    direction = scale_by_muon(
        momentum, nesterov, ns_coefficients, eps, ns_steps, adjust_lr_fn, ns_dtype=ns_dtype
    )
    decay = [add_decayed_weights(weight_decay)] if weight_decay != 0.0 else []
    return chain(direction, *decay, scale_by_learning_rate(lr))
