"""Classification losses: cross_entropy, nll, binary_cross_entropy(_with_logits), kl_div.

Options have torch.nn.functional's names, defaults and meaning (see `losses` for the convention).
Class dim is 1, as torch: pred is (N, C) or (N, C, d1, ..., dK), or (C,) unbatched; class labels
are (N, d1, ..., dK) integers. A weighted "mean" divides by the summed weights of the targets
that count, so it is a weighted average, as torch's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._loss_base import check_reduction, check_same_shape, reduce
from .activations import neg_log_sigmoid


def _is_labels(target: Tensor) -> bool:
    return not target.is_floating_point() and not target.is_complex() and target.dtype != torch.bool


def _class_shapes(name: str, pred: Tensor, target: Tensor, probs_ok: bool) -> None:
    """Check pred (N, C, d...) or (C,) against labels (N, d...) / () or probabilities of pred's shape."""
    if not isinstance(target, Tensor):
        raise TypeError(f"{name}: target must be a torch.Tensor, got {type(target).__name__}.")
    if pred.ndim == 0:
        raise ValueError(f"{name}: pred must be (N, C, ...) or (C,), got a 0-d tensor.")
    labels_shape = pred.shape[:1] + pred.shape[2:] if pred.ndim > 1 else torch.Size([])
    if _is_labels(target):
        if target.shape != labels_shape:
            raise ValueError(
                f"{name}: integer class labels must have shape {tuple(labels_shape)} for pred of "
                f"shape {tuple(pred.shape)}, got {tuple(target.shape)}."
            )
    elif not probs_ok or not target.is_floating_point() or target.shape != pred.shape:
        what = " or floating class probabilities of shape " + str(tuple(pred.shape))
        raise ValueError(
            f"{name}: target must be integer class labels of shape {tuple(labels_shape)}"
            f"{what if probs_ok else ''}, got {str(target.dtype).removeprefix('torch.')} of shape "
            f"{tuple(target.shape)}; convert labels with target.long()."
        )


def _class_weight(name: str, weight: Tensor | None, classes: int) -> None:
    if weight is not None and (not isinstance(weight, Tensor) or weight.shape != (classes,)):
        raise ValueError(
            f"{name}: weight must be a tensor of shape ({classes},), one per class, got {weight!r}."
        )


def _labelled(log_probs, target, weight, ignore_index, smoothing):
    """Per-position losses and the mean's denominator for class labels, log_probs (N, C, ...)."""
    classes = log_probs.shape[1]
    valid = target != ignore_index
    safe = torch.where(valid, target, 0).long()  # an ignored label may lie outside [0, C)
    picked = -log_probs.gather(1, safe.unsqueeze(1)).squeeze(1)
    w_target = valid.to(log_probs.dtype) if weight is None else weight[safe] * valid
    elements = w_target * picked
    if smoothing:
        w = 1.0 if weight is None else weight.reshape(-1, *[1] * (log_probs.ndim - 2))
        spread = -(w * log_probs).sum(1) * valid
        elements = (1 - smoothing) * elements + (smoothing / classes) * spread
    return elements, w_target.sum()


def cross_entropy(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """Softmax cross-entropy of logits, as `torch.nn.functional.cross_entropy`.

    With labels y: l = (1 - e) w_y (-log p_y) + (e / C) sum_c w_c (-log p_c), p = softmax(pred)
    over dim 1, e = label_smoothing; targets equal to ignore_index count for nothing. With class
    probabilities t: l = -sum_c w_c t'_c log p_c, t' = (1 - e) t + e / C.

    Args:
        pred: (N, C, d1, ..., dK) logits, or (C,).
        target: (N, d1, ..., dK) integer labels in [0, C) (or ignore_index), or pred's shape of
            floating class probabilities.
        weight: (C,) class weights, or None.
        ignore_index: a label that is skipped (labels only).
        reduction: "mean" (over the counted positions, weighted), "sum" or "none".
        label_smoothing: e in [0, 1].
    Returns:
        A 0-d tensor, or (N, d1, ..., dK) with reduction="none".
    """
    _class_shapes("cross_entropy", pred, target, probs_ok=True)
    check_reduction("cross_entropy", reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(
            f"cross_entropy: label_smoothing must lie in [0, 1], got {label_smoothing}."
        )
    if pred.ndim == 1:  # unbatched: one example
        return cross_entropy(
            pred[None], target[None], weight, ignore_index, reduction, label_smoothing
        ).squeeze(0)
    classes = pred.shape[1]
    _class_weight("cross_entropy", weight, classes)
    log_probs = pred - torch.logsumexp(pred, dim=1, keepdim=True)
    if _is_labels(target):
        elements, denominator = _labelled(log_probs, target, weight, ignore_index, label_smoothing)
        return reduce(elements, reduction, denominator)
    if label_smoothing:
        target = (1 - label_smoothing) * target + label_smoothing / classes
    if weight is not None:
        target = target * weight.reshape(-1, *[1] * (pred.ndim - 2))
    return reduce(-(target * log_probs).sum(1), reduction)


def nll(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    """Negative log-likelihood of log-probabilities, as `torch.nn.functional.nll_loss`:
    l = -w_y pred_y, ignored labels count for nothing.

    Args:
        pred: (N, C, d1, ..., dK) log-probabilities (e.g. log_softmax over dim 1), or (C,).
        target: (N, d1, ..., dK) integer labels in [0, C), or ignore_index.
        weight, ignore_index, reduction: as cross_entropy.
    Returns:
        A 0-d tensor, or (N, d1, ..., dK) with reduction="none".
    """
    _class_shapes("nll", pred, target, probs_ok=False)
    check_reduction("nll", reduction)
    if pred.ndim == 1:
        return nll(pred[None], target[None], weight, ignore_index, reduction).squeeze(0)
    _class_weight("nll", weight, pred.shape[1])
    elements, denominator = _labelled(pred, target, weight, ignore_index, 0.0)
    return reduce(elements, reduction, denominator)


def _weighted(name, elements, weight, pred):
    if weight is None:
        return elements
    try:
        torch.broadcast_shapes(weight.shape, pred.shape)
    except RuntimeError:
        raise ValueError(
            f"{name}: weight of shape {tuple(weight.shape)} does not broadcast to pred's "
            f"{tuple(pred.shape)}."
        ) from None
    return elements * weight


def binary_cross_entropy(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, reduction: str = "mean"
) -> Tensor:
    """Binary cross-entropy of probabilities, as `torch.nn.functional.binary_cross_entropy`:
    l = -w (t log p + (1 - t) log(1 - p)), each log clamped at -100 as torch's.

    Args:
        pred: probabilities in [0, 1]; target: pred's shape, in [0, 1].
        weight: broadcasts to pred's shape, or None.
        reduction: "mean", "sum" or "none".
    Returns:
        A 0-d tensor, or pred's shape with reduction="none".
    """
    check_same_shape("binary_cross_entropy", pred, target)
    check_reduction("binary_cross_entropy", reduction)
    log_p, log_q = torch.log(pred).clamp(min=-100), torch.log1p(-pred).clamp(min=-100)
    elements = -(target * log_p + (1 - target) * log_q)
    return reduce(_weighted("binary_cross_entropy", elements, weight, pred), reduction)


def binary_cross_entropy_with_logits(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    reduction: str = "mean",
    pos_weight: Tensor | None = None,
) -> Tensor:
    """Binary cross-entropy of logits, as `torch.nn.functional.binary_cross_entropy_with_logits`:
    l = w ((1 - t) x + (1 + (pw - 1) t) (-log sigmoid(x))), torch's formula, which never
    overflows.

    Args:
        pred: logits; target: pred's shape, probabilities in [0, 1].
        weight: broadcasts to pred's shape, or None.
        reduction: "mean", "sum" or "none".
        pos_weight: the positives' weight, broadcasting along the last dim (classes), or None.
    Returns:
        A 0-d tensor, or pred's shape with reduction="none".
    """
    name = "binary_cross_entropy_with_logits"
    check_same_shape(name, pred, target)
    check_reduction(name, reduction)
    log_weight = 1.0 if pos_weight is None else 1 + (pos_weight - 1) * target
    elements = (1 - target) * pred + log_weight * neg_log_sigmoid(pred)
    return reduce(_weighted(name, elements, weight, pred), reduction)


def kl_div(
    pred: Tensor, target: Tensor, reduction: str = "mean", log_target: bool = False
) -> Tensor:
    """Kullback-Leibler divergence KL(target || exp(pred)), as `torch.nn.functional.kl_div`:
    l = t (log t - pred), 0 where t = 0; with log_target, l = exp(t) (t - pred).

    Args:
        pred: log-probabilities; target: pred's shape, probabilities (log-probabilities with
            log_target).
        reduction: "mean" (over all elements, torch's default), "batchmean" (the sum over N,
            the true KL divergence), "sum" or "none".
    Returns:
        A 0-d tensor, or pred's shape with reduction="none".
    """
    check_same_shape("kl_div", pred, target)
    if reduction != "batchmean":
        check_reduction("kl_div", reduction)
    if log_target:
        elements = torch.exp(target) * (target - pred)
    else:
        elements = torch.xlogy(target, target) - target * pred
    if reduction == "batchmean":
        return elements.sum() / (pred.shape[0] if pred.ndim else 1)
    return reduce(elements, reduction)
