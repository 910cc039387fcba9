"""Activations: element-wise (or, for softmax and log_softmax, along one dim) pure functions.

Convention (every function here obeys it):
- an activation is `f(x, **hyper) -> y` with no params; its keyword hyper-parameters have
  torch.nn.functional's names and defaults, so an activation with other values is
  `functools.partial(leaky_relu, negative_slope=0.2)`;
- smooth activations run torch's own kernel, so values and gradients are torch's to the bit;
- an activation with a kink (elu, selu at 0 when alpha != 1; hardswish at -3 and 3) is built with
  `torch.where`, so its gradient at the kink is the branch this module names, never a kernel's
  choice at a tie; each names the same branch as torch 2.13 and 2.14's kernels do;
- nothing here mutates its inputs or reads global state, so every function composes with
  `torch.func.grad`, `vmap` and `torch.compile`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

Activation = Callable[[Tensor], Tensor]

# SELU's constants, from Klambauer et al. 2017, "Self-Normalizing Neural Networks" (as torch).
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


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


def silu(x: Tensor) -> Tensor:
    """x sigmoid(x), element-wise (Elfwing et al. 2017; "swish" with beta = 1)."""
    return F.silu(x)


def mish(x: Tensor) -> Tensor:
    """x tanh(softplus(x)), element-wise (Misra 2019)."""
    return F.mish(x)


def elu(x: Tensor, alpha: float = 1.0) -> Tensor:
    """x where x > 0, else alpha (exp(x) - 1), element-wise (Clevert et al. 2015).

    The gradient at 0 is alpha, the x <= 0 branch's, as torch's kernel."""
    return torch.where(x > 0, x, alpha * torch.expm1(torch.where(x > 0, 0.0, x)))


def selu(x: Tensor) -> Tensor:
    """scale * elu(x, alpha) with SELU_ALPHA and SELU_SCALE; the gradient at 0 is scale * alpha."""
    return SELU_SCALE * elu(x, SELU_ALPHA)


def hardswish(x: Tensor) -> Tensor:
    """x relu6(x + 3) / 6, element-wise (Howard et al. 2019, "Searching for MobileNetV3").

    0 where x <= -3, x where x >= 3, x (x + 3) / 6 between: the gradient is 0 at -3 and 1 at 3,
    the outer branches', as torch 2.13's and 2.14's kernels."""
    inner = x * (x + 3.0) / 6.0
    return torch.where(x <= -3.0, 0.0, torch.where(x >= 3.0, x, inner))


def logsigmoid(x: Tensor) -> Tensor:
    """log sigmoid(x) = -log(1 + exp(-x)), element-wise, finite for every finite x."""
    return -neg_log_sigmoid(x)


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)) along `dim` (the last by default; torch has no default, so pass it).

    Args:
        x: any shape; dim: the dimension that sums to one.
    """
    return torch.softmax(x, dim)


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    """x - logsumexp(x) along `dim`, with the max taken out first so no exp overflows."""
    return torch.log_softmax(x, dim)


def identity(x: Tensor) -> Tensor:
    """x unchanged."""
    return x


def neg_log_sigmoid(x: Tensor) -> Tensor:
    """-log sigmoid(x) = log(1 + exp(-x)), branch by branch as torch's CPU log_sigmoid kernel.

    Each branch exponentiates only non-positive numbers, so nothing overflows, and the branch
    `where` drops has a finite gradient. The branches' inputs are chosen by the same condition as
    the branches, with `where`, so at x = 0 the gradient is the true -1/2 by construction: a clamp
    there would leave it to the kernel's choice at the tie (torch 2.13's clamp passed the gradient
    at the boundary, 2.14's drops it). NaN goes through the second branch, and stays NaN.
    Not `F.logsigmoid` itself: its CPU kernel starts threads even for a handful of elements, which
    costs milliseconds per call on a busy machine (measured with torch 2.13, 2 threads).
    """
    positive = x >= 0
    pos, neg = torch.where(positive, x, 0.0), torch.where(positive, 0.0, x)
    return torch.where(positive, torch.log1p(torch.exp(-pos)), torch.log1p(torch.exp(neg)) - neg)


ACTIVATIONS: dict[str, Activation] = {
    "elu": elu,
    "gelu": gelu,
    "hardswish": hardswish,
    "identity": identity,
    "leaky_relu": leaky_relu,
    "log_softmax": log_softmax,
    "logsigmoid": logsigmoid,
    "mish": mish,
    "relu": relu,
    "selu": selu,
    "sigmoid": sigmoid,
    "silu": silu,
    "softmax": softmax,
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
