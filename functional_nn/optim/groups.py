"""Param groups: a transform for part of the params, optax's way (`masked`, `multi_transform`)
and torch.optim's (`param_groups`).

A param is named by its path in the tree, the names `interop.from_module` and torch state dicts
use: "0.weight" for `params[0]["weight"]`, "layer1.bias" for a from_module dict's key (see
`param_names`). A transform that sees part of the tree sees it with the rest replaced by
`MaskedNode()`, an empty node (optax's convention): its state holds only the params it updates.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, NamedTuple

import torch

from .._pytree import (
    PyTree,
    describe,
    dotted_paths,
    register_namedtuple,
    tree_flatten,
    tree_unflatten,
)
from .base import EmptyState, GradientTransformation, GradientTransformationExtraArgs


@register_namedtuple
class MaskedNode(NamedTuple):
    """The place of a param that a masked transform does not see: a node with no leaves."""


@register_namedtuple
class MaskedState(NamedTuple):
    """State of `masked`: the inner transform's state, over the params the mask selects."""

    inner_state: PyTree


@register_namedtuple
class MultiTransformState(NamedTuple):
    """State of `multi_transform`: a dict label -> that group's MaskedState."""

    inner_states: dict


def param_names(params: PyTree) -> list[str]:
    """Each leaf's dotted path, in tree_leaves' order: "0.weight" for params[0]["weight"].

    Args:
        params: a pytree of dicts, lists, tuples, NamedTuples and attrs classes.
    Returns:
        One name per leaf; dict keys as given (a from_module dict keeps "layer1.bias").
    """
    return dotted_paths(params)


def masked(inner: GradientTransformation, mask: PyTree | Callable) -> GradientTransformation:
    """`inner` on the params where `mask` is True; the other grads pass through unchanged.

    Args:
        inner: a GradientTransformation; it sees the grads and params with the masked-out
            leaves replaced by MaskedNode().
        mask: a tree of bools with the params' structure, or `mask(params) -> such a tree`.
    Returns:
        A GradientTransformation (ExtraArgs when inner is) with a MaskedState.
    Raises:
        ValueError: showing both trees, when the mask's structure differs from the params'.
    """
    if not isinstance(inner, GradientTransformation):
        raise TypeError(f"masked's inner must be a GradientTransformation, got {type(inner)}.")
    extra = isinstance(inner, GradientTransformationExtraArgs)

    def select(tree, flags):
        leaves, spec = tree_flatten(tree)
        return tree_unflatten([x if f else MaskedNode() for x, f in zip(leaves, flags)], spec)

    def init(params):
        return MaskedState(inner.init(select(params, _flags(mask, params))))

    def update(grads, state, params=None, **extra_args):
        if not isinstance(state, MaskedState):
            raise ValueError(f"state does not belong to masked: got {type(state).__name__}.")
        flags = _flags(mask, grads if params is None else params, grads)
        sub_params = None if params is None else select(params, flags)
        args = (select(grads, flags), state.inner_state, sub_params)
        sub, inner_state = inner.update(*args, **extra_args) if extra else inner.update(*args)
        g, spec = tree_flatten(grads)
        chosen = iter(tree_flatten(sub)[0])
        out = [next(chosen) if f else x for x, f in zip(g, flags)]
        return tree_unflatten(out, spec), MaskedState(inner_state)

    return (GradientTransformationExtraArgs if extra else GradientTransformation)(init, update)


def _flags(mask, params, grads=None) -> list[bool]:
    """The mask as one bool per leaf of params, after checking its structure (and the grads')."""
    tree = mask(params) if callable(mask) else mask
    flags, spec = tree_flatten(tree)
    _, params_spec = tree_flatten(params)
    if spec != params_spec:
        raise ValueError(
            f"the mask does not match the structure of params.\n  mask: {tree!r}\n"
            f"  params: {describe(params)}\nGive one bool per param, in a tree like params "
            "(or a function params -> such a tree)."
        )
    if not all(isinstance(f, bool) for f in flags):
        raise TypeError(f"mask leaves must be bools, got {[type(f).__name__ for f in flags]}.")
    if grads is not None and tree_flatten(grads)[1] != params_spec:
        raise ValueError(
            f"grads do not match the structure of params.\n  grads: {describe(grads)}\n"
            f"  params: {describe(params)}"
        )
    return flags


def multi_transform(
    transforms: Mapping[Hashable, GradientTransformation], param_labels: PyTree | Callable
) -> GradientTransformation:
    """A transform per group of params: each leaf's update is that of the transform its label names.

    Args:
        transforms: a dict label -> GradientTransformation.
        param_labels: a tree of labels with the params' structure, or `param_labels(params) ->
            such a tree`.
    Returns:
        A GradientTransformation with a MultiTransformState (ExtraArgs when a member is).
    Raises:
        ValueError: when a label names no transform (listing the known labels), or the labels'
            structure differs from the params'.
    """
    if not isinstance(transforms, Mapping) or not transforms:
        raise TypeError(
            f"transforms must be a non-empty dict label -> transform, got {transforms!r}."
        )

    def labels_of(params):
        tree = param_labels(params) if callable(param_labels) else param_labels
        labels, _ = tree_flatten(tree)
        unknown = sorted({repr(x) for x in labels if x not in transforms})
        if unknown:
            raise ValueError(
                f"param_labels uses labels {', '.join(unknown)} that name no transform; the "
                f"transforms are labelled {sorted(map(repr, transforms))}: add one for each label."
            )
        return tree

    def mask_for(label):
        return lambda params: tree_map_leaves(lambda x: x == label, labels_of(params))

    parts = {k: masked(t, mask_for(k)) for k, t in transforms.items()}
    extra = any(isinstance(t, GradientTransformationExtraArgs) for t in parts.values())

    def init(params):
        return MultiTransformState({k: t.init(params) for k, t in parts.items()})

    def update(grads, state, params=None, **extra_args):
        if not isinstance(state, MultiTransformState) or state.inner_states.keys() != parts.keys():
            raise ValueError("state does not belong to this multi_transform; use its init.")
        new = {}
        for k, t in parts.items():
            kw = extra_args if isinstance(t, GradientTransformationExtraArgs) else {}
            grads, new[k] = t.update(grads, state.inner_states[k], params, **kw)
        return grads, MultiTransformState(new)

    return (GradientTransformationExtraArgs if extra else GradientTransformation)(init, update)


def tree_map_leaves(fn: Callable, tree: PyTree) -> PyTree:
    """`fn` over the leaves of a tree whose leaves need not be tensors (labels, bools)."""
    leaves, spec = tree_flatten(tree)
    return tree_unflatten([fn(x) for x in leaves], spec)


def set_to_zero() -> GradientTransformation:
    """updates = -0.0 everywhere: params + updates is then the params bitwise (-0.0 and NaN too,
    where +0.0 would turn a -0.0 param into +0.0). For a frozen group of `multi_transform`."""

    def update(grads, state, params=None):
        return tree_map_leaves(lambda g: torch.full_like(g, -0.0), grads), state

    return GradientTransformation(lambda params: EmptyState(), update)


Selector = str | Sequence[str] | Callable[[str], bool]


def param_groups(
    optimizer: Callable[..., GradientTransformation],
    groups: Sequence[Mapping[str, Any]],
    **defaults: Any,
) -> GradientTransformation:
    """torch.optim's param_groups: `optimizer(**{**defaults, **group})` on each group's params.

    `param_groups(optim.adamw, [{"params": lambda name: not name.endswith("bias"),
    "weight_decay": 0.01}, {"params": lambda name: name.endswith("bias"), "weight_decay": 0.0,
    "lr": 2e-3}], lr=1e-3)` is torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
    {"params": no_decay, "weight_decay": 0.0, "lr": 2e-3}], lr=1e-3). A group with
    `"frozen": True` (and no hyper-parameters) does not train: its params stay bitwise unchanged.
    `current_lr(state, group=i)` reads group i's learning rate.

    Args:
        optimizer: an alias such as optim.adamw (the factory, not called).
        groups: dicts with "params": a name ("0.weight"), a list of names, or a predicate
            `name -> bool` over the names of `param_names`; and the hyper-parameters of the group.
        defaults: the hyper-parameters of every group, which a group's own override.
    Returns:
        A multi_transform labelled 0, 1, ... by group.
    Raises:
        ValueError: when a group has no "params", when a name matches no param, or (at init and
            update) when a param is in no group or in two.
    """
    if not callable(optimizer) or isinstance(optimizer, GradientTransformation):
        raise TypeError(
            f"optimizer must be an optimizer factory such as optim.adamw (not called), got "
            f"{type(optimizer).__name__}."
        )
    transforms, selectors = {}, []
    for i, group in enumerate(groups):
        if not isinstance(group, Mapping) or "params" not in group:
            raise ValueError(f'groups[{i}] must be a dict with a "params" key, got {group!r}.')
        hyper = {k: v for k, v in group.items() if k not in ("params", "frozen")}
        if group.get("frozen", False):
            if hyper:
                raise ValueError(
                    f"groups[{i}] is frozen, so it takes no hyper-parameters: {hyper}."
                )
            transforms[i] = set_to_zero()
        else:
            transforms[i] = optimizer(**{**defaults, **hyper})
        selectors.append(_selector(i, group["params"]))

    def labels(params):
        names = param_names(params)
        chosen = [[i for i, s in enumerate(selectors) if s(n)] for n in names]
        for i, s in enumerate(selectors):
            missing = [n for n in getattr(s, "names", ()) if n not in names]
            if missing:
                raise ValueError(f"groups[{i}] names {missing}, which are not params: {names}.")
        for n, c in zip(names, chosen):
            if len(c) != 1:
                where = f"in groups {c}" if c else "in no group"
                raise ValueError(
                    f"param {n!r} is {where}; each param must be in exactly one group (add "
                    '{"params": [...], "frozen": True} for params that do not train).'
                )
        _, spec = tree_flatten(params)
        return tree_unflatten([c[0] for c in chosen], spec)

    return multi_transform(transforms, labels)


def _selector(i: int, params: Selector) -> Callable[[str], bool]:
    if isinstance(params, str):
        params = [params]
    if callable(params):
        return params
    if isinstance(params, Sequence) and all(isinstance(n, str) for n in params):
        names = frozenset(params)
        select = lambda name: name in names
        select.names = sorted(names)
        return select
    raise TypeError(
        f'groups[{i}]["params"] must be a name, a list of names or a predicate name -> bool, '
        f"got {type(params).__name__}: {params!r}."
    )
