"""Losses: `loss(pred, target, **options) -> tensor`, pure functions.

Options have torch.nn.functional's names, defaults and meaning: `reduction` ("mean", "sum" or
"none": per-element losses) on every loss, `weight`, `pos_weight`, `ignore_index`,
`label_smoothing` where torch has them; `sse` is the summed squared error of the PyTorch tutorial's two-layer network. A loss with other
options is a `functools.partial`, e.g. `partial(huber, delta=0.5)`. Regression losses are here;
classification losses (cross_entropy, nll, binary_cross_entropy(_with_logits), kl_div) in
`classification.py`, re-exported. Every loss's gradient is checked against `oracle/losses.py`.

Checks come in two kinds. What a loss can see from shapes, dtypes and options costs nothing, so
every call checks it. What needs the target's values (class labels in range, binary targets in
[0, 1]) would sync with the host on every step, so only `check` tests it: call it once, before a
loop, e.g. `check(loss, model_output_shape, y)`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._loss_base import (
    REDUCTIONS,  # noqa: F401 (re-exported: losses.REDUCTIONS)
    check_range,
    check_reduction,
    check_same_shape,
    reduce,
)
from .classification import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    cross_entropy,
    kl_div,
    nll,
)

Loss = Callable[[Tensor, Tensor], Tensor]


def _elementwise(name: str, pred: Tensor, target: Tensor, reduction: str) -> None:
    check_same_shape(name, pred, target)
    check_reduction(name, reduction)


def sse(pred: Tensor, target: Tensor) -> Tensor:
    """Summed squared error, sum((pred - target)^2), the PyTorch tutorial's loss.

    Args:
        pred, target: tensors of the same shape.
    Returns:
        A 0-d tensor.
    """
    check_same_shape("sse", pred, target)
    return (pred - target).pow(2).sum()


def mse(pred: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Squared error (pred - target)^2, as `torch.nn.functional.mse_loss`.

    Args:
        pred, target: tensors of the same shape.
        reduction: "mean" over all elements, "sum", or "none".
    Returns:
        A 0-d tensor, or pred's shape with reduction="none" (so for every loss below).
    """
    _elementwise("mse", pred, target, reduction)
    return reduce((pred - target).pow(2), reduction)


def l1(pred: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Absolute error |pred - target|, as `torch.nn.functional.l1_loss`; pred, target: one shape."""
    _elementwise("l1", pred, target, reduction)
    return reduce((pred - target).abs(), reduction)


def huber(pred: Tensor, target: Tensor, reduction: str = "mean", delta: float = 1.0) -> Tensor:
    """Huber loss, as `torch.nn.functional.huber_loss`: with z = |pred - target|, z^2 / 2 where
    z < delta, else delta (z - delta / 2).

    Args:
        pred, target: tensors of the same shape.
        reduction: "mean", "sum" or "none".
        delta: > 0, where the loss turns from quadratic to linear.
    """
    _elementwise("huber", pred, target, reduction)
    if not delta > 0:
        raise ValueError(f"huber: delta must be > 0, got {delta!r}.")
    z = (pred - target).abs()
    return reduce(torch.where(z < delta, 0.5 * z * z, delta * (z - 0.5 * delta)), reduction)


def smooth_l1(pred: Tensor, target: Tensor, reduction: str = "mean", beta: float = 1.0) -> Tensor:
    """Smooth L1, as `torch.nn.functional.smooth_l1_loss` (Girshick 2015, Fast R-CNN): with
    z = |pred - target|, z^2 / (2 beta) where z < beta, else z - beta / 2; l1 when beta = 0.

    Args:
        pred, target: tensors of the same shape.
        reduction: "mean", "sum" or "none".
        beta: >= 0.
    """
    _elementwise("smooth_l1", pred, target, reduction)
    if not beta >= 0:
        raise ValueError(f"smooth_l1: beta must be >= 0, got {beta!r}.")
    z = (pred - target).abs()
    if beta == 0:
        return reduce(z, reduction)
    return reduce(torch.where(z < beta, 0.5 * z * z / beta, z - 0.5 * beta), reduction)


def poisson_nll(
    pred: Tensor,
    target: Tensor,
    log_input: bool = True,
    full: bool = False,
    reduction: str = "mean",
    eps: float = 1e-8,
) -> Tensor:
    """Poisson negative log-likelihood, as `torch.nn.functional.poisson_nll_loss`:
    exp(pred) - target pred with log_input, else pred - target log(pred + eps); `full` adds
    Stirling's term target log target - target + log(2 pi target) / 2 where target > 1.

    Args:
        pred: the log-rate (log_input) or the rate; target: pred's shape, counts >= 0.
        log_input, full, eps: torch's options.
        reduction: "mean", "sum" or "none".
    """
    _elementwise("poisson_nll", pred, target, reduction)
    if log_input:
        elements = torch.exp(pred) - target * pred
    else:
        elements = pred - target * torch.log(pred + eps)
    if full:
        big = target > 1
        safe = torch.where(big, target, 2.0)  # log of the dropped branch stays finite
        stirling = safe * torch.log(safe) - safe + 0.5 * torch.log(2 * math.pi * safe)
        elements = elements + torch.where(big, stirling, 0.0)
    return reduce(elements, reduction)


def gaussian_nll(
    pred: Tensor,
    target: Tensor,
    var: Tensor,
    full: bool = False,
    eps: float = 1e-6,
    reduction: str = "mean",
) -> Tensor:
    """Gaussian negative log-likelihood, as `torch.nn.functional.gaussian_nll_loss`:
    (log v + (pred - target)^2 / v) / 2, v = max(var, eps), plus log(2 pi) / 2 when full.

    As torch's, the clamp is invisible to the gradient: d/dvar is taken at v even where var < eps.
    Not in LOSSES (it takes three tensors): call it, or wrap it, with the variance.

    Args:
        pred: (N, *) means; target: pred's shape, or one that broadcasts to it (torch's
            documented exception to "no broadcasting").
        var: pred's shape, or pred's with the last dim 1 or dropped (one variance per row), > 0.
        full, eps, reduction: torch's options.
    """
    check_reduction("gaussian_nll", reduction)
    if not isinstance(target, Tensor) or _broadcast(target.shape, pred.shape) != pred.shape:
        check_same_shape("gaussian_nll", pred, target)  # raises, naming both shapes
    if var.shape != pred.shape:
        if var.shape == pred.shape[:-1]:
            var = var.unsqueeze(-1)
        elif not (var.shape[:-1] == pred.shape[:-1] and var.shape[-1:] == (1,)):
            raise ValueError(
                f"gaussian_nll: var has shape {tuple(var.shape)}, expected pred's "
                f"{tuple(pred.shape)}, or it with the last dim 1 or dropped."
            )
    v = var + (var.clamp(min=eps) - var).detach()
    elements = 0.5 * (torch.log(v) + (pred - target) ** 2 / v)
    if full:
        elements = elements + 0.5 * math.log(2 * math.pi)
    return reduce(elements, reduction)


def _broadcast(a: torch.Size, b: torch.Size) -> torch.Size | None:
    try:
        return torch.broadcast_shapes(a, b)
    except RuntimeError:
        return None


LOSSES: dict[str, Loss] = {
    "binary_cross_entropy": binary_cross_entropy,
    "binary_cross_entropy_with_logits": binary_cross_entropy_with_logits,
    "cross_entropy": cross_entropy,
    "huber": huber,
    "kl_div": kl_div,
    "l1": l1,
    "mse": mse,
    "nll": nll,
    "poisson_nll": poisson_nll,
    "smooth_l1": smooth_l1,
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
    if loss == "gaussian_nll":
        raise ValueError(
            "gaussian_nll takes a variance besides (pred, target), so it has no name here: "
            "pass a callable, e.g. lambda pred, y: losses.gaussian_nll(pred, y, var)."
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
    if base in (cross_entropy, nll) and not target.is_floating_point():
        classes = pred_shape[1] if len(pred_shape) > 1 else pred_shape[0]
        ignore = _option(loss, "ignore_index", -100)
        check_range(  # labels equal to ignore_index are skipped by the loss, so here too
            f"{base.__name__}: class labels for {classes} classes",
            target[target != ignore],
            0,
            classes - 1,
            "renumber the labels, or widen the model's output.",
        )
    if base in (binary_cross_entropy, binary_cross_entropy_with_logits):
        check_range(
            f"{base.__name__}: targets",
            target,
            0,
            1,
            "pass probabilities, e.g. 0/1 labels as floats.",
        )


def _option(loss: Loss, name: str, default):
    """The value of option `name` that a (partial of a) loss runs with."""
    return loss.keywords.get(name, default) if isinstance(loss, functools.partial) else default
