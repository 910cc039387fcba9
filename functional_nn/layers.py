"""Layers and activations: pure functions.

Convention (every function here obeys it):
- a layer is `f(params, x) -> y`, where `params` is a dict of tensors named as in `torch.nn`
  (`linear`: `{"weight": (out, in), "bias": (out,)}`) and `x` has shape `(..., in)`;
- an activation is `f(x) -> y`, element-wise, with no params;
- nothing here mutates its inputs or reads global state, so every function composes with
  `torch.func.grad`, `vmap` and `torch.compile`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def linear(params: dict[str, Tensor], x: Tensor) -> Tensor:
    """Affine map `x @ weight.T + bias`; the bias is optional.

    Args:
        params: `{"weight": (out, in)}`, plus `"bias": (out,)` when the layer has one.
        x: (..., in).
    Returns:
        (..., out).
    """
    return torch.nn.functional.linear(x, params["weight"], params.get("bias"))


def relu(x: Tensor) -> Tensor:
    """max(x, 0), element-wise; its gradient at 0 is 0, as in torch."""
    return torch.relu(x)


def identity(x: Tensor) -> Tensor:
    """x unchanged."""
    return x


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": relu,
    "identity": identity,
}


def get_activation(activation: str | Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """The activation named `activation`, or `activation` itself when it is a callable."""
    if callable(activation):
        return activation
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"Unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)} "
            "or a callable Tensor -> Tensor."
        )
    return ACTIVATIONS[activation]
