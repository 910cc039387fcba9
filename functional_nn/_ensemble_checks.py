"""fit_ensemble's own checks: how K models' params are given, and their learning rates."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from . import _checks, _data_checks
from ._pytree import (
    PyTree,
    assert_same_structure,
    describe,
    tree_index,
    tree_leaves,
    tree_stack,
    tree_structure,
)
from .networks import Network
from .optim.base import GradientTransformation


def as_stacked(params: PyTree, model: Any, x: Tensor) -> tuple[PyTree, int]:
    """K models as one stacked tree, from a list of K params trees or a stacked tree.

    A list or tuple is read as K models when, for a Network, its first item fits the network
    (model.check), or, for a plain callable, its items share one structure and shapes; otherwise
    as a stacked tree, whose every leaf must have the same leading size K. (For a Network that
    neither reading fits, as with an x of the wrong width, the plain callable's rule decides.) (So with a plain
    callable, a stacked tree that is a list of identically shaped layers reads as a list: pass
    such params as a list of K trees.)
    """
    if _is_model_list(params, model, x):
        for i, p in enumerate(params):
            assert_same_structure(p, params[0], f"params[{i}]", "params[0]")
        return tree_stack(list(params)), len(params)
    k = _stacked_size(params)
    if k is None:
        raise ValueError(
            "params must be a list of K params trees, or one tree whose every leaf has a leading "
            f"axis of K models; got {describe(params)}."
        )
    return params, k


def _is_model_list(params: PyTree, model: Any, x: Tensor) -> bool:
    if not isinstance(params, (list, tuple)) or not params or isinstance(params[0], Tensor):
        return False
    if isinstance(model, Network):
        if _fits(model, params[0], x):
            return True
        if _stacked_size(params) is not None and _fits(model, tree_index(params, 0), x):
            return False
        # Neither reading fits x: judge by the layout alone, so that the check of model 0 then
        # names what is wrong, x or the params; one item alone is no evidence of a list.
        if len(params) == 1:
            return False
    shapes = lambda tree: [getattr(t, "shape", None) for t in tree_leaves(tree)]
    return all(
        tree_structure(p) == tree_structure(params[0]) and shapes(p) == shapes(params[0])
        for p in params
    )


def _fits(model: Network, params: PyTree, x: Tensor) -> bool:
    try:
        model.check(params, x)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError):
        return False
    return True


def _stacked_size(params: PyTree) -> int | None:
    """K, when every leaf of params has one leading size K; else None."""
    sizes = {t.shape[0] if isinstance(t, Tensor) and t.ndim else None for t in tree_leaves(params)}
    return sizes.pop() if len(sizes) == 1 else None


def check_lrs(opt: Any, lrs: Any, k: int, device: torch.device) -> Tensor | None:
    """opt a GradientTransformation without lrs, a function lr -> GradientTransformation with."""
    if lrs is None:
        if callable(opt) and not isinstance(opt, GradientTransformation):
            raise TypeError(
                f"opt is a function ({_data_checks.given(opt)}); with lrs=[one per model] it makes each "
                "model's optimizer, else pass a GradientTransformation, e.g. optim.adam(1e-3)."
            )
        _data_checks.check_opt(opt)
        return None
    if isinstance(opt, GradientTransformation) or not callable(opt):
        raise TypeError(
            "with lrs, opt must be a function of the learning rate, e.g. "
            f"lambda lr: optim.adam(lr), got {_data_checks.given(opt)}."
        )
    values = lrs.tolist() if isinstance(lrs, Tensor) else lrs
    if not isinstance(values, (list, tuple)):
        raise TypeError(
            f"lrs must be a list or 1-d tensor of {k} learning rates, got {_data_checks.given(lrs)}."
        )
    if len(values) != k:
        raise ValueError(f"lrs must hold one learning rate per model ({k}), got {lrs!r}.")
    for i, lr in enumerate(values):
        _checks.number(f"lrs[{i}]", lr)
    lrs = torch.tensor(values, dtype=torch.float64, device=device)
    check_lr_factory(opt, lrs)
    return lrs


def check_lr_factory(make_opt: Callable, lrs: Tensor) -> None:
    """make_opt(lr) works as fit_ensemble calls it: inside vmap, with lr a 0-d tensor whose value
    differs between the models, so that Python cannot branch on it."""
    made = []

    def call(lr):
        made.append(make_opt(lr))
        return lr

    try:
        torch.func.vmap(call)(lrs)
    except RuntimeError as e:  # vmap refuses data-dependent control flow and .item()
        raise ValueError(
            f"opt(lr) fails when called as fit_ensemble calls it, inside vmap with lr a 0-d tensor "
            "of a different value for each model: the factory must not branch on lr's value or "
            "read it as a Python number (if lr > ..., float(lr), lr.item()); pass lr to the "
            f"optimizer as it is, e.g. lambda lr: optim.adam(lr). vmap said: {e}"
        ) from e
    if not isinstance(made[0], GradientTransformation):
        raise TypeError(
            f"opt(lr) must return a GradientTransformation, e.g. optim.adam(lr), got {_data_checks.given(made[0])}."
        )
