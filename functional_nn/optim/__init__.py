"""Optimizers as pure `(init, update)` pairs over pytrees, with torch.optim's numerics."""

from .aliases import adam, sgd
from .base import EmptyState, GradientTransformation, apply_updates, chain
from .transforms import (
    ScaleByAdamState,
    TraceState,
    add_decayed_weights,
    scale,
    scale_by_adam,
    scale_by_learning_rate,
    trace,
)

__all__ = [
    "EmptyState",
    "GradientTransformation",
    "ScaleByAdamState",
    "TraceState",
    "adam",
    "add_decayed_weights",
    "apply_updates",
    "chain",
    "scale",
    "scale_by_adam",
    "scale_by_learning_rate",
    "sgd",
    "trace",
]
