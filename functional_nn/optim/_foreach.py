"""Element-wise arithmetic over lists of tensors: multi-tensor kernels where they apply.

Each function takes lists of same-shaped tensors and returns the result as a new `Fresh` list.
`torch._foreach_*` ops run one kernel over a whole list, but have no vmap batching rule, so inside
a functorch transform (vmap, grad) each function falls back to one op per tensor. Both paths
compute the same thing with the same ops; tests check that they agree.

The one rule for memory. A `Fresh` list holds tensors that this update has just made and that
nothing else references yet. The functions named with a trailing underscore (`mul_`, `add_`, ...)
take such a list as their first argument and CONSUME it: they return the result, written into
its tensors when that is safe (a `Fresh` list, the multi-tensor path, and no operand that autograd
records: `reusable`), else computed out of place, and the caller uses only what they return. Any
other list (grads, params, state: the caller's) is never written. So an update writes only
memory it has allocated itself, and stays pure; a transform passes its updates on as `Fresh` only
when it keeps no reference to them (in its state), so the next transform of a chain may consume
them. Each full-size tensor allocated costs a pass over fresh memory, and above glibc's mmap
threshold (128 KiB, rising to at most 32 MiB) page faults on first write: reusing them in place is
what keeps a step near torch.optim's in-place speed.

Donation extends the rule to memory the caller gives away. Within `donated()` (fit's eager loop,
on a step whose params and optimizer state it made itself at the step before and has shown
nobody: see _loop.py), `owned(buffer)` returns a state buffer, or the params in apply_updates,
as a Fresh list, so the consuming ops write the new values into the old tensors, as torch.optim
writes its state in place. A transform calls `owned` only on a buffer it reads once, at that
point, and recomputes every step; the others are never written. A transform whose update keeps
to that says so (`LeafwiseUpdate.donates`); fit donates only to an optimizer all of whose parts
do. Outside `donated()`, `owned` returns its argument: an update stays pure.
`donated(params=False)` gives the state buffers only, not the params (fit's first step, whose
params are the caller's but whose state its own init has just made).

A scalar operand `s` may be a number or a 0-d tensor (a step size, a bias correction, a learning
rate batched by vmap); 0-d tensors do not promote the lists' dtype. The factors a step derives
from its count are Python floats where reading the count waits on nothing (`value`): then they
cost no tensor ops and reach the kernels as plain numbers, as torch.optim's do.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import operator

import torch
from torch import Tensor

_is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
_is_batched = torch._C._functorch.is_batchedtensor

Scalar = float | Tensor
_requires_grad = operator.attrgetter("requires_grad")  # map(...) over a list: no generator frame


class Fresh(list):
    """A list of tensors this update has just made and nobody else holds (see the module doc)."""


def _fresh(tensors) -> list[Tensor]:
    """`tensors` as a Fresh list; a plain one under torch.compile, which traces no list subclass
    into an op and needs no reuse: inductor plans the buffers of the whole step itself."""
    return list(tensors) if torch.compiler.is_compiling() else Fresh(tensors)


_donating = contextvars.ContextVar("functional_nn_donating", default=None)


@contextlib.contextmanager
def donated(params: bool = True):
    """Within: `owned` gives the updates of this thread the buffers it is passed (see above);
    the params too unless `params` is False."""
    token = _donating.set("all" if params else "state")
    try:
        yield
    finally:
        _donating.reset(token)


def owned(tensors: list[Tensor], params: bool = False) -> list[Tensor]:
    """`tensors` (the params, when `params`) as a Fresh list within `donated()` on the
    multi-tensor path, else themselves."""
    if torch.compiler.is_compiling():  # first: dynamo cannot trace ContextVar.get
        return tensors
    mode = _donating.get()
    given = mode == "all" or (mode == "state" and not params)
    return Fresh(tensors) if given and multi_tensor(tensors) else tensors


def multi_tensor(tensors: list[Tensor]) -> bool:
    """Whether the multi-tensor kernels apply to `tensors` (not inside vmap or grad)."""
    if not tensors:
        return False
    if torch.compiler.is_compiling():
        # dynamo cannot trace _is_wrapped, but can trace _is_batched: compiling a vmapped update
        # (an ensemble) must still take the per-tensor path.
        return not _is_batched(tensors[0])
    return not _is_wrapped(tensors[0])


def _multi_scalar(a: list[Tensor], s) -> bool:
    """multi_tensor, for an op with a scalar operand `s`: a 0-d tensor that autograd records (a
    learning rate requiring grad) takes the per-tensor path, as the multi-tensor kernels'
    backward fails on it ("inconsistent range for TensorList output", torch 2.13)."""
    recorded = isinstance(s, Tensor) and s.requires_grad and torch.is_grad_enabled()
    return multi_tensor(a) and not recorded


def reusable(a: list[Tensor], *operands) -> bool:
    """Whether an in-place op may write `a`: a Fresh list on the multi-tensor path, where
    autograd records nothing (an in-place write could clobber a tensor saved for backward, e.g.
    sqrt's result). `operands`: the op's other lists, tensors and numbers."""
    if not isinstance(a, Fresh) or not multi_tensor(a):
        return False
    if not torch.is_grad_enabled():
        return True
    for x in (a, *operands):
        if (isinstance(x, Tensor) and x.requires_grad) or (
            isinstance(x, list) and any(map(_requires_grad, x))
        ):
            return False
    return True


def value(t: Tensor) -> float | Tensor:
    """A 0-d state tensor (a step count, NAdam's momentum product) as the number a step derives
    its factors from: a Python float for a plain CPU tensor in eager code (reading it waits on no
    device); else `t` as a float64 tensor, so that nothing syncs with a GPU and vmap, grad,
    autograd and torch.compile trace through it. Both give the same float64 arithmetic."""
    if torch.compiler.is_compiling():  # first: dynamo cannot trace _is_wrapped
        return t.to(torch.float64)
    if t.device.type == "cpu" and not t.requires_grad and not _is_wrapped(t):
        return float(t)
    return t.to(torch.float64)


def scalar_sqrt(x: float | Tensor) -> float | Tensor:
    """sqrt of a number from `value` (a float or a 0-d tensor); NaN below 0 for both."""
    if isinstance(x, Tensor):
        return torch.sqrt(x)
    return math.sqrt(x) if x >= 0.0 else math.nan


def select(condition: bool | Tensor, a: float | Tensor, b: float | Tensor) -> float | Tensor:
    """a if `condition` else b, for a bool or a 0-d bool tensor (no host sync decides it)."""
    if isinstance(condition, Tensor):
        return torch.where(condition, a, b)
    return a if condition else b


def once(t: float | Tensor) -> float | Tensor:
    """`t`, a 0-d tensor that many elements use (a bias correction, a scheduled learning rate),
    computed once per step under torch.compile.

    Inductor inlines a 0-d tensor's arithmetic into each consumer's per-element loop, where a pow
    then runs once per element: that made a compiled Adam step on the PyTorch tutorial's two-layer
    network twice as slow. A two-element sum is a reduction, which inductor computes once, into a
    buffer of its own; and (t + t) / 2 is t exactly. Eager code, which computes t once anyway,
    gets t itself.
    """
    return t.expand(2).sum() * 0.5 if torch.compiler.is_compiling() and isinstance(t, Tensor) else t


def _pairs(a: list[Tensor], b: list[Tensor] | Scalar) -> list:
    return b if isinstance(b, list) else [b] * len(a)


def add(a: list[Tensor], b: list[Tensor], alpha: float = 1.0) -> Fresh:
    """a + alpha * b."""
    if multi_tensor(a):
        return _fresh(torch._foreach_add(a, b, alpha=alpha))
    return _fresh(torch.add(x, y, alpha=alpha) for x, y in zip(a, b))


def add_(a: list[Tensor], b: list[Tensor], alpha: float = 1.0) -> Fresh:
    """add, consuming `a`."""
    if reusable(a, b):
        torch._foreach_add_(a, b, alpha=alpha)
        return a
    return add(a, b, alpha)


def add_scalar(a: list[Tensor], s: Scalar) -> Fresh:
    """a + s."""
    if _multi_scalar(a, s):
        return _fresh(torch._foreach_add(a, s))
    return _fresh(torch.add(x, s) for x in a)


def add_scalar_(a: list[Tensor], s: Scalar) -> Fresh:
    """add_scalar, consuming `a`."""
    if reusable(a, s):
        torch._foreach_add_(a, s)
        return a
    return add_scalar(a, s)


def mul(a: list[Tensor], b: list[Tensor] | Scalar) -> Fresh:
    """a * b, for a list b or a scalar."""
    if _multi_scalar(a, b):
        return _fresh(torch._foreach_mul(a, b))
    return _fresh(torch.mul(x, y) for x, y in zip(a, _pairs(a, b)))


def mul_(a: list[Tensor], b: list[Tensor] | Scalar) -> Fresh:
    """mul, consuming `a`."""
    if reusable(a, b):
        torch._foreach_mul_(a, b)
        return a
    return mul(a, b)


def div(a: list[Tensor], b: list[Tensor] | Scalar) -> Fresh:
    """a / b, for a list b or a scalar."""
    if _multi_scalar(a, b):
        return _fresh(torch._foreach_div(a, b))
    return _fresh(torch.div(x, y) for x, y in zip(a, _pairs(a, b)))


def div_(a: list[Tensor], b: list[Tensor] | Scalar) -> Fresh:
    """div, consuming `a`."""
    if reusable(a, b):
        torch._foreach_div_(a, b)
        return a
    return div(a, b)


def reciprocal_(a: list[Tensor]) -> Fresh:
    """1 / a, consuming `a`: with a `mul_` after it, b / a in a's memory (no fresh tensor)."""
    if reusable(a):
        torch._foreach_reciprocal_(a)
        return a
    if multi_tensor(a):
        return _fresh(torch._foreach_reciprocal(a))
    return _fresh(torch.reciprocal(x) for x in a)


def add_into_(a: list[Tensor], b: list[Tensor], alpha: float = 1.0) -> Fresh:
    """add, consuming `b` (the second operand): a + alpha * b, written into b's tensors."""
    if reusable(b, a):
        # No multi-tensor op writes its second operand; on the CPU _foreach_add runs this very
        # op per tensor, so both round alike. Element-wise, out may alias an input.
        for x, y in zip(a, b):
            torch.add(x, y, alpha=alpha, out=y)
        return b
    return add(a, b, alpha)


def lerp(a: list[Tensor], b: list[Tensor], weight: float) -> Fresh:
    """a + weight * (b - a), with torch.lerp's rounding."""
    if multi_tensor(a):
        return _fresh(torch._foreach_lerp(a, b, weight))
    return _fresh(torch.lerp(x, y, weight) for x, y in zip(a, b))


def lerp_(a: list[Tensor], b: list[Tensor], weight: float) -> Fresh:
    """lerp, consuming `a`."""
    if reusable(a, b):
        torch._foreach_lerp_(a, b, weight)
        return a
    return lerp(a, b, weight)


def addcmul(a: list[Tensor], b: list[Tensor], c: list[Tensor], value: float = 1.0) -> Fresh:
    """a + value * b * c."""
    if multi_tensor(a):
        return _fresh(torch._foreach_addcmul(a, b, c, value=value))
    return _fresh(torch.addcmul(x, y, z, value=value) for x, y, z in zip(a, b, c))


def addcmul_(a: list[Tensor], b: list[Tensor], c: list[Tensor], value: float = 1.0) -> Fresh:
    """addcmul, consuming `a`."""
    if reusable(a, b, c):
        torch._foreach_addcmul_(a, b, c, value=value)
        return a
    return addcmul(a, b, c, value)


def sqrt(a: list[Tensor]) -> Fresh:
    """Element-wise square root."""
    if multi_tensor(a):
        return _fresh(torch._foreach_sqrt(a))
    return _fresh(torch.sqrt(x) for x in a)


def sqrt_(a: list[Tensor]) -> Fresh:
    """sqrt, consuming `a`."""
    if reusable(a):
        torch._foreach_sqrt_(a)
        return a
    return sqrt(a)


def abs(a: list[Tensor]) -> Fresh:
    """Element-wise |a|."""
    if multi_tensor(a):
        return _fresh(torch._foreach_abs(a))
    return _fresh(torch.abs(x) for x in a)


def maximum(a: list[Tensor], b: list[Tensor]) -> Fresh:
    """Element-wise max(a, b)."""
    if multi_tensor(a):
        return _fresh(torch._foreach_maximum(a, b))
    return _fresh(torch.maximum(x, y) for x, y in zip(a, b))


def maximum_(a: list[Tensor], b: list[Tensor]) -> Fresh:
    """maximum, consuming `a`."""
    if reusable(a, b):
        torch._foreach_maximum_(a, b)
        return a
    return maximum(a, b)


def clamp(a: list[Tensor], low: float, high: float) -> Fresh:
    """Element-wise min(max(a, low), high); NaN stays NaN.

    Differentiated, the gradient is 1 on the closed interval [low, high], its boundary included,
    and 0 outside, by construction (`where` on explicit conditions): torch's own clamp leaves the
    boundary to the kernel (torch 2.13 passes the gradient there, 2.14 drops it).
    """
    if multi_tensor(a) and not a[0].requires_grad:
        low_clamped = torch._foreach_clamp_min(a, low)
        torch._foreach_clamp_max_(low_clamped, high)  # its own fresh result: nobody else holds it
        return _fresh(low_clamped)
    return _fresh(torch.where(x > high, high, torch.where(x < low, low, x)) for x in a)


def norm(a: list[Tensor]) -> list[Tensor]:
    """The 2-norm of each tensor, as a list of 0-d tensors."""
    if multi_tensor(a):
        return list(torch._foreach_norm(a))
    return [torch.linalg.vector_norm(x) for x in a]
