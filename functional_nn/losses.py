"""Losses: `loss(pred, target, **options) -> 0-d tensor`, pure functions.

Options have torch.nn.functional's names and defaults (`reduction="mean"`), except `sse`, the
summed squared error of the PyTorch tutorial's two-layer network. A loss with other options is a
`functools.partial`, e.g. `partial(huber, delta=0.5)`.

Checks come in two kinds. What a loss can see from shapes, dtypes and options costs nothing, so
every call checks it. What needs the target's values (class labels in range, binary targets in
[0, 1]) would sync with the host on every step, so only `check` tests it: call it once, before a
loop, e.g. `check(loss, model_output_shape, y)`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Loss = Callable[[Tensor, Tensor], Tensor]
REDUCTIONS = ("mean", "sum")


def sse(pred: Tensor, target: Tensor) -> Tensor:
    """Summed squared error, sum((pred - target)^2), the PyTorch tutorial's loss.

    Args:
        pred, target: tensors of the same shape.
    Returns:
        A 0-d tensor.
    """
    _check_same_shape("sse", pred, target)
    return (pred - target).pow(2).sum()


def mse(pred: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Squared error (pred - target)^2, averaged or summed, as `torch.nn.functional.mse_loss`.

    Args:
        pred, target: tensors of the same shape.
        reduction: "mean" over all elements, or "sum".
    Returns:
        A 0-d tensor.
    """
    _check_same_shape("mse", pred, target)
    return _reduce((pred - target).pow(2), reduction)


def l1(pred: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Absolute error |pred - target|, averaged or summed, as `torch.nn.functional.l1_loss`.

    Args:
        pred, target: tensors of the same shape.
        reduction: "mean" over all elements, or "sum".
    Returns:
        A 0-d tensor.
    """
    _check_same_shape("l1", pred, target)
    return _reduce((pred - target).abs(), reduction)


def huber(pred: Tensor, target: Tensor, reduction: str = "mean", delta: float = 1.0) -> Tensor:
    """Huber loss, as `torch.nn.functional.huber_loss`: with z = |pred - target|, z^2 / 2 where
    z < delta, else delta (z - delta / 2).

    Args:
        pred, target: tensors of the same shape.
        reduction: "mean" over all elements, or "sum".
        delta: > 0, where the loss turns from quadratic to linear.
    Returns:
        A 0-d tensor.
    """
    _check_same_shape("huber", pred, target)
    if not delta > 0:
        raise ValueError(f"huber: delta must be > 0, got {delta!r}.")
    z = (pred - target).abs()
    return _reduce(torch.where(z < delta, 0.5 * z * z, delta * (z - 0.5 * delta)), reduction)


def cross_entropy(pred: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Softmax cross-entropy of logits, as `torch.nn.functional.cross_entropy`.

    log softmax is pred - logsumexp(pred), and `torch.logsumexp` takes the max out before
    exponentiating, so no logit overflows.

    Args:
        pred: (N, C) logits.
        target: (N,) integer class labels in [0, C), or (N, C) floating class probabilities.
        reduction: "mean" over the N examples, or "sum".
    Returns:
        A 0-d tensor.
    """
    _check_cross_entropy(pred, target)
    log_probs = pred - torch.logsumexp(pred, dim=-1, keepdim=True)
    if target.is_floating_point():
        per_example = -(target * log_probs).sum(dim=-1)
    else:
        per_example = -log_probs.gather(-1, target.long().unsqueeze(-1)).squeeze(-1)
    return _reduce(per_example, reduction)


def binary_cross_entropy_with_logits(
    pred: Tensor, target: Tensor, reduction: str = "mean"
) -> Tensor:
    """Binary cross-entropy of logits, as `torch.nn.functional.binary_cross_entropy_with_logits`:
    (1 - target) pred - log sigmoid(pred), torch's formula, which never overflows.

    Args:
        pred: logits; target: the same shape, probabilities in [0, 1].
        reduction: "mean" over all elements, or "sum".
    Returns:
        A 0-d tensor.
    """
    _check_same_shape("binary_cross_entropy_with_logits", pred, target)
    return _reduce((1 - target) * pred + _neg_log_sigmoid(pred), reduction)


LOSSES: dict[str, Loss] = {
    "binary_cross_entropy_with_logits": binary_cross_entropy_with_logits,
    "cross_entropy": cross_entropy,
    "huber": huber,
    "l1": l1,
    "mse": mse,
    "sse": sse,
}


def get_loss(loss: str | Loss) -> Loss:
    """The loss named `loss` (with torch's default options), or `loss` itself when callable."""
    if callable(loss):
        return loss
    if not isinstance(loss, str):
        raise TypeError(
            f"loss must be a name or a callable (pred, target) -> 0-d tensor, got "
            f"{type(loss).__name__}: {loss!r}."
        )
    if loss not in LOSSES:
        raise ValueError(
            f"Unknown loss {loss!r}; expected one of {sorted(LOSSES)} or a callable "
            "(pred, target) -> 0-d tensor."
        )
    return LOSSES[loss]


def check(loss: str | Loss, pred_shape: Sequence[int], target: Tensor) -> None:
    """Check once, before training, that `target` fits `loss` for predictions of `pred_shape`.

    Runs the loss on meta tensors (shapes, dtypes and options, no arithmetic), then the checks
    that read the target's values, which sync with the host once. A loss of your own (not one of
    LOSSES, nor a partial of one) is not checked.

    Args:
        loss: a name, a loss of this module, or a `functools.partial` of one.
        pred_shape: the shape of the model's output, e.g. (N, C).
        target: the targets.
    Raises:
        TypeError if target is not a tensor; ValueError if it does not fit the loss.
    """
    loss = get_loss(loss)
    base = loss.func if isinstance(loss, functools.partial) else loss
    if base not in LOSSES.values():
        return
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}.")
    dtype = target.dtype if target.is_floating_point() else torch.get_default_dtype()
    loss(torch.empty(tuple(pred_shape), dtype=dtype, device="meta"), target.to("meta"))
    if base is cross_entropy and not target.is_floating_point():
        classes = pred_shape[-1]
        _check_range(
            f"cross_entropy: class labels for {classes} classes",
            target,
            0,
            classes - 1,
            "renumber the labels, or widen the model's output.",
        )
    if base is binary_cross_entropy_with_logits:
        _check_range(
            "binary_cross_entropy_with_logits: targets",
            target,
            0,
            1,
            "pass probabilities, e.g. 0/1 labels as floats.",
        )


def _check_range(what: str, target: Tensor, low: float, high: float, fix: str) -> None:
    """Raise ValueError unless every value of target lies in [low, high]; one host sync."""
    if target.numel() == 0:
        return
    given_low, given_high = torch.stack([target.min(), target.max()]).tolist()
    if given_low < low or given_high > high:
        raise ValueError(
            f"{what} must lie in [{low}, {high}], got values from {given_low} to {given_high}; {fix}"
        )


def _neg_log_sigmoid(x: Tensor) -> Tensor:
    """-log sigmoid(x) = log(1 + exp(-x)), branch by branch as torch's CPU log_sigmoid kernel.

    Each branch exponentiates only non-positive numbers, so nothing overflows, and the branch
    `where` drops has a finite gradient. The branches' inputs are chosen by the same condition as
    the branches, with `where`, so at x = 0 the gradient is the true -1/2 by construction: a clamp
    there would leave it to the kernel's choice at the tie (torch 2.13's clamp passed the gradient
    at the boundary, 2.14's drops it). NaN goes through the second branch, and stays NaN.
    Not `F.logsigmoid` itself: its CPU kernel starts threads even for a handful of elements, which
    costs milliseconds per call on a busy machine (measured with torch 2.13, 2 threads).
    """
    positive = x >= 0
    pos, neg = torch.where(positive, x, 0.0), torch.where(positive, 0.0, x)
    return torch.where(positive, torch.log1p(torch.exp(-pos)), torch.log1p(torch.exp(neg)) - neg)


def _reduce(elements: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return elements.mean()
    if reduction == "sum":
        return elements.sum()
    raise ValueError(f"Unknown reduction {reduction!r}; expected one of {list(REDUCTIONS)}.")


def _check_same_shape(name: str, pred: Tensor, target: Tensor) -> None:
    if not isinstance(target, Tensor):
        raise TypeError(f"{name}: target must be a torch.Tensor, got {type(target).__name__}.")
    if pred.shape != target.shape:
        raise ValueError(
            f"{name}: target has shape {tuple(target.shape)}, but pred has shape "
            f"{tuple(pred.shape)}; they must be equal (no broadcasting), e.g. reshape the target "
            f"to {tuple(pred.shape)}."
        )


def _check_cross_entropy(pred: Tensor, target: Tensor) -> None:
    if not isinstance(target, Tensor):
        raise TypeError(
            f"cross_entropy: target must be a torch.Tensor, got {type(target).__name__}."
        )
    if pred.ndim != 2:
        raise ValueError(
            f"cross_entropy: pred must be (N, C) logits, got shape {tuple(pred.shape)}."
        )
    labels = (
        not target.is_floating_point() and not target.is_complex() and target.dtype != torch.bool
    )
    if labels and target.shape != pred.shape[:1]:
        raise ValueError(
            f"cross_entropy: integer class labels must have shape {tuple(pred.shape[:1])} for "
            f"pred of shape {tuple(pred.shape)}, got {tuple(target.shape)}."
        )
    if not labels and (not target.is_floating_point() or target.shape != pred.shape):
        raise ValueError(
            f"cross_entropy: target must be integer class labels of shape {tuple(pred.shape[:1])} "
            f"or floating class probabilities of shape {tuple(pred.shape)}, got "
            f"{str(target.dtype).removeprefix('torch.')} of shape {tuple(target.shape)}; "
            "convert labels with target.long()."
        )
