"""What every loss shares: the reductions and the checks on shapes and target values."""

from __future__ import annotations

import torch
from torch import Tensor

REDUCTIONS = ("mean", "sum", "none")


def reduce(elements: Tensor, reduction: str, denominator: Tensor | None = None) -> Tensor:
    """The per-element losses averaged ("mean", over `denominator` when given, e.g. a sum of
    class weights, else over their number), summed, or returned as they are ("none")."""
    if reduction == "mean":
        return elements.mean() if denominator is None else elements.sum() / denominator
    if reduction == "sum":
        return elements.sum()
    if reduction == "none":
        return elements
    raise ValueError(f"Unknown reduction {reduction!r}; expected one of {list(REDUCTIONS)}.")


def check_reduction(name: str, reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"{name}: Unknown reduction {reduction!r}; expected one of {list(REDUCTIONS)}."
        )


def check_range(what: str, target: Tensor, low: float, high: float, fix: str) -> None:
    """Raise ValueError unless every value of target lies in [low, high]; one host sync."""
    if target.numel() == 0:
        return
    given_low, given_high = torch.stack([target.min(), target.max()]).tolist()
    if given_low < low or given_high > high:
        raise ValueError(
            f"{what} must lie in [{low}, {high}], got values from {given_low} to {given_high}; {fix}"
        )


def check_same_shape(name: str, pred: Tensor, target: Tensor) -> None:
    if not isinstance(target, Tensor):
        raise TypeError(f"{name}: target must be a torch.Tensor, got {type(target).__name__}.")
    if pred.shape != target.shape:
        raise ValueError(
            f"{name}: target has shape {tuple(target.shape)}, but pred has shape "
            f"{tuple(pred.shape)}; they must be equal (no broadcasting), e.g. reshape the target "
            f"to {tuple(pred.shape)}."
        )
