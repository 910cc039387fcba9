"""Losses in numpy: `loss(pred, y, ...) -> (value, dpred)`, float64.

`reduction="mean"` divides the summed loss by the number of elements, except cross_entropy,
which divides by the number of examples N (as torch); `"sum"` does not divide. Defaults are
torch's, except `sse`, the seeds' summed squared error.
"""

from __future__ import annotations

import numpy as np

from .layers import sigmoid


def _reduce(elements: np.ndarray, delements: np.ndarray, reduction: str, count: int):
    """(value, dpred) from per-element losses and their derivatives, summed or averaged."""
    if reduction == "sum":
        return float(np.sum(elements)), delements
    if reduction == "mean":
        return float(np.sum(elements) / count), delements / count
    raise ValueError(f"Unknown reduction {reduction!r}; expected 'mean' or 'sum'.")


def sse(pred: np.ndarray, y: np.ndarray):
    """Summed squared error sum((pred - y)^2); dpred = 2 (pred - y). Shapes: pred == y."""
    diff = pred - y
    return float(np.sum(diff * diff)), 2.0 * diff


def mse(pred: np.ndarray, y: np.ndarray, reduction: str = "mean"):
    """Squared error (pred - y)^2, reduced; its derivative is 2 (pred - y). Shapes: pred == y."""
    diff = pred - y
    return _reduce(diff * diff, 2.0 * diff, reduction, diff.size)


def l1(pred: np.ndarray, y: np.ndarray, reduction: str = "mean"):
    """Absolute error |pred - y|, reduced; its derivative is sign(pred - y), 0 at a tie as torch.
    Shapes: pred == y."""
    diff = pred - y
    return _reduce(np.abs(diff), np.sign(diff), reduction, diff.size)


def huber(pred: np.ndarray, y: np.ndarray, reduction: str = "mean", delta: float = 1.0):
    """Huber loss with z = |pred - y|: z^2 / 2 where z < delta, else delta (z - delta / 2);
    its derivative is pred - y clipped to [-delta, delta]. Shapes: pred == y."""
    diff = pred - y
    z = np.abs(diff)
    elements = np.where(z < delta, 0.5 * z * z, delta * (z - 0.5 * delta))
    return _reduce(elements, np.clip(diff, -delta, delta), reduction, diff.size)


def log_softmax(pred: np.ndarray) -> np.ndarray:
    """pred - logsumexp(pred) over the last axis, with the max taken out so exp never overflows."""
    shifted = pred - np.max(pred, axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def cross_entropy(pred: np.ndarray, y: np.ndarray, reduction: str = "mean"):
    """Softmax cross-entropy of logits, with class labels or class probabilities.

    loss_i = -log softmax(pred_i)[y_i] for labels, -sum_c y_ic log softmax(pred_i)_c for
    probabilities; dpred_i = softmax(pred_i) sum_c y_ic - y_i, y_i one-hot for labels.

    Args:
        pred: (N, C) logits.
        y: (N,) integer labels in [0, C), or (N, C) class probabilities.
        reduction: "mean" (over the N examples) or "sum".
    Returns:
        (float, dpred of shape (N, C)).
    """
    logp = log_softmax(pred)
    if np.issubdtype(y.dtype, np.integer):
        y = np.eye(pred.shape[-1])[y]
    elements = -np.sum(y * logp, axis=-1)
    dpred = np.exp(logp) * np.sum(y, axis=-1, keepdims=True) - y
    return _reduce(elements, dpred, reduction, pred.shape[0])


def binary_cross_entropy_with_logits(pred: np.ndarray, y: np.ndarray, reduction: str = "mean"):
    """-(y log sigmoid(pred) + (1 - y) log(1 - sigmoid(pred))) = (1 - y) pred + log(1 + exp(-pred)),
    the log term as logaddexp(0, -pred) so it never overflows; dpred = sigmoid(pred) - y.
    Shapes: pred == y, y in [0, 1]."""
    elements = (1.0 - y) * pred + np.logaddexp(0.0, -pred)
    return _reduce(elements, sigmoid(pred) - y, reduction, pred.size)
