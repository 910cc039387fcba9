"""Which network made a params tree: so `fit(params, x, y, opt)` can train it without `model=`.

Network.init records each leaf of the tree it returns, and fit (with a Network) records the
params it returns, with the network and the tree's structure. `network_of(params)` finds the
network again when every leaf of `params` is a tensor so recorded, all by one network, in the
places and tree structure that network's init gives them. Anything else (a leaf made by other
code, e.g. `tree_map(lambda t: t * 2, params)`, a tree mixing two networks' params, a changed
structure) is a TypeError asking for `model=`: fit never guesses, so it never trains silently a
network other than the one that made the params.

The registry holds no tensor alive: it is keyed by `id(leaf)` and holds a weak reference, and an
entry counts only while that reference still gives the very tensor looked up (an id can be reused
after a tensor dies); `weakref.finalize` drops the entry when the tensor goes.
"""

from __future__ import annotations

import weakref
from typing import Any

import attrs
from torch import Tensor

from ._pytree import PyTree, tree_flatten

SINGLE, STACKED = "single", "stacked"  # one model's params; K models' with a leading axis of K


@attrs.frozen
class _Origin:
    network: Any
    spec: Any  # the treespec of the whole tree the leaf came in
    index: int  # the leaf's place in that tree's leaves
    kind: str


_registry: dict[int, tuple[weakref.ref, _Origin]] = {}


def record(params: PyTree, network: Any, kind: str = SINGLE) -> PyTree:
    """Note that `network` made `params` (every leaf); returns params, unchanged."""
    leaves, spec = tree_flatten(params)
    for i, leaf in enumerate(leaves):
        if not isinstance(leaf, Tensor):
            continue
        key = id(leaf)
        entry = _registry.get(key)
        if entry is None or entry[0]() is not leaf:
            ref = weakref.ref(leaf)
            weakref.finalize(leaf, _forget, key, ref)
        else:
            ref = entry[0]
        _registry[key] = (ref, _Origin(network, spec, i, kind))
    return params


def _forget(key: int, ref: weakref.ref) -> None:
    entry = _registry.get(key)
    if entry is not None and entry[0] is ref:
        del _registry[key]


def _origin(leaf: Any) -> _Origin | None:
    entry = _registry.get(id(leaf)) if isinstance(leaf, Tensor) else None
    return entry[1] if entry is not None and entry[0]() is leaf else None


def network_of(params: PyTree, kind: str = SINGLE) -> Any:
    """The network that made `params` (by init, or fit); else a TypeError saying why and asking
    for model=.

    Args:
        params: a params tree; for kind STACKED, a stacked tree as fit_ensemble returns it.
        kind: SINGLE for fit, STACKED for fit_ensemble's stacked params.
    """
    leaves, spec = tree_flatten(params)
    origins = [_origin(leaf) for leaf in leaves]
    why = _mismatch(leaves, spec, origins, kind)
    if why is not None:
        raise TypeError(
            f"fit cannot tell which network made these params: {why}. Pass the network as "
            "model=, e.g. fit(params, x, y, opt, model=net) (fit finds it by itself only for "
            "params exactly as net.init or an earlier fit with that net returned them)."
        )
    return origins[0].network


def networks_of(trees: list[PyTree]) -> Any:
    """The one network that made every tree of a list (fit_ensemble's K params trees)."""
    nets = []
    for i, tree in enumerate(trees):
        try:
            nets.append(network_of(tree))
        except TypeError as e:
            raise TypeError(f"params[{i}]: {e}") from None
    if any(net is not nets[0] for net in nets):
        raise TypeError(
            "fit_ensemble cannot tell which network to train: the params trees were made by "
            "different networks. Pass the network as model=."
        )
    return nets[0]


def _mismatch(leaves: list, spec: Any, origins: list, kind: str) -> str | None:
    """Why params are not as a network's init made them, or None when they are."""
    if not leaves:
        return "params hold no tensors"
    unknown = [i for i, o in enumerate(origins) if o is None]
    if unknown:
        return (
            f"{len(unknown)} of its {len(leaves)} tensors (the first is leaf {unknown[0]}) were "
            "not returned by a Network's init or by fit (e.g. they were made or changed by "
            "other code, or come from a plain callable model)"
        )
    if any(o.network is not origins[0].network for o in origins):
        return "its tensors come from different networks"
    if any(o.kind != kind for o in origins):
        expected = "one model's params" if kind == SINGLE else "stacked params of K models"
        return f"they are not {expected} (fit takes one model's, fit_ensemble a list or a stack)"
    specs = {id(o.spec): o.spec for o in origins}.values()  # one comparison per init call
    if any(s != spec for s in specs) or any(o.index != i for i, o in enumerate(origins)):
        return "their tree structure is not the one the network's init gives"
    return None
