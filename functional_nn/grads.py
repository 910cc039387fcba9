"""Per-example gradients: one gradient per row of x, from `vmap(grad)`.

Each example runs as a batch of one (x[i:i+1], y[i:i+1]), so any network and loss that takes
batches works unchanged, and a "mean" loss gives each example's own loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from . import _data_checks
from ._pytree import PyTree
from .losses import Loss, get_loss, sse
from .networks import Network


def per_example_grads(
    params: PyTree,
    x: Tensor,
    y: Tensor,
    *,
    model: Network | Callable[[PyTree, Tensor], Tensor],
    loss: str | Loss = sse,
) -> PyTree:
    """The gradient of `loss(model(params, x[i:i+1]), y[i:i+1])` for every example i at once.

    Args:
        params: a pytree of floating tensors.
        x: (N, ...) inputs; y: (N, ...) targets.
        model: a Network, or any `apply(params, x) -> pred`.
        loss: `loss(pred, y) -> 0-d tensor`, or a loss's name (see `losses.LOSSES`).
    Returns:
        A tree shaped like params with a leading axis of N on every leaf: leaf[i] is example i's
        gradient. With a "mean" loss over examples, their mean is the full batch's gradient.
    """
    loss = get_loss(loss)
    _data_checks.check_data(x, y)
    _data_checks.check_params(params, x, model)
    _data_checks.check_finite_params(params)
    _data_checks.check_outputs(model, loss, params, x, y)
    apply = model.apply if isinstance(model, Network) else model

    def example_loss(p, xi, yi):
        return loss(apply(p, xi.unsqueeze(0)), yi.unsqueeze(0))

    return torch.func.vmap(torch.func.grad(example_loss), in_dims=(None, 0, 0))(params, x, y)
