"""The activations added with functional_nn/activations.py, in numpy: `X_forward(x, ...) ->
(out, cache)`, `X_backward(dout, cache) -> dx`, float64, every shape x's. Hyper-parameters travel
in the cache; each derivative is written out by hand from the forward formula."""

from __future__ import annotations

import numpy as np

from .layers import sigmoid

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def silu_forward(x: np.ndarray):
    """out = x s, s = sigmoid(x)."""
    s = sigmoid(x)
    return x * s, (x, s)


def silu_backward(dout: np.ndarray, cache):
    """dx = dout s (1 + x (1 - s))."""
    x, s = cache
    return dout * s * (1.0 + x * (1.0 - s))


def mish_forward(x: np.ndarray):
    """out = x t, t = tanh(softplus(x)), softplus as logaddexp(0, x) (no overflow)."""
    t = np.tanh(np.logaddexp(0.0, x))
    return x * t, (x, t)


def mish_backward(dout: np.ndarray, cache):
    """dx = dout (t + x (1 - t^2) sigmoid(x)), since softplus' = sigmoid."""
    x, t = cache
    return dout * (t + x * (1.0 - t * t) * sigmoid(x))


def elu_forward(x: np.ndarray, alpha: float = 1.0):
    """out = x where x > 0, else alpha (exp(x) - 1)."""
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0))), (x, alpha, 1.0)


def elu_backward(dout: np.ndarray, cache):
    """dx = dout scale where x > 0, else dout scale alpha exp(x) (the left branch at 0)."""
    x, alpha, scale = cache
    return dout * scale * np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0.0)))


def selu_forward(x: np.ndarray):
    """out = SELU_SCALE elu(x, SELU_ALPHA)."""
    out, _ = elu_forward(x, SELU_ALPHA)
    return SELU_SCALE * out, (x, SELU_ALPHA, SELU_SCALE)


selu_backward = elu_backward  # the cache carries the scale


def hardswish_forward(x: np.ndarray):
    """out = 0 where x <= -3, x where x >= 3, x (x + 3) / 6 between."""
    return np.where(x <= -3, 0.0, np.where(x >= 3, x, x * (x + 3) / 6)), x


def hardswish_backward(dout: np.ndarray, cache):
    """dx = 0 where x <= -3, dout where x >= 3, dout (2 x + 3) / 6 between."""
    x = cache
    return dout * np.where(x <= -3, 0.0, np.where(x >= 3, 1.0, (2 * x + 3) / 6))


def logsigmoid_forward(x: np.ndarray):
    """out = -log(1 + exp(-x)), as -logaddexp(0, -x)."""
    return -np.logaddexp(0.0, -x), x


def logsigmoid_backward(dout: np.ndarray, cache):
    """dx = dout (1 - sigmoid(x)) = dout sigmoid(-x)."""
    return dout * sigmoid(-cache)


def softmax_forward(x: np.ndarray, dim: int = -1):
    """out = exp(x - max) / sum(exp(x - max)) along dim."""
    e = np.exp(x - np.max(x, axis=dim, keepdims=True))
    s = e / np.sum(e, axis=dim, keepdims=True)
    return s, (s, dim)


def softmax_backward(dout: np.ndarray, cache):
    """dx = s (dout - sum(dout s)) along dim: the Jacobian diag(s) - s s^T applied to dout."""
    s, dim = cache
    return s * (dout - np.sum(dout * s, axis=dim, keepdims=True))


def log_softmax_forward(x: np.ndarray, dim: int = -1):
    """out = x - logsumexp(x) along dim, the max taken out first."""
    shifted = x - np.max(x, axis=dim, keepdims=True)
    out = shifted - np.log(np.sum(np.exp(shifted), axis=dim, keepdims=True))
    return out, (out, dim)


def log_softmax_backward(dout: np.ndarray, cache):
    """dx = dout - softmax(x) sum(dout) along dim."""
    out, dim = cache
    return dout - np.exp(out) * np.sum(dout, axis=dim, keepdims=True)
