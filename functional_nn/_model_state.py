"""Model state and keys in fit and fit_ensemble, for networks with `init_state` (see networks.py).

The loop (`_loop.py`) carries one optimizer-state tree from step to step and replays steps from
it after a divergence; so a stateful network's model state, its base key and the step count ride
along in that slot, as `(opt_state, model_state, base_key, t)`, and the step stays a pure function
of its inputs: the key of step t is `fold_in(base_key, t)`, `base_key = key(seed)` (fit), or per
model in fit_ensemble `fold_in(key(seed), k)` for an int seed and `key(seed[k])` for K seeds (so
model k then draws what fit with seed=seed[k] draws). torch's global RNG is never read or
advanced. Training steps run with train=True; validation with train=False on the model state of
the last step, as a torch user's loop evaluates after `module.eval()`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from . import _data_checks
from ._pytree import PyTree, assert_same_structure, tree_leaves, tree_stack
from ._step import _dims, _finite, _own_code
from .dropout import fold_in, key
from .networks import Network
from .optim.base import GradientTransformationExtraArgs, apply_updates


def resolve(model: Any, model_state: PyTree, x: Tensor, k: int | None = None) -> PyTree:
    """The model state fit starts from: as given (checked against init_state's), or fresh.

    Args:
        model: the model fit was given; model_state must be None unless it is stateful.
        model_state: the caller's state (stacked with a leading K for an ensemble) or None.
        x: the data (dtype and device of a fresh state).
        k: the ensemble's size, None for fit.
    """
    stateful = isinstance(model, Network) and model.stateful
    if not stateful:
        if model_state is not None:
            raise ValueError(
                "model_state is given, but the model has no state (no init_state); pass "
                "model_state=None, or a Network with batch_norm or dropout layers."
            )
        return None
    fresh = model.init_state(dtype=x.dtype, device=x.device)
    if k is not None:
        fresh = tree_stack([fresh] * k) if tree_leaves(fresh) else fresh
    if model_state is None:
        return fresh
    assert_same_structure(model_state, fresh, "model_state", "model.init_state()")
    for given, want in zip(tree_leaves(model_state), tree_leaves(fresh)):
        if isinstance(given, Tensor) and (given.dtype, given.device) != (want.dtype, want.device):
            raise TypeError(
                f"model_state holds a {given.dtype} tensor on {given.device} where "
                f"model.init_state makes {want.dtype} on {want.device}; pass the model_state "
                "of an earlier fit on this data (FitResult.model_state)."
            )
    return model_state


def base_keys(seed: int | tuple[int, ...], device, k: int | None = None) -> Tensor:
    """fit's base key `key(seed)`; for K models a (K,) tensor of base keys."""
    if k is None:
        return key(seed, device)
    if isinstance(seed, tuple):
        return torch.stack([key(s, device) for s in seed])
    return torch.stack([fold_in(key(seed, device), i) for i in range(k)])


def carry(opt_state, model_state, base_key: Tensor, start_step: int) -> tuple:
    """What the loop carries in its state slot; t has base_key's shape (one count per model)."""
    t = torch.full_like(base_key, start_step)
    return (opt_state, model_state, base_key, t)


def split(fields: dict) -> dict:
    """The loop's result fields with the carried tuple split into opt_state and model_state."""
    opt_state, model_state, _, _ = fields["opt_state"]
    return {**fields, "opt_state": opt_state, "model_state": model_state}


def make_stateful_step(apply: Callable, loss: Callable, opt) -> Callable:
    """make_step (see `_step.py`) for a stateful network, over the carried tuple.

    Returns:
        `step(params, (opt_state, model_state, base_key, t), xb, yb) -> (params, carried, loss,
        finite)`: apply runs with train=True and key fold_in(base_key, t); the new model state
        comes out of the differentiated function as an auxiliary output (never differentiated).
    """
    extra = isinstance(opt, GradientTransformationExtraArgs)

    def step(params, carried, xb, yb):
        opt_state, model_state, base_key, t = carried
        step_key = fold_in(base_key, t)

        def checked_loss(p):
            out = apply(p, xb, state=model_state, train=True, key=step_key)
            pred, new_state = out
            _data_checks.check_pred(pred, "model(params, x)")
            value = loss(pred, yb)
            _data_checks.check_loss_value(value, "loss(pred, y)")
            return value, new_state

        grads, (value, new_state) = torch.func.grad_and_value(checked_loss, has_aux=True)(params)
        if extra:
            value_fn = lambda p: checked_loss(p)[0]
            updates, opt_state = opt.update(
                grads, opt_state, params, value=value, value_fn=value_fn
            )
        else:
            updates, opt_state = opt.update(grads, opt_state, params)
        params = apply_updates(params, updates)
        floats = [s for s in tree_leaves(new_state) if torch.is_floating_point(s)]
        finite = _finite([value, *tree_leaves(grads), *tree_leaves(params), *floats])
        return params, (opt_state, new_state, base_key, t + 1), value, finite

    return step


@functools.lru_cache(maxsize=32)
def compiled_stateful_step(apply: Callable, loss: Callable, opt, mode: str) -> Callable:
    """make_stateful_step compiled whole, cached as `_step.compiled_step` is."""
    step = _own_code(make_stateful_step(apply, loss, opt))
    return torch.compile(step, mode=mode, fullgraph=True)


def vmapped_stateful_step(apply, loss, opt, per_model_lr: bool, per_model_data: bool):
    """make_stateful_step over K models, as `_step.vmapped_step`: each model its own params,
    optimizer state, model state and keys.

    Returns:
        `step(params, carried, xb, yb, lrs) -> (params, carried, losses, finite)`.
    """

    def one(p, c, xb, yb, lr):
        return make_stateful_step(apply, loss, opt(lr) if per_model_lr else opt)(p, c, xb, yb)

    data_dim = 0 if per_model_data else None

    def step(params, carried, xb, yb, lrs):
        p_dims, c_dims = _dims(params), _dims(carried)
        in_dims = (p_dims, c_dims, data_dim, data_dim, 0 if per_model_lr else None)
        batched = torch.func.vmap(one, in_dims=in_dims, out_dims=(p_dims, c_dims, 0, 0))
        return batched(params, carried, xb, yb, lrs)

    return step


@functools.lru_cache(maxsize=32)
def compiled_vmapped_stateful_step(*key_and_mode):
    """vmapped_stateful_step compiled whole, cached on its arguments."""
    *args, mode = key_and_mode
    return torch.compile(_own_code(vmapped_stateful_step(*args)), mode=mode, fullgraph=True)


def tracking(step: Callable, carried: tuple) -> tuple[Callable, list]:
    """`step`, recording the model state after each call in a one-item list, for evaluate: the
    loop gives evaluate the params only (its signature predates model state)."""
    latest = [carried[1]]

    def tracked(params, c, *rest):
        out = step(params, c, *rest)
        latest[0] = out[1][1]
        return out

    return tracked, latest


def watch(callbacks, latest: list) -> None:
    """Give each callback with a watch_model_state method (see callbacks.py) the latest state."""
    for hook in callbacks:
        getattr(hook, "watch_model_state", lambda get: None)(lambda: latest[0])


def evaluator(apply, loss, val, latest: list, ensemble: bool) -> Callable[[PyTree], Tensor]:
    """The validation loss in eval mode (train=False: dropout off, running statistics)."""
    val_x, val_y = val

    def one(p, s):
        return loss(apply(p, val_x, state=s, train=False, key=None)[0], val_y)

    if not ensemble:
        return lambda params: one(params, latest[0])

    def batched(params):
        dims = (_dims(params), _dims(latest[0]))
        return torch.func.vmap(one, in_dims=dims)(params, latest[0])

    return batched
