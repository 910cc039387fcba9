"""Layers in numpy: `X_forward(...) -> (out, cache)` and `X_backward(dout, cache) -> grads`.

float64 throughout; names and shapes mirror functional_nn.layers (weight is (out, in), as
torch.nn.Linear).
"""

from __future__ import annotations

import numpy as np


def linear_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None):
    """out = x @ w.T + b.

    Args:
        x: (N, in); w: (out, in); b: (out,) or None.
    Returns:
        out: (N, out); cache: (x, w, b).
    """
    out = x @ w.T
    if b is not None:
        out = out + b
    return out, (x, w, b)


def linear_backward(dout: np.ndarray, cache):
    """Gradients of linear_forward.

    Args:
        dout: (N, out), the upstream gradient.
        cache: from linear_forward.
    Returns:
        dx: (N, in) = dout @ w; dw: (out, in) = dout.T @ x; db: (out,) = sum over N of dout,
        or None when the layer has no bias.
    """
    x, w, b = cache
    dx = dout @ w
    dw = dout.T @ x
    db = dout.sum(axis=0) if b is not None else None
    return dx, dw, db


def relu_forward(x: np.ndarray):
    """out = max(x, 0). Returns out (x's shape) and the cache x."""
    return np.maximum(x, 0.0), x


def relu_backward(dout: np.ndarray, cache):
    """dx = dout where x > 0, else 0 (torch's convention at x == 0). Shapes: x's."""
    x = cache
    return dout * (x > 0)
