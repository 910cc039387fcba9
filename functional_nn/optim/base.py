"""The optimizer contract: a pair of pure functions over pytrees.

`init(params) -> state` and `update(grads, state, params) -> (updates, new_state)`. Updates carry
the sign and the learning rate, so `apply_updates(params, updates)` only adds. A state is a pytree
of tensors (NamedTuples here), step counts included, so it can be saved, vmapped and compiled.

The transforms of this package are written over the flat list of leaves (`leafwise`): a chain of
them flattens the grads and params once per update, not once per transform, which keeps the
Python work of a step close to torch.optim's.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from torch import Tensor

from .._pytree import (
    PyTree,
    assert_same_structure,
    register_namedtuple,
    tree_flatten,
    tree_unflatten,
)
from . import _foreach

# update_leaves(grad_leaves, state, params or None, spec) -> (update_leaves, new_state)
LeafUpdate = Callable[[list[Tensor], PyTree, PyTree | None, object], tuple[list[Tensor], PyTree]]


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


def leafwise(init: Callable[[PyTree], PyTree], update_leaves: LeafUpdate) -> GradientTransformation:
    """A transform from an update over the flat list of leaves; the tree is flattened here, once.

    Args:
        init: `init(params) -> state`.
        update_leaves: `(grad_leaves, state, params or None, spec) -> (leaves, new_state)`, where
            `spec` is the grads' tree structure (to rebuild per-param state trees); params stay a
            tree, flattened only by the transforms that read them (`param_leaves`).
    Returns:
        A GradientTransformation whose `update` also carries `update_leaves` as `.leaves`, so
        `chain` can compose the list-level functions without flattening in between.
    """

    def update(grads, state, params=None):
        g, spec = tree_flatten(grads)
        out, state = update_leaves(g, state, params, spec)
        return tree_unflatten(out, spec), state

    update.leaves = update_leaves
    return GradientTransformation(init, update)


def param_leaves(params: PyTree | None, grads: list[Tensor], spec, user: str) -> list[Tensor]:
    """The leaves of `params`, after checking that the grads fit them.

    Raises:
        ValueError: when params is None (naming `user`, the transform that needs them), or when
            the grads' structure or a shape differs (showing both trees).
    """
    if params is None:
        raise ValueError(f"{user} needs params: call update(grads, state, params).")
    return _matching_leaves(params, grads, spec, "grads", "params")


def checked_leaves(buffer: PyTree, grads: list[Tensor], spec) -> list[Tensor]:
    """The leaves of a per-param state tree, after checking that the grads fit it.

    Raises:
        ValueError: showing both trees, when the structure or a shape differs.
    """
    return _matching_leaves(buffer, grads, spec, "grads", "the optimizer state (made from params)")


def _matching_leaves(
    reference: PyTree, leaves: list[Tensor], spec, name: str, reference_name: str
) -> list[Tensor]:
    """The leaves of `reference`, after checking that `leaves` (of the tree `spec`) fit them."""
    reference_leaves, reference_spec = tree_flatten(reference)
    if reference_spec != spec or any(a.shape != b.shape for a, b in zip(leaves, reference_leaves)):
        assert_same_structure(tree_unflatten(leaves, spec), reference, name, reference_name)
    return reference_leaves


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Compose transforms: each one's updates are the next one's grads.

    Args:
        transforms: GradientTransformations, applied in order.
    Returns:
        A GradientTransformation whose state is the tuple of the transforms' states, in order.
    """

    def init(params):
        return tuple(t.init(params) for t in transforms)

    def check(state):
        if not isinstance(state, tuple) or len(state) != len(transforms):
            given = f"a tuple of {len(state)}" if isinstance(state, tuple) else type(state).__name__
            raise ValueError(
                f"state does not belong to this optimizer: a chain of {len(transforms)} transforms "
                f"needs a tuple of {len(transforms)} states, got {given}. Use this optimizer's init."
            )

    parts = [getattr(t.update, "leaves", None) for t in transforms]
    if all(parts):

        def update_leaves(g, state, p, spec):
            check(state)
            new_state = []
            for part, s in zip(parts, state):
                g, s = part(g, s, p, spec)
                new_state.append(s)
            return g, tuple(new_state)

        return leafwise(init, update_leaves)

    def update(grads, state, params=None):
        check(state)
        new_state = []
        for t, s in zip(transforms, state):
            grads, s = t.update(grads, s, params)
            new_state.append(s)
        return grads, tuple(new_state)

    return GradientTransformation(init, update)


def apply_updates(params: PyTree, updates: PyTree) -> PyTree:
    """params + updates, leaf by leaf, as new tensors.

    Args:
        params: a pytree of tensors.
        updates: a pytree of the same structure and shapes, as returned by an optimizer's update.
    Returns:
        The new params; the inputs are not modified.
    """
    deltas, spec = tree_flatten(updates)
    leaves = _matching_leaves(params, deltas, spec, "updates", "params")
    return tree_unflatten(_foreach.add(leaves, deltas), spec)

