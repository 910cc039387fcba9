"""fit: train a network with an optimizer, purely."""

from __future__ import annotations

from typing import Callable

import attrs
import torch
from torch import Tensor

from ._pytree import PyTree
from .losses import sse
from .networks import Network
from .optim.base import GradientTransformation, apply_updates


@attrs.frozen
class FitResult:
    """What fit returns.

    Attributes:
        params: the trained params (new tensors; the caller's are untouched).
        opt_state: the optimizer state after the last step; pass it back to fit to go on.
        losses: (steps,) the loss before each step's update, as the seeds print it; on x's device.
    """

    params: PyTree
    opt_state: PyTree
    losses: Tensor


def fit(
    params: PyTree,
    x: Tensor,
    y: Tensor,
    opt: GradientTransformation,
    *,
    model: Network | Callable[[PyTree, Tensor], Tensor],
    loss: Callable[[Tensor, Tensor], Tensor] = sse,
    steps: int = 500,
    opt_state: PyTree | None = None,
) -> FitResult:
    """Full-batch gradient descent: `steps` updates of `params` on `loss(model(params, x), y)`.

    Gradients come from `torch.func.grad_and_value`; nothing the caller passed is mutated, and the
    same inputs give bitwise the same result on CPU. The loop does not sync with the host.

    Args:
        params: a pytree of floating tensors, as made by `model.init`.
        x: (N, ...) floating inputs.
        y: (N, ...) targets.
        opt: a GradientTransformation, e.g. `optim.adam(1e-4)`.
        model: a Network, or any `apply(params, x) -> pred`.
        loss: `loss(pred, y) -> 0-d tensor`.
        steps: number of updates, >= 1.
        opt_state: a state from an earlier fit or `opt.init(params)`; a fresh one when None.
    Returns:
        A FitResult with the new params and opt_state and the (steps,) losses.
    """
    _check_inputs(params, x, y, model, steps)
    apply = model.apply if isinstance(model, Network) else model
    state = opt.init(params) if opt_state is None else opt_state
    value_and_grad = torch.func.grad_and_value(lambda p: loss(apply(p, x), y))
    losses = []
    for _ in range(steps):
        grads, value = value_and_grad(params)
        losses.append(value)
        updates, state = opt.update(grads, state, params)
        params = apply_updates(params, updates)
    return FitResult(params=params, opt_state=state, losses=torch.stack(losses))


def _check_inputs(params: PyTree, x: Tensor, y: Tensor, model, steps: int) -> None:
    """Reject bad input before any work, naming what was given and what was expected."""
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}.")
    if not x.is_floating_point():
        raise TypeError(
            f"x must be a floating tensor, got dtype {x.dtype}; convert it, e.g. x.to(torch.float32)."
        )
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must have the same number of rows (examples), got x of shape "
            f"{tuple(x.shape)} and y of shape {tuple(y.shape)}."
        )
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an int, got {type(steps).__name__}: {steps!r}.")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    if isinstance(model, Network):
        model.check(params, x)
    elif not callable(model):
        raise TypeError(
            f"model must be a Network or a callable apply(params, x), got {type(model).__name__}."
        )
