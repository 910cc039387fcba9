"""Eager checks of hyper-parameters: the errors torch.optim raises, naming the value and the range.

Numbers must be finite (torch.optim lets inf through, where it turns every step into NaN) and
flags must be bools (torch.optim takes any truthy value, so `amsgrad="no"` would turn it on).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable


def number(
    name: str,
    value,
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


def integer(name: str, value, minimum: int) -> None:
    """Raise TypeError unless `value` is an int, ValueError unless it is >= minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}.")
    if value < minimum:
        raise ValueError(f"Invalid {name}: {value} (expected an int >= {minimum}).")
