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


def _reduce_by(elements, delements, reduction, denominator):
    """As _reduce, with "none" (elements, and the gradient of their sum) and a given denominator."""
    if reduction == "none":
        return elements, delements
    if reduction == "mean":
        return float(np.sum(elements) / denominator), delements / denominator
    return _reduce(elements, delements, reduction, 1)


def smooth_l1(pred, y, reduction="mean", beta=1.0):
    """z = |pred - y|: z^2 / (2 beta) where z < beta, else z - beta / 2 (|pred - y| at beta = 0);
    its derivative is (pred - y) / beta clipped to [-1, 1] (sign at beta = 0). Shapes: pred == y."""
    d = pred - y
    z = np.abs(d)
    if beta == 0:
        return _reduce_by(z, np.sign(d), reduction, d.size)
    elements = np.where(z < beta, 0.5 * z * z / beta, z - 0.5 * beta)
    return _reduce_by(elements, np.where(z < beta, d / beta, np.sign(d)), reduction, d.size)


def _log_softmax_axis1(pred):
    shifted = pred - np.max(pred, axis=1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))


def _coefficients(y, classes, weight, ignore_index, smoothing, dtype_shape):
    """a (N, C, ...) with loss = -sum_c a_c log p_c per position, and the mean's denominator."""
    w = np.ones(classes) if weight is None else weight
    wb = w.reshape(-1, *[1] * (len(dtype_shape) - 2))
    if np.issubdtype(y.dtype, np.integer):
        valid = y != ignore_index
        safe = np.where(valid, y, 0)
        onehot = np.moveaxis(np.eye(classes)[safe], -1, 1)  # (N, C, ...)
        w_y = w[safe] * valid
        a = (1 - smoothing) * onehot * w_y[:, None] + smoothing / classes * wb * valid[:, None]
        return a, np.sum(w_y)
    t = (1 - smoothing) * y + smoothing / classes
    return t * wb, y.size / classes


def cross_entropy_nd(
    pred, y, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0
):
    """Cross-entropy over dim 1, for labels or probabilities, weights, ignore_index, smoothing.

    Per position, loss = -sum_c a_c log p_c with p = softmax(pred) over axis 1 and a_c =
    (1 - e) w_y [c = y] + (e / C) w_c for labels (0 where y = ignore_index), w_c ((1 - e) t_c + e / C)
    for probabilities t; d loss / d pred = p sum_c a_c - a. "mean" divides by sum w_y (labels) or
    the number of positions (probabilities).

    Args:
        pred: (N, C, d...); y: (N, d...) integers or (N, C, d...) probabilities.
    Returns:
        (value: float, or (N, d...) with "none"; dpred (N, C, d...), of the sum for "none").
    """
    logp = _log_softmax_axis1(pred)
    a, denominator = _coefficients(
        y, pred.shape[1], weight, ignore_index, label_smoothing, pred.shape
    )
    elements = -np.sum(a * logp, axis=1)
    dpred = np.exp(logp) * np.sum(a, axis=1, keepdims=True) - a
    return _reduce_by(elements, dpred, reduction, denominator)


def nll(pred, y, weight=None, ignore_index=-100, reduction="mean"):
    """loss = -w_y pred_y per position (0 where y = ignore_index); dpred = -w_y at y, else 0;
    "mean" divides by sum w_y. Shapes: pred (N, C, d...), y (N, d...)."""
    a, denominator = _coefficients(y, pred.shape[1], weight, ignore_index, 0.0, pred.shape)
    return _reduce_by(-np.sum(a * pred, axis=1), -a, reduction, denominator)


def binary_cross_entropy(pred, y, weight=None, reduction="mean"):
    """loss = -w (y log p + (1 - y) log(1 - p)), p = pred in (0, 1) (logs clamped at -100, as
    torch); dpred = w (p - y) / (p (1 - p)) away from the clamp. Shapes: pred == y."""
    w = 1.0 if weight is None else weight
    elements = -w * (
        y * np.maximum(np.log(pred), -100) + (1 - y) * np.maximum(np.log1p(-pred), -100)
    )
    dpred = np.broadcast_to(w * (pred - y) / (pred * (1 - pred)), pred.shape)
    return _reduce_by(np.broadcast_to(elements, pred.shape), dpred, reduction, pred.size)


def binary_cross_entropy_with_logits_full(pred, y, weight=None, reduction="mean", pos_weight=None):
    """loss = w ((1 - y) x + l (log(1 + exp(-x)))), l = 1 + (pw - 1) y; dpred = w ((1 - y) -
    l sigmoid(-x)). Shapes: pred == y; weight broadcasts; pos_weight along the last axis."""
    w = 1.0 if weight is None else weight
    lw = 1.0 if pos_weight is None else 1 + (pos_weight - 1) * y
    elements = w * ((1 - y) * pred + lw * np.logaddexp(0.0, -pred))
    dpred = w * ((1 - y) - lw * sigmoid(-pred))
    return _reduce_by(elements, np.broadcast_to(dpred, pred.shape), reduction, pred.size)


def kl_div(pred, y, reduction="mean", log_target=False):
    """loss = y (log y - pred) (0 where y = 0), dpred = -y; with log_target, exp(y) (y - pred),
    dpred = -exp(y). "batchmean" divides the sum by N. Shapes: pred == y."""
    if log_target:
        elements, dpred = np.exp(y) * (y - pred), -np.exp(y)
    else:
        logy = np.log(np.where(y > 0, y, 1.0))
        elements, dpred = np.where(y > 0, y * logy, 0.0) - y * pred, -y
    if reduction == "batchmean":
        return _reduce_by(elements, dpred, "mean", pred.shape[0])
    return _reduce_by(elements, dpred, reduction, pred.size)


def poisson_nll(pred, y, log_input=True, full=False, reduction="mean", eps=1e-8):
    """loss = exp(pred) - y pred (dpred = exp(pred) - y), or pred - y log(pred + eps)
    (dpred = 1 - y / (pred + eps)); full adds y log y - y + log(2 pi y) / 2 where y > 1."""
    if log_input:
        elements, dpred = np.exp(pred) - y * pred, np.exp(pred) - y
    else:
        elements, dpred = pred - y * np.log(pred + eps), 1 - y / (pred + eps)
    if full:
        safe = np.where(y > 1, y, 2.0)
        elements = elements + np.where(
            y > 1, safe * np.log(safe) - safe + 0.5 * np.log(2 * np.pi * safe), 0.0
        )
    return _reduce_by(elements, dpred, reduction, pred.size)


def gaussian_nll(pred, y, var, full=False, eps=1e-6, reduction="mean"):
    """loss = (log v + (pred - y)^2 / v) / 2, v = max(var, eps) (+ log(2 pi) / 2 if full);
    dpred = (pred - y) / v, dvar = (1 / v - (pred - y)^2 / v^2) / 2 (through the clamp, as torch).
    Shapes: pred == y == var. Returns (value, dpred, dvar)."""
    v = np.maximum(var, eps)
    d = pred - y
    elements = 0.5 * (np.log(v) + d * d / v) + (0.5 * np.log(2 * np.pi) if full else 0.0)
    value, dpred = _reduce_by(elements, d / v, reduction, pred.size)
    _, dvar = _reduce_by(elements, 0.5 * (1 / v - d * d / (v * v)), reduction, pred.size)
    return value, dpred, dvar
