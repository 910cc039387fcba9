"""The optimizer contract: a pair of pure functions over pytrees.

`init(params) -> state` and `update(grads, state, params) -> (updates, new_state)`. Updates carry
the sign and the learning rate, so `apply_updates(params, updates)` only adds. A state is a pytree
of tensors (NamedTuples here), step counts included, so it can be saved, vmapped and compiled.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from .._pytree import PyTree, register_namedtuple, tree_flatten, tree_leaves, tree_unflatten
from . import _foreach


class GradientTransformation(NamedTuple):
    """An optimizer, or a piece of one: `(init, update)`.

    Attributes:
        init: `init(params) -> state`.
        update: `update(grads, state, params=None) -> (updates, new_state)`; pure.
    """

    init: Callable[[PyTree], PyTree]
    update: Callable[[PyTree, PyTree, PyTree | None], tuple[PyTree, PyTree]]


@register_namedtuple
class EmptyState(NamedTuple):
    """The state of a transform that keeps none."""


def apply_updates(params: PyTree, updates: PyTree) -> PyTree:
    """params + updates, leaf by leaf, as new tensors.

    Args:
        params: a pytree of tensors.
        updates: a pytree of the same structure, as returned by an optimizer's update.
    Returns:
        The new params; the inputs are not modified.
    """
    leaves, spec = tree_flatten(params)
    return tree_unflatten(_foreach.add(leaves, tree_leaves(updates)), spec)


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Compose transforms: each one's updates are the next one's grads.

    The state is the tuple of the transforms' states, in order.
    """

    def init(params):
        return tuple(t.init(params) for t in transforms)

    def update(grads, state, params=None):
        new_state = []
        for t, s in zip(transforms, state):
            grads, s = t.update(grads, s, params)
            new_state.append(s)
        return grads, tuple(new_state)

    return GradientTransformation(init, update)
