"""Losses: `loss(pred, target) -> scalar tensor`, pure functions."""

from __future__ import annotations

from torch import Tensor


def sse(pred: Tensor, target: Tensor) -> Tensor:
    """Summed squared error, sum((pred - target)^2): the seeds' loss.

    Args:
        pred, target: tensors of the same shape.
    Returns:
        A 0-d tensor.
    """
    return (pred - target).pow(2).sum()


def mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error, mean((pred - target)^2), as `torch.nn.MSELoss()`.

    Args:
        pred, target: tensors of the same shape.
    Returns:
        A 0-d tensor.
    """
    return (pred - target).pow(2).mean()
