"""Pytree helpers: the one module that touches torch.utils._pytree (a private torch API).

A pytree is a nest of dicts, lists, tuples, NamedTuples and registered attrs classes whose leaves are
tensors. Everything else in functional_nn goes through the names defined here, so a change in
torch's private API is mended in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import torch
import torch.utils._pytree as _pt

PyTree = Any

tree_flatten = _pt.tree_flatten
tree_unflatten = _pt.tree_unflatten
tree_leaves = _pt.tree_leaves
tree_structure = _pt.tree_structure


def tree_map(fn: Callable, tree: PyTree, *rest: PyTree) -> PyTree:
    """Apply `fn` leaf-wise over `tree` and trees of the same structure in `rest`."""
    return _pt.tree_map(fn, tree, *rest)


def zeros_like(tree: PyTree) -> PyTree:
    """A tree of zeros with the structure, shapes, dtypes and devices of `tree`."""
    return tree_map(torch.zeros_like, tree)


def clone(tree: PyTree) -> PyTree:
    """A copy of `tree` whose tensors share no memory with it."""
    return tree_map(torch.clone, tree)


def describe(tree: PyTree) -> str:
    """The structure of `tree` with each tensor written as dtype[shape], for error messages."""

    def leaf(t):
        if isinstance(t, torch.Tensor):
            return f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}"
        return repr(t)

    return str(tree_unflatten([_Raw(leaf(t)) for t in tree_leaves(tree)], tree_structure(tree)))


class _Raw(str):
    """A string that prints without quotes inside a described tree."""

    def __repr__(self) -> str:
        return str(self)


def assert_same_structure(
    tree: PyTree, reference: PyTree, name: str = "tree", reference_name: str = "reference"
) -> None:
    """Raise ValueError, showing both trees, unless `tree` has the structure and shapes of `reference`.

    Args:
        tree: the tree to check (e.g. grads).
        reference: the tree it must match (e.g. params).
        name, reference_name: how the message calls the two.
    """
    leaves, spec = tree_flatten(tree)
    ref_leaves, ref_spec = tree_flatten(reference)
    same = spec == ref_spec and all(_shape(a) == _shape(b) for a, b in zip(leaves, ref_leaves))
    if not same:
        raise ValueError(
            f"{name} does not match the structure of {reference_name}.\n"
            f"  {name}: {describe(tree)}\n"
            f"  {reference_name}: {describe(reference)}\n"
            f"Build {name} from the same {reference_name} (same keys, nesting and shapes)."
        )


def _shape(x: Any) -> tuple | None:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else None


def register_attrs(cls: type) -> type:
    """Register an attrs class as a pytree node whose children are its fields, in order.

    Use as a decorator below `@attrs.frozen`. The class also becomes loadable with
    `torch.load(weights_only=True)`, so states built from it can be checkpointed safely.
    Registering a class again is harmless.

    Raises:
        TypeError: a field is not an argument of the class's __init__ (init=False), so the class
            could not be rebuilt from its fields.
    """
    fields = attrs.fields(cls)
    hidden = [f.name for f in fields if not f.init]
    if hidden:
        raise TypeError(
            f"register got {cls.__qualname__}, whose fields {hidden} are not arguments of its "
            "__init__ (init=False), so a pytree could not rebuild it from its fields; make them "
            "init=True fields, or properties."
        )
    names = tuple(f.name for f in fields)
    keywords = tuple(f.alias for f in fields)  # __init__'s names: attrs strips a leading "_"
    if cls not in _pt.SUPPORTED_NODES:  # torch refuses a second registration with a ValueError
        _pt.register_pytree_node(
            cls,
            lambda obj: ([getattr(obj, n) for n in names], keywords),
            lambda children, ctx: cls(**dict(zip(ctx, children))),
            serialized_type_name=f"{cls.__module__}.{cls.__qualname__}",
        )
    torch.serialization.add_safe_globals([cls])
    return cls


def register_namedtuple(cls: type) -> type:
    """Make a NamedTuple state class loadable with `torch.load(weights_only=True)`.

    NamedTuples are pytree nodes already; this only allows their class in safe checkpoints.
    """
    torch.serialization.add_safe_globals([cls])
    return cls


def tree_stack(trees: list[PyTree]) -> PyTree:
    """One tree whose tensors stack the trees' tensors on a new leading axis (K trees -> size K).

    Leaves that are not tensors (None, in a state) are taken from the first tree.
    """
    stack = lambda t, *ts: torch.stack([t, *ts]) if isinstance(t, torch.Tensor) else t
    return tree_map(stack, *trees)


def tree_index(tree: PyTree, i: int) -> PyTree:
    """The i-th tree of a stacked tree: every tensor indexed at i on its leading axis (views)."""
    return tree_map(lambda t: t[i] if isinstance(t, torch.Tensor) else t, tree)


def key_paths(tree: PyTree) -> list[tuple[tuple[Any, bool], ...]]:
    """Each leaf's path of keys, in tree_leaves' order: a tuple of (key, is_field) steps, where
    is_field marks a NamedTuple or attrs field (an attribute) and every other key indexes (a dict
    key, a list or tuple position). A node of another registered class ends the path there."""
    if isinstance(tree, dict):  # torch's pytrees keep a dict's insertion order (jax sorts keys)
        items = [((k, False), v) for k, v in tree.items()]
    elif isinstance(tree, tuple) and hasattr(tree, "_fields"):
        items = [((f, True), getattr(tree, f)) for f in tree._fields]
    elif isinstance(tree, (list, tuple)):
        items = [((i, False), t) for i, t in enumerate(tree)]
    elif attrs.has(type(tree)):
        items = [((f.name, True), getattr(tree, f.name)) for f in attrs.fields(type(tree))]
    else:
        return [()] * len(tree_leaves(tree))
    return [(step, *path) for step, child in items for path in key_paths(child)]


def leaf_paths(tree: PyTree, name: str) -> list[str]:
    """Each leaf's path as Python would reach it, in tree_leaves' order: name[0]['weight'],
    fields as attributes (name.mu); for error messages."""
    return [
        name + "".join(f".{k}" if field else f"[{k!r}]" for k, field in path)
        for path in key_paths(tree)
    ]


def dotted_paths(tree: PyTree) -> list[str]:
    """Each leaf's dotted path, in tree_leaves' order: "0.weight" for tree[0]["weight"], the
    names torch's named_parameters gives (a from_module dict keeps its keys, "layer1.bias")."""
    return [".".join(str(k) for k, _ in path) for path in key_paths(tree)]
