"""Optimizers that show the call that made them: `repr(adam())` is `adam(lr=0.001, ...)`.

`shown_as_call` decorates an alias. It returns the alias's GradientTransformation as a subclass
(of GradientTransformationExtraArgs when the alias made one) that only adds `__repr__`: the pair,
its unpacking, equality, hashing (fit caches compiled steps by optimizer) and isinstance checks
are the tuple's own. The call's arguments live in the instance's `__dict__`, so copy and pickle
keep them.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import torch

from . import base


class _ReprIsCall:
    """The repr: the alias call in `call`, or the tuple's own once a copy (by _replace or _make)
    has none, as it is no longer what the alias made."""

    __slots__ = ()  # the subclasses below hold `call` in their __dict__

    def __repr__(self) -> str:
        if "call" not in self.__dict__:
            kind = next(c for c in type(self).__mro__ if not issubclass(c, _ReprIsCall))
            return f"{kind.__name__}(init={self.init!r}, update={self.update!r})"
        # formatted here, not when built: an alias may run under vmap, where lr is batched
        name, arguments = self.__dict__["call"]
        return f"{name}({', '.join(f'{k}={_show(v)}' for k, v in arguments.items())})"


# Named as their bases, so messages that name an optimizer's type read as before.
class GradientTransformation(_ReprIsCall, base.GradientTransformation):
    """A GradientTransformation whose repr is the alias call that made it."""


class GradientTransformationExtraArgs(_ReprIsCall, base.GradientTransformationExtraArgs):
    """The same, for an alias whose update reads extra arguments (chain forwards them)."""


def shown_as_call(alias: Callable[..., base.GradientTransformation]) -> Callable:
    """Decorate an optimizer alias so its result's repr names it and every hyper-parameter.

    Args:
        alias: a function of hyper-parameters returning a GradientTransformation.
    Returns:
        The alias, with the same signature and docstring; its result's repr is e.g.
        `adam(lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0, amsgrad=False,
        maximize=False)`.
    """
    signature = inspect.signature(alias)

    @functools.wraps(alias)
    def wrapper(*args, **kwargs):
        opt = alias(*args, **kwargs)  # first, so bad hyper-parameters raise the alias's errors
        if torch.compiler.is_compiling():  # built inside a traced step: nobody sees its repr
            return opt
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        extra = isinstance(opt, base.GradientTransformationExtraArgs)
        shown = (GradientTransformationExtraArgs if extra else GradientTransformation)(*opt)
        shown.call = (alias.__name__, dict(bound.arguments))
        return shown

    return wrapper


def _show(value: object) -> str:
    """A hyper-parameter as text: a schedule (a function) by its name, not its address."""
    if inspect.isfunction(value) or inspect.ismethod(value):
        return value.__qualname__
    return repr(value)
