"""Element-wise arithmetic over lists of tensors: multi-tensor kernels where they apply.

Each function takes lists of same-shaped tensors and returns a new list; nothing is mutated.
`torch._foreach_*` ops run one kernel over a whole list, but have no vmap batching rule, so inside
a functorch transform (vmap, grad) each function falls back to one op per tensor. Both paths
compute the same thing with the same ops; tests check that they agree.
"""

from __future__ import annotations

import torch
from torch import Tensor

_is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor


def multi_tensor(tensors: list[Tensor]) -> bool:
    """Whether the multi-tensor kernels apply to `tensors` (not inside vmap or grad)."""
    if not tensors:
        return False
    # dynamo cannot trace _is_wrapped, and traces _foreach ops into fused kernels itself.
    return torch.compiler.is_compiling() or not _is_wrapped(tensors[0])


def add(a: list[Tensor], b: list[Tensor], alpha: float = 1.0) -> list[Tensor]:
    """a + alpha * b."""
    if multi_tensor(a):
        return torch._foreach_add(a, b, alpha=alpha)
    return [torch.add(x, y, alpha=alpha) for x, y in zip(a, b)]


def mul(a: list[Tensor], s: float | Tensor) -> list[Tensor]:
    """a * s, for a number or a 0-d tensor s."""
    if multi_tensor(a):
        return torch._foreach_mul(a, s)
    return [torch.mul(x, s) for x in a]


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


def div(a: list[Tensor], b: list[Tensor] | Tensor | float) -> list[Tensor]:
    """a / b, for a list b, a 0-d tensor or a number."""
    if multi_tensor(a):
        return torch._foreach_div(a, b)
    bs = b if isinstance(b, list) else [b] * len(a)
    return [torch.div(x, y) for x, y in zip(a, bs)]


def sqrt(a: list[Tensor]) -> list[Tensor]:
    """Element-wise square root."""
    if multi_tensor(a):
        return torch._foreach_sqrt(a)
    return [torch.sqrt(x) for x in a]


def add_scalar(a: list[Tensor], s: float) -> list[Tensor]:
    """a + s, for a number s."""
    if multi_tensor(a):
        return torch._foreach_add(a, s)
    return [torch.add(x, s) for x in a]


def maximum(a: list[Tensor], b: list[Tensor]) -> list[Tensor]:
    """Element-wise max(a, b)."""
    if multi_tensor(a):
        return torch._foreach_maximum(a, b)
    return [torch.maximum(x, y) for x, y in zip(a, b)]
