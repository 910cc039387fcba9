"""batch_norm, layer_norm and dropout in numpy: `X_forward(...) -> (out, cache)` (batch_norm also
returns its new running statistics), `X_backward(dout, cache) -> grads`, float64."""

from __future__ import annotations

import numpy as np


def _normalise_backward(dxhat, xhat, invstd, axes):
    """dx of xhat = (x - mean) invstd with batch mean and biased variance over `axes`:
    dx = invstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), the cs231n simplification."""
    mean = lambda a: np.mean(a, axis=axes, keepdims=True)
    return invstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))


def batch_norm_forward(x, gamma, beta, state, train, momentum=0.1, eps=1e-5):
    """Batch normalisation over every axis but 1, as torch.nn.BatchNorm1d/2d.

    Args:
        x: (N, C) or (N, C, H, W); gamma, beta: (C,) or None; state: dict with running_mean (C,),
        running_var (C,), num_batches_tracked (int), or None (batch statistics always).
    Returns:
        out: x's shape; new_state: running_mean <- (1 - m) running_mean + m mean and
        running_var <- (1 - m) running_var + m var n / (n - 1) in training (m = 1 / count when
        momentum is None), the state itself in eval; cache.
    """
    axes = (0, *range(2, x.ndim))
    shape = [1, -1] + [1] * (x.ndim - 2)
    batch = train or state is None
    if batch:
        mean, var = x.mean(axis=axes), x.var(axis=axes)
    else:
        mean, var = state["running_mean"], state["running_var"]
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean.reshape(shape)) * invstd.reshape(shape)
    g = np.ones(x.shape[1]) if gamma is None else gamma
    out = xhat * g.reshape(shape) + (0.0 if beta is None else beta.reshape(shape))
    new_state = state
    if train and state is not None:
        n = x.size // x.shape[1]
        count = state["num_batches_tracked"] + 1
        m = 1.0 / count if momentum is None else momentum
        new_state = {
            "running_mean": (1 - m) * state["running_mean"] + m * mean,
            "running_var": (1 - m) * state["running_var"] + m * var * n / (n - 1),
            "num_batches_tracked": count,
        }
    return out, new_state, (xhat, invstd.reshape(shape), g.reshape(shape), axes, batch)


def batch_norm_backward(dout, cache):
    """dx (x's shape), dgamma = sum(dout xhat), dbeta = sum(dout) (both (C,)).

    With batch statistics, dx goes through the mean and variance too; with running ones,
    dx = dout gamma invstd."""
    xhat, invstd, g, axes, batch = cache
    dxhat = dout * g
    dx = _normalise_backward(dxhat, xhat, invstd, axes) if batch else dxhat * invstd
    return dx, np.sum(dout * xhat, axis=axes), np.sum(dout, axis=axes)


def layer_norm_forward(x, gamma, beta, normalized_ndim, eps=1e-5):
    """Layer normalisation over the last `normalized_ndim` axes.

    Args:
        x: (..., *S); gamma, beta: S or None.
    Returns:
        out: x's shape; cache.
    """
    axes = tuple(range(x.ndim - normalized_ndim, x.ndim))
    mean, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean) * invstd
    g = np.ones(x.shape[x.ndim - normalized_ndim :]) if gamma is None else gamma
    out = xhat * g + (0.0 if beta is None else beta)
    return out, (xhat, invstd, g, axes)


def layer_norm_backward(dout, cache):
    """dx (x's shape), dgamma = sum(dout xhat) and dbeta = sum(dout) over the leading axes (S)."""
    xhat, invstd, g, axes = cache
    lead = tuple(range(xhat.ndim - len(axes)))
    dx = _normalise_backward(dout * g, xhat, invstd, axes)
    return dx, np.sum(dout * xhat, axis=lead), np.sum(dout, axis=lead)


def dropout_forward(x, mask, p):
    """out = x mask / (1 - p) (0 when p = 1), with the kept-elements mask given. Shapes: x's."""
    scale = 0.0 if p == 1.0 else 1.0 / (1.0 - p)
    return x * mask * scale, mask * scale


def dropout_backward(dout, cache):
    """dx = dout mask / (1 - p)."""
    return dout * cache
