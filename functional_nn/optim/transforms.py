"""Gradient transformations, the building blocks of the optimizers in `aliases.py`.

Each factory returns a `GradientTransformation`; the arithmetic runs over the list of leaves with
the multi-tensor ops of `_foreach`, in torch.optim's op order. Step counts are 0-d int64 tensors on
the params' device, so nothing here syncs with the host.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .._pytree import (
    PyTree,
    assert_same_structure,
    register_namedtuple,
    tree_flatten,
    tree_leaves,
    tree_unflatten,
    zeros_like,
)
from . import _foreach
from .base import EmptyState, GradientTransformation


def _zero_count(params: PyTree) -> Tensor:
    leaves = tree_leaves(params)
    device = leaves[0].device if leaves else None
    return torch.zeros((), dtype=torch.int64, device=device)


def _check_grads(grads: PyTree, like: PyTree) -> None:
    """Raise ValueError, showing both trees, when grads do not fit the tree the state was made for."""
    if tree_flatten(grads)[1] != tree_flatten(like)[1]:
        assert_same_structure(grads, like, "grads", "the optimizer state (made from params)")


def scale(factor: float) -> GradientTransformation:
    """updates = factor * grads."""

    def init(params):
        return EmptyState()

    def update(grads, state, params=None):
        g, spec = tree_flatten(grads)
        return tree_unflatten(_foreach.mul(g, factor), spec), state

    return GradientTransformation(init, update)


def scale_by_learning_rate(lr: float) -> GradientTransformation:
    """updates = -lr * grads: the descent step, sign included."""
    return scale(-lr)


def add_decayed_weights(weight_decay: float) -> GradientTransformation:
    """updates = grads + weight_decay * params (L2 regularisation, as torch.optim's weight_decay)."""

    def init(params):
        return EmptyState()

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("add_decayed_weights needs params: call update(grads, state, params).")
        g, spec = tree_flatten(grads)
        return tree_unflatten(_foreach.add(g, tree_leaves(params), alpha=weight_decay), spec), state

    return GradientTransformation(init, update)


@register_namedtuple
class TraceState(NamedTuple):
    """State of `trace`: the step count and torch.optim.SGD's momentum buffer."""

    count: Tensor
    momentum_buffer: PyTree


def trace(momentum: float, dampening: float = 0.0, nesterov: bool = False) -> GradientTransformation:
    """torch.optim.SGD's momentum.

    b_1 = g_1;  b_t = momentum * b_{t-1} + (1 - dampening) * g_t;
    updates = g_t + momentum * b_t if nesterov else b_t.
    The first step ignores dampening, as torch does.
    """

    def init(params):
        return TraceState(_zero_count(params), zeros_like(params))

    def update(grads, state, params=None):
        _check_grads(grads, state.momentum_buffer)
        g, spec = tree_flatten(grads)
        buf = _foreach.mul(tree_leaves(state.momentum_buffer), momentum)
        if dampening == 0.0:
            buf = _foreach.add(buf, g)  # b_0 = 0, so the first step gives b_1 = g exactly
        else:
            # 1 on the first step, 1 - dampening after: a tensor, so no host sync decides it.
            # In float64, then cast, as torch rounds the Python float 1 - dampening.
            keep = (1.0 - dampening * (state.count > 0).to(torch.float64)).to(g[0].dtype)
            buf = _foreach.add(buf, _foreach.mul(g, keep))
        out = _foreach.add(g, buf, alpha=momentum) if nesterov else buf
        return tree_unflatten(out, spec), TraceState(state.count + 1, tree_unflatten(buf, spec))

    return GradientTransformation(init, update)


@register_namedtuple
class ScaleByAdamState(NamedTuple):
    """State of `scale_by_adam`: step count, first and second moments, and the running max of the
    second moment (the empty tuple unless amsgrad: torch's pytree counts None as a leaf, which
    vmap and tree_map(torch.clone, ...) reject, while () has no leaves)."""

    count: Tensor
    mu: PyTree
    nu: PyTree
    nu_max: PyTree


def scale_by_adam(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, amsgrad: bool = False
) -> GradientTransformation:
    """Adam's direction, with torch.optim.Adam's arithmetic.

    m_t = lerp(m_{t-1}, g_t, 1 - b1);  v_t = b2 v_{t-1} + (1 - b2) g_t^2;
    vmax_t = max(vmax_{t-1}, v_t) if amsgrad (the raw moment, before bias correction);
    updates = m_t / (1 - b1^t) / (sqrt(v_t) / sqrt(1 - b2^t) + eps).
    The bias corrections are computed in float64, as torch computes them in Python floats.
    """

    def init(params):
        nu_max = zeros_like(params) if amsgrad else ()
        return ScaleByAdamState(_zero_count(params), zeros_like(params), zeros_like(params), nu_max)

    def update(grads, state, params=None):
        _check_grads(grads, state.mu)
        g, spec = tree_flatten(grads)
        count = state.count + 1
        mu = _foreach.lerp(tree_leaves(state.mu), g, 1.0 - b1)
        nu = _foreach.addcmul(_foreach.mul(tree_leaves(state.nu), b2), g, g, 1.0 - b2)
        nu_max = _foreach.maximum(tree_leaves(state.nu_max), nu) if amsgrad else None
        step = count.to(torch.float64)
        bias_correction1 = 1.0 - torch.pow(b1, step)
        bias_correction2_sqrt = torch.sqrt(1.0 - torch.pow(b2, step))
        denom = _foreach.add_scalar(_foreach.div(_foreach.sqrt(nu_max or nu), bias_correction2_sqrt), eps)
        out = _foreach.div(_foreach.div(mu, denom), bias_correction1)
        new_state = ScaleByAdamState(
            count,
            tree_unflatten(mu, spec),
            tree_unflatten(nu, spec),
            tree_unflatten(nu_max, spec) if amsgrad else (),
        )
        return tree_unflatten(out, spec), new_state

    return GradientTransformation(init, update)
