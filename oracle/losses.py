"""Losses in numpy: `loss(pred, y) -> (value, dpred)`, float64."""

from __future__ import annotations

import numpy as np


def sse(pred: np.ndarray, y: np.ndarray):
    """Summed squared error sum((pred - y)^2); dpred = 2 (pred - y). Shapes: pred == y."""
    diff = pred - y
    return float(np.sum(diff * diff)), 2.0 * diff


def mse(pred: np.ndarray, y: np.ndarray):
    """Mean squared error mean((pred - y)^2); dpred = 2 (pred - y) / size. Shapes: pred == y."""
    diff = pred - y
    return float(np.mean(diff * diff)), 2.0 * diff / diff.size
