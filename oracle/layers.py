"""Layers in numpy: `X_forward(...) -> (out, cache)` and `X_backward(dout, cache) -> grads`.

float64 throughout; names and shapes mirror functional_nn.layers (weight is (out, in), as
torch.nn.Linear). An activation's hyper-parameters travel in its cache, so every backward takes
only (dout, cache).
"""

from __future__ import annotations

import math

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


def leaky_relu_forward(x: np.ndarray, negative_slope: float = 0.01):
    """out = x where x > 0, else negative_slope * x. Returns out (x's shape), cache."""
    return np.where(x > 0, x, negative_slope * x), (x, negative_slope)


def leaky_relu_backward(dout: np.ndarray, cache):
    """dx = dout where x > 0, else negative_slope * dout (the slope at x == 0, as torch)."""
    x, negative_slope = cache
    return dout * np.where(x > 0, 1.0, negative_slope)


def tanh_forward(x: np.ndarray):
    """out = tanh(x). Returns out (x's shape) and the cache out."""
    out = np.tanh(x)
    return out, out


def tanh_backward(dout: np.ndarray, cache):
    """dx = dout * (1 - tanh(x)^2). Shapes: x's."""
    out = cache
    return dout * (1.0 - out * out)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) as exp(-log(1 + exp(-x))), which overflows nowhere."""
    return np.exp(-np.logaddexp(0.0, -x))


def sigmoid_forward(x: np.ndarray):
    """out = sigmoid(x). Returns out (x's shape) and the cache out."""
    out = sigmoid(x)
    return out, out


def sigmoid_backward(dout: np.ndarray, cache):
    """dx = dout * s (1 - s), s = sigmoid(x). Shapes: x's."""
    s = cache
    return dout * s * (1.0 - s)


_erf = np.vectorize(math.erf, otypes=[np.float64])
_GELU_K = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


def gelu_forward(x: np.ndarray, approximate: str = "none"):
    """out = x Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2; or, with approximate="tanh",
    out = x (1 + tanh(u)) / 2 with u = sqrt(2 / pi) (x + 0.044715 x^3). Returns out, cache."""
    if approximate == "tanh":
        t = np.tanh(_GELU_K * (x + _GELU_C * x**3))
        return 0.5 * x * (1.0 + t), (x, approximate, t)
    cdf = 0.5 * (1.0 + _erf(x / math.sqrt(2.0)))
    return x * cdf, (x, approximate, cdf)


def gelu_backward(dout: np.ndarray, cache):
    """dx = dout * (Phi(x) + x phi(x)), phi the normal density; with the tanh form,
    dx = dout * ((1 + t) / 2 + x (1 - t^2) sqrt(2 / pi) (1 + 3 * 0.044715 x^2) / 2)."""
    x, approximate, t_or_cdf = cache
    if approximate == "tanh":
        t = t_or_cdf
        du = _GELU_K * (1.0 + 3.0 * _GELU_C * x * x)
        return dout * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du)
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return dout * (t_or_cdf + x * pdf)


def softplus_forward(x: np.ndarray, beta: float = 1.0, threshold: float = 20.0):
    """out = log(1 + exp(beta x)) / beta, and x where beta x > threshold (torch's linear
    region). Returns out (x's shape), cache."""
    z = beta * x
    smooth = np.logaddexp(0.0, z) / beta
    return np.where(z > threshold, x, smooth), (x, beta, threshold)


def softplus_backward(dout: np.ndarray, cache):
    """dx = dout * sigmoid(beta x), and dout where beta x > threshold. Shapes: x's."""
    x, beta, threshold = cache
    z = beta * x
    return dout * np.where(z > threshold, 1.0, sigmoid(z))


def identity_forward(x: np.ndarray):
    """out = x. Returns out and an empty cache."""
    return x, None


def identity_backward(dout: np.ndarray, cache):
    """dx = dout."""
    return dout
