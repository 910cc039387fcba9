"""Layers and activations: pure functions.

Convention (every function here obeys it):
- a layer is `f(params, x) -> y`, where `params` is a dict of tensors named as in `torch.nn`
  (`linear`: `{"weight": (out, in), "bias": (out,)}`) and `x` has shape `(..., in)`;
- an activation is `f(x, **hyper) -> y`, element-wise, with no params; its keyword
  hyper-parameters have torch.nn.functional's names and defaults, so an activation with other
  values is `functools.partial(leaky_relu, negative_slope=0.2)`;
- each activation runs torch's own kernel, so values and gradients are torch's to the bit;
- nothing here mutates its inputs or reads global state, so every function composes with
  `torch.func.grad`, `vmap` and `torch.compile`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

Activation = Callable[[Tensor], Tensor]


def linear(params: dict[str, Tensor], x: Tensor) -> Tensor:
    """Affine map `x @ weight.T + bias`; the bias is optional.

    Args:
        params: `{"weight": (out, in)}`, plus `"bias": (out,)` when the layer has one.
        x: (..., in).
    Returns:
        (..., out).
    """
    return F.linear(x, params["weight"], params.get("bias"))


def relu(x: Tensor) -> Tensor:
    """max(x, 0), element-wise; its gradient at 0 is 0, as in torch."""
    return torch.relu(x)


def leaky_relu(x: Tensor, negative_slope: float = 0.01) -> Tensor:
    """x where x > 0, else negative_slope * x, element-wise (torch's default slope 0.01)."""
    return F.leaky_relu(x, negative_slope)


def tanh(x: Tensor) -> Tensor:
    """Hyperbolic tangent, element-wise."""
    return torch.tanh(x)


def sigmoid(x: Tensor) -> Tensor:
    """1 / (1 + exp(-x)), element-wise."""
    return torch.sigmoid(x)


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """x * Phi(x) with Phi the standard normal CDF, element-wise, as `torch.nn.functional.gelu`.

    Args:
        x: any shape.
        approximate: "none" for the exact erf form, "tanh" for
            0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))).
    """
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}.")
    return F.gelu(x, approximate=approximate)


def softplus(x: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """log(1 + exp(beta x)) / beta, and x itself where beta x > threshold (torch's defaults)."""
    return F.softplus(x, beta, threshold)


def identity(x: Tensor) -> Tensor:
    """x unchanged."""
    return x


ACTIVATIONS: dict[str, Activation] = {
    "gelu": gelu,
    "identity": identity,
    "leaky_relu": leaky_relu,
    "relu": relu,
    "sigmoid": sigmoid,
    "softplus": softplus,
    "tanh": tanh,
}


def get_activation(activation: str | Activation) -> Activation:
    """The activation named `activation` (with torch's default hyper-parameters), or
    `activation` itself when it is a callable (e.g. a `functools.partial` with other values)."""
    if callable(activation):
        return activation
    if not isinstance(activation, str):
        raise TypeError(
            f"activation must be a name or a callable Tensor -> Tensor, got "
            f"{type(activation).__name__}: {activation!r}."
        )
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"Unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)} "
            "or a callable Tensor -> Tensor."
        )
    return ACTIVATIONS[activation]
