"""Central differences and relative error: how the oracle itself is checked."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def numerical_gradient(f: Callable[[], float], x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """d f / d x by central differences, (f(x + h) - f(x - h)) / 2h, one entry at a time.

    Args:
        f: a function of no arguments that reads `x` (modified in place here, then restored).
        x: float64 array of any shape.
        h: the step.
    Returns:
        An array of x's shape.
    """
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + h
        plus = f()
        x[i] = old - h
        minus = f()
        x[i] = old
        grad[i] = (plus - minus) / (2 * h)
    return grad


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max(|a| + |b|), 0 when both are zero: a scale-free distance."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = np.max(np.abs(a) + np.abs(b)) if a.size else 0.0
    return 0.0 if scale == 0.0 else float(np.max(np.abs(a - b)) / scale)
