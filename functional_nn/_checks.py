"""Argument checks for the whole package, in one wording: ints, numbers, bools, choices, seeds.

A wrong type is a TypeError that names the argument and shows what was given, e.g.
"steps must be an int, got float: 2.5."; a bad value is a ValueError in torch.optim's words,
with what was expected, e.g. "Invalid steps: 0 (expected an int >= 1).". Numbers must be finite
(torch.optim lets inf through, where it turns every step into NaN) and flags must be bools (torch
takes any truthy value, so `amsgrad="no"` would turn it on). The checks of trees, data and models
are in `_data_checks.py`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch


def integer(name: str, value: Any, minimum: int, allow_none: bool = False) -> None:
    """Raise TypeError unless `value` is an int (or None, when allowed), ValueError unless it is
    >= minimum."""
    if value is None and allow_none:
        return
    _an_int(name, value)
    if value < minimum:
        raise ValueError(f"Invalid {name}: {value} (expected an int >= {minimum}).")


def _an_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}.")


def number(
    name: str,
    value: Any,
    expected: str = "a number >= 0",
    ok: Callable[[float], bool] = lambda v: v >= 0.0,
    allow_inf: bool = False,
) -> None:
    """Raise TypeError unless `value` is a real number, ValueError unless it is finite (or +inf,
    where allow_inf says that means "no limit") and `ok(value)`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}: {value!r}.")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int beyond float's range
        finite = False
    if not (finite or (allow_inf and value == math.inf)):
        raise ValueError(f"Invalid {name}: {value} (not finite; expected {expected}).")
    if not ok(value):
        raise ValueError(f"Invalid {name}: {value} (expected {expected}).")


def non_negative(**values: float) -> None:
    """Check that each keyword's value is a finite number >= 0."""
    for name, value in values.items():
        number(name, value)


def flags(**values: bool) -> None:
    """Raise TypeError unless each keyword's value is a bool."""
    for name, value in values.items():
        if not isinstance(value, bool):
            raise TypeError(
                f"{name} must be a bool (True or False), got {type(value).__name__}: {value!r}."
            )


def seed(name: str, value: Any) -> None:
    """An int that torch.Generator.manual_seed takes: in [0, 2**64)."""
    _an_int(name, value)
    if not 0 <= value < 2**64:
        raise ValueError(f"Invalid {name}: {value} (expected an int in [0, 2**64)).")


def one_of(name: str, value: Any, choices: tuple) -> None:
    """Raise ValueError unless `value` is one of `choices`."""
    if not any(value is c or (type(value) is type(c) and value == c) for c in choices):
        raise ValueError(f"Invalid {name}: {value!r} (expected one of {choices}).")


def not_transformed(name: str) -> None:
    """Raise when called inside a torch.func transform (grad, vmap, jvp, jacrev, ...): fit trains
    with torch.func.grad of its own and reads its flags on the host, so through a transform it
    would fail obscurely or, under grad, silently give a zero gradient.

    torch._C._functorch is private: this is the one place functional_nn reads it.
    """
    current_level = getattr(torch._C._functorch, "maybe_current_level", None)
    if current_level is not None and current_level() is not None:
        raise RuntimeError(
            f"{name} was called inside a torch.func transform (grad, vmap, jvp, ...), which it does "
            f"not support: a gradient through it would be zero. Call {name} outside the transform; "
            "to differentiate through training, write the loop from train.make_step's step."
        )
