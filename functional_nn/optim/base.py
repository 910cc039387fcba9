"""The optimizer contract: a pair of pure functions over pytrees.

`init(params) -> state` and `update(grads, state, params) -> (updates, new_state)`. Updates carry
the sign and the learning rate, so `apply_updates(params, updates)` only adds. A state is a pytree
of tensors (NamedTuples here), step counts included, so it can be saved, vmapped and compiled.

The transforms of this package are written over the flat list of leaves (`leafwise`). That is
below the contract, not instead of it: their `update` is a `LeafwiseUpdate`, which takes and
returns trees like any update and also carries the list-level function, so that a chain of them
flattens the grads once per update, not once per transform (which keeps the Python work of a step
close to torch.optim's). Their states are made from, and hold, the user's params trees.

Every update checks what it is given, from metadata only (types, tree structures, shapes, dtypes;
never a value, so no host sync, and the checks trace under vmap, grad and torch.compile): a state
of another transform or a step count that is not an integer tensor (`check_state`), grads whose
tree, shapes or dtypes differ from the state's or the params' (`checked_leaves`, `param_leaves`),
and updates of another dtype than the params (`apply_updates` never promotes the params).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .._pytree import (
    PyTree,
    assert_same_structure,
    describe,
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


class GradientTransformationExtraArgs(GradientTransformation):
    """A GradientTransformation whose update also reads extra keyword arguments, as optax's of the
    same name: `update(grads, state, params=None, **extra_args)`.

    The extra arguments fit passes (and a hand-written loop should): `value`, the 0-d loss at
    `params` on this step's batch (what ReduceLROnPlateau-like transforms read), and `value_fn`,
    `value_fn(params) -> 0-d loss` on the same batch (what a line search re-evaluates). An update
    takes the ones it needs by name and ignores the rest (`**extra_args`). `chain` forwards them
    to the members of this type only; a plain GradientTransformation never sees them.
    """


@register_namedtuple
class EmptyState(NamedTuple):
    """The state of a transform that keeps none."""


def leafwise(
    init: Callable[[PyTree], PyTree],
    update_leaves: LeafUpdate,
    state_type: type | None = None,
    donates: bool = False,
) -> GradientTransformation:
    """A transform from an update over the flat list of leaves; the tree is flattened here, once.

    Args:
        init: `init(params) -> state`.
        update_leaves: `(grad_leaves, state, params or None, spec) -> (leaves, new_state)`, where
            `spec` is the grads' tree structure (to rebuild per-param state trees); params stay a
            tree, flattened only by the transforms that read them (`param_leaves`).
        state_type: the class of the states `init` makes; when given, every update first checks
            its state with `check_state`.
        donates: True when `update_leaves` writes its state only through `_foreach.owned` and
            keeps no reference to the grads or params in its state (see `LeafwiseUpdate`).
    Returns:
        A GradientTransformation whose `update` is a LeafwiseUpdate of `update_leaves`.
    """
    if state_type is not None:
        unchecked = update_leaves

        def update_leaves(g, state, params, spec):
            check_state(state, state_type, g, spec)
            return unchecked(g, state, params, spec)

    return GradientTransformation(init, LeafwiseUpdate(update_leaves, donates))


class LeafwiseUpdate:
    """An update over trees, `update(grads, state, params=None) -> (updates, new_state)`, that
    also offers its list-level form, `leaves(grad_leaves, state, params, spec)` (see `leafwise`).

    The typed extension of the contract for transforms written over leaves: `chain` composes the
    `leaves` of its members when all of them are LeafwiseUpdates (an isinstance check, never an
    attribute sniffed), so a chain flattens once. The state is the same either way: the one
    `init` made from the params tree.

    `donates`: whether the update may take its state buffers, and apply_updates the params, as
    its own within `_foreach.donated()`, writing the new values into them (fit's loop does so on
    the params and states it made itself; a chain donates when all its members do). The results
    are bitwise those of the pure update; only the old buffers are gone.
    """

    __slots__ = ("donates", "leaves")

    def __init__(self, leaves: LeafUpdate, donates: bool = False):
        self.leaves, self.donates = leaves, donates

    def __call__(self, grads: PyTree, state: PyTree, params: PyTree | None = None):
        g, spec = tree_flatten(grads)
        out, state = self.leaves(g, state, params, spec)
        return tree_unflatten(_keep_dtypes(out, g), spec), state

    # A pure function's wrapper: copies are itself, as a function's are (so a copied optimizer
    # equals the original, and fit's compiled-step cache keyed by it still hits).
    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


def _keep_dtypes(out: list[Tensor], like: list[Tensor]) -> list[Tensor]:
    """`out` in the dtypes of `like`. A 0-d leaf times a 0-d float64 factor (a bias correction,
    a scheduled lr) promotes to float64, as two 0-d tensors promote by dtype; larger leaves never
    do, so this returns `out` itself for them (a Fresh list stays one: see _foreach)."""
    if all(u.dtype == x.dtype for u, x in zip(out, like)):
        return out
    return [u if u.dtype == x.dtype else u.to(x.dtype) for u, x in zip(out, like)]


def check_state(state: PyTree, state_type: type, grads: list[Tensor], spec) -> None:
    """Check, from metadata only, that `state` is a `state_type` with an integer step count.

    Raises:
        ValueError: showing both structures, when state is not a `state_type` (the state of another
            transform or optimizer), or its count is not 0-d.
        TypeError: when its `count` is not an integer tensor (a float count would be used as is).
    """
    if not isinstance(state, state_type):
        fields = ", ".join(state_type._fields)
        raise ValueError(
            f"state does not belong to this transform.\n"
            f"  state: {describe(state)}\n"
            f"  expected: {state_type.__name__}({fields}), its trees shaped like the grads: "
            f"{describe(tree_unflatten(grads, spec))}\n"
            "Pass the state that this optimizer's init made (or a checkpoint of it)."
        )
    if "count" not in state_type._fields:
        return
    count = state.count
    if not isinstance(count, Tensor) or not _is_integer(count.dtype):
        given = (
            f"dtype {count.dtype}"
            if isinstance(count, Tensor)
            else f"{type(count).__name__}: {count!r}"
        )
        raise TypeError(
            f"{state_type.__name__}.count must be an integer tensor (init makes a 0-d int64), got "
            f"{given}; keep the count init made, e.g. torch.tensor(steps_done, dtype=torch.int64)."
        )
    if count.ndim != 0:
        raise ValueError(
            f"{state_type.__name__}.count must be 0-d (one step count per optimizer state), got "
            f"shape {tuple(count.shape)}; keep the count init made."
        )


def _is_integer(dtype: torch.dtype) -> bool:
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def param_leaves(params: PyTree | None, grads: list[Tensor], spec, user: str) -> list[Tensor]:
    """The leaves of `params`, after checking that the grads fit them.

    Raises:
        ValueError: when params is None (naming `user`, the transform that needs them), or when
            the grads' structure or a shape differs (showing both trees).
        TypeError: showing both trees, when a dtype differs (the updates would be promoted).
    """
    if params is None:
        raise ValueError(f"{user} needs params: call update(grads, state, params).")
    return _matching_leaves(params, grads, spec, "grads", "params")


def checked_leaves(buffer: PyTree, grads: list[Tensor], spec) -> list[Tensor]:
    """The leaves of a per-param state tree, after checking that the grads fit it.

    Raises:
        ValueError: showing both trees, when the structure or a shape differs.
        TypeError: showing both trees, when a dtype differs.
    """
    return _matching_leaves(buffer, grads, spec, "grads", "the optimizer state (made from params)")


def _matching_leaves(
    reference: PyTree, leaves: list[Tensor], spec, name: str, reference_name: str
) -> list[Tensor]:
    """The leaves of `reference`, after checking that `leaves` (of the tree `spec`) fit them:
    structure and shapes (ValueError), then dtypes (TypeError), both messages showing both trees."""
    reference_leaves, reference_spec = tree_flatten(reference)
    if reference_spec != spec or any(a.shape != b.shape for a, b in zip(leaves, reference_leaves)):
        assert_same_structure(tree_unflatten(leaves, spec), reference, name, reference_name)
    if any(a.dtype != b.dtype for a, b in zip(leaves, reference_leaves)):
        raise TypeError(
            f"{name} do not have the dtypes of {reference_name}.\n"
            f"  {name}: {describe(tree_unflatten(leaves, spec))}\n"
            f"  {reference_name}: {describe(reference)}\n"
            f"Convert one to the other's dtypes (mixing them would promote the result silently)."
        )
    return reference_leaves


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Compose transforms: each one's updates are the next one's grads.

    Args:
        transforms: GradientTransformations, applied in order.
    Returns:
        A GradientTransformation whose state is the tuple of the transforms' states, in order.
    Raises:
        TypeError: naming its position, for an argument that is not a GradientTransformation.
    """
    for i, t in enumerate(transforms):
        if not isinstance(t, GradientTransformation):
            # The common slip: the factory itself, optim.scale_by_adam, for optim.scale_by_adam().
            hint = f"; call it: {t.__name__}(...)" if callable(t) and hasattr(t, "__name__") else ""
            raise TypeError(
                f"chain's argument {i} must be a GradientTransformation (an (init, update) pair, "
                f"e.g. optim.scale(-1.0)), got {type(t).__name__}: {t!r}{hint}."
            )

    def init(params):
        return tuple(t.init(params) for t in transforms)

    def check(state):
        if not isinstance(state, tuple) or len(state) != len(transforms):
            given = f"a tuple of {len(state)}" if isinstance(state, tuple) else type(state).__name__
            raise ValueError(
                f"state does not belong to this optimizer: a chain of {len(transforms)} transforms "
                f"needs a tuple of {len(transforms)} states, got {given}. Use this optimizer's init."
            )

    takes_extra = [isinstance(t, GradientTransformationExtraArgs) for t in transforms]
    parts = [t.update.leaves for t in transforms if isinstance(t.update, LeafwiseUpdate)]
    if len(parts) == len(transforms) and not any(takes_extra):

        def update_leaves(g, state, p, spec):
            check(state)
            g_in, new_state = g, []
            for part, s in zip(parts, state):
                g, s = part(g, s, p, spec)
                g = _keep_dtypes(g, g_in)
                new_state.append(s)
            return g, tuple(new_state)

        donates = all(t.update.donates for t in transforms)
        return leafwise(init, update_leaves, donates=donates)

    def update(grads, state, params=None, **extra_args):
        check(state)
        new_state = []
        for t, s, extra in zip(transforms, state, takes_extra):
            grads, s = (
                t.update(grads, s, params, **extra_args) if extra else t.update(grads, s, params)
            )
            new_state.append(s)
        return grads, tuple(new_state)

    kind = GradientTransformationExtraArgs if any(takes_extra) else GradientTransformation
    return kind(init, update)


def apply_updates(params: PyTree, updates: PyTree) -> PyTree:
    """params + updates, leaf by leaf, as new tensors.

    Args:
        params: a pytree of tensors.
        updates: a pytree of the same structure and shapes, as returned by an optimizer's update.
    Returns:
        The new params, of the params' dtypes; the inputs are not modified.
    Raises:
        ValueError: showing both trees, when the structure or a shape differs.
        TypeError: showing both trees, when a dtype differs: the params are never promoted.
    """
    deltas, spec = tree_flatten(updates)
    leaves = _matching_leaves(params, deltas, spec, "updates", "params")
    # owned: within fit's donated steps, into the params it made at the step before.
    return tree_unflatten(_foreach.add_(_foreach.owned(leaves, params=True), deltas), spec)
