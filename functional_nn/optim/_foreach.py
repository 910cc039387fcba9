"""Element-wise arithmetic over lists of tensors: multi-tensor kernels where they apply.

Each function takes lists of same-shaped tensors and returns a new list; nothing is mutated.
`torch._foreach_*` ops run one kernel over a whole list, but have no vmap batching rule, so inside
a functorch transform (vmap, grad) each function falls back to one op per tensor. Both paths
compute the same thing with the same ops; tests check that they agree.

A scalar operand `s` may be a number or a 0-d tensor (a step size, a bias correction, a learning
rate batched by vmap); 0-d tensors do not promote the lists' dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

_is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
_is_batched = torch._C._functorch.is_batchedtensor

Scalar = float | Tensor


def multi_tensor(tensors: list[Tensor]) -> bool:
    """Whether the multi-tensor kernels apply to `tensors` (not inside vmap or grad)."""
    if not tensors:
        return False
    if torch.compiler.is_compiling():
        # dynamo cannot trace _is_wrapped, but can trace _is_batched: compiling a vmapped update
        # (an ensemble) must still take the per-tensor path.
        return not _is_batched(tensors[0])
    return not _is_wrapped(tensors[0])


def once(t: Tensor) -> Tensor:
    """`t`, a 0-d tensor that many elements use (a bias correction, a scheduled learning rate),
    computed once per step under torch.compile.

    Inductor inlines a 0-d tensor's arithmetic into each consumer's per-element loop, where a pow
    then runs once per element: that made a compiled Adam step on the seeds' net twice as slow.
    A two-element sum is a reduction, which inductor computes once, into a buffer of its own; and
    (t + t) / 2 is t exactly. Eager code, which computes t once anyway, gets t itself.
    """
    return t.expand(2).sum() * 0.5 if torch.compiler.is_compiling() else t


def _pairs(a: list[Tensor], b: list[Tensor] | Scalar) -> list:
    return b if isinstance(b, list) else [b] * len(a)


def add(a: list[Tensor], b: list[Tensor], alpha: float = 1.0) -> list[Tensor]:
    """a + alpha * b."""
    if multi_tensor(a):
        return torch._foreach_add(a, b, alpha=alpha)
    return [torch.add(x, y, alpha=alpha) for x, y in zip(a, b)]


def add_scalar(a: list[Tensor], s: Scalar) -> list[Tensor]:
    """a + s."""
    if multi_tensor(a):
        return torch._foreach_add(a, s)
    return [torch.add(x, s) for x in a]


def mul(a: list[Tensor], b: list[Tensor] | Scalar) -> list[Tensor]:
    """a * b, for a list b or a scalar."""
    if multi_tensor(a):
        return torch._foreach_mul(a, b)
    return [torch.mul(x, y) for x, y in zip(a, _pairs(a, b))]


def div(a: list[Tensor], b: list[Tensor] | Scalar) -> list[Tensor]:
    """a / b, for a list b or a scalar."""
    if multi_tensor(a):
        return torch._foreach_div(a, b)
    return [torch.div(x, y) for x, y in zip(a, _pairs(a, b))]


def lerp(a: list[Tensor], b: list[Tensor], weight: float) -> list[Tensor]:
    """a + weight * (b - a), with torch.lerp's rounding."""
    if multi_tensor(a):
        return torch._foreach_lerp(a, b, weight)
    return [torch.lerp(x, y, weight) for x, y in zip(a, b)]


def addcmul(a: list[Tensor], b: list[Tensor], c: list[Tensor], value: float = 1.0) -> list[Tensor]:
    """a + value * b * c."""
    if multi_tensor(a):
        return torch._foreach_addcmul(a, b, c, value=value)
    return [torch.addcmul(x, y, z, value=value) for x, y, z in zip(a, b, c)]


def sqrt(a: list[Tensor]) -> list[Tensor]:
    """Element-wise square root."""
    if multi_tensor(a):
        return torch._foreach_sqrt(a)
    return [torch.sqrt(x) for x in a]


def abs(a: list[Tensor]) -> list[Tensor]:  # noqa: A001 - mirrors torch._foreach_abs
    """Element-wise |a|."""
    if multi_tensor(a):
        return torch._foreach_abs(a)
    return [torch.abs(x) for x in a]


def maximum(a: list[Tensor], b: list[Tensor]) -> list[Tensor]:
    """Element-wise max(a, b)."""
    if multi_tensor(a):
        return torch._foreach_maximum(a, b)
    return [torch.maximum(x, y) for x, y in zip(a, b)]


def clamp(a: list[Tensor], low: float, high: float) -> list[Tensor]:
    """Element-wise min(max(a, low), high); NaN stays NaN.

    Differentiated, the gradient is 1 on the closed interval [low, high], its boundary included,
    and 0 outside, by construction (`where` on explicit conditions): torch's own clamp leaves the
    boundary to the kernel (torch 2.13 passes the gradient there, 2.14 drops it).
    """
    if multi_tensor(a) and not a[0].requires_grad:
        return torch._foreach_clamp_max(torch._foreach_clamp_min(a, low), high)
    return [torch.where(x > high, high, torch.where(x < low, low, x)) for x in a]


def norm(a: list[Tensor]) -> list[Tensor]:
    """The 2-norm of each tensor, as a list of 0-d tensors."""
    if multi_tensor(a):
        return list(torch._foreach_norm(a))
    return [torch.linalg.vector_norm(x) for x in a]


def where(condition: Tensor, a: list[Tensor], b: list[Tensor]) -> list[Tensor]:
    """a where `condition` (a 0-d bool tensor) holds, else b; no multi-tensor kernel exists."""
    return [torch.where(condition, x, y) for x, y in zip(a, b)]
