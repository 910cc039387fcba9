"""The seeds' numpy training program, as a function."""

from __future__ import annotations

import numpy as np

from . import losses
from .networks import loss_and_grads


def flat_params(params: list[dict]) -> list[np.ndarray]:
    """The arrays of an mlp params list, in functional_nn's leaf order (layer by layer, weight
    then bias)."""
    return [layer[k] for layer in params for k in sorted(layer, key=["weight", "bias"].index)]


def train(
    params: list[dict],
    x: np.ndarray,
    y: np.ndarray,
    optimizer,
    steps: int = 500,
    loss=losses.sse,
    activation="relu",
):
    """Train an mlp in place of a copy: forward, loss, hand-derived backward, optimizer step.

    Args:
        params: mlp params (float64 arrays; copied, not modified).
        x: (N, in); y: (N, out).
        optimizer: an oracle.optim object (SGD, Adam, ...).
        steps: number of updates.
    Returns:
        (params after training, (steps,) losses before each update).
    """
    params = [{k: np.array(v, dtype=np.float64) for k, v in layer.items()} for layer in params]
    history = np.empty(steps)
    for t in range(steps):
        history[t], grads = loss_and_grads(params, x, y, loss, activation)
        optimizer.step(flat_params(params), flat_params(grads))
    return params, history
