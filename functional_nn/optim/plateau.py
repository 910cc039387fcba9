"""torch.optim.lr_scheduler.ReduceLROnPlateau as a transform that reads the loss (`value=`)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .._pytree import register_namedtuple, tree_map
from ._checks import integer, number
from .base import GradientTransformationExtraArgs
from .transforms import zero_count


@register_namedtuple
class ReduceOnPlateauState(NamedTuple):
    """State of `reduce_on_plateau`, torch's fields: losses seen, the best one, bad epochs in a
    row, cooldown left, and the learning rate of the next update (float64, 0-d)."""

    count: Tensor
    best: Tensor
    num_bad_epochs: Tensor
    cooldown_counter: Tensor
    lr: Tensor


def reduce_on_plateau(
    lr: float,
    mode: str = "min",
    factor: float = 0.1,
    patience: int = 10,
    threshold: float = 1e-4,
    threshold_mode: str = "rel",
    cooldown: int = 0,
    min_lr: float = 0.0,
    eps: float = 1e-8,
) -> GradientTransformationExtraArgs:
    """ReduceLROnPlateau: scale the updates by lr_t / lr, where lr_t drops by `factor` when the
    loss has not improved for more than `patience` updates.

    Put it after an optimizer with learning rate `lr`: `chain(optim.adam(1e-3),
    reduce_on_plateau(1e-3, patience=5))`. Each update is scaled by the current lr_t, then
    `value` (the loss) is read, as torch's `scheduler.step(loss)` after `optimizer.step()`:
    better = value < best (1 - threshold) (rel) or value < best - threshold (abs), mirrored for
    mode "max"; bad epochs reset on better and in cooldown; past patience,
    lr_t <- max(lr_t factor, min_lr) when that lowers it by more than eps, and the cooldown starts.

    Args:
        lr: the wrapped optimizer's learning rate (min_lr and eps are in its units).
        mode, factor, patience, threshold, threshold_mode, cooldown, min_lr, eps: torch's.
    Returns:
        A GradientTransformationExtraArgs whose update takes `value=` (a 0-d loss) and holds a
        ReduceOnPlateauState; the lr is `state.lr` there.
    """
    number("lr", lr, "a number > 0", lambda v: v > 0.0)
    if mode not in ("min", "max"):
        raise ValueError(f'mode must be "min" or "max", got {mode!r}.')
    if threshold_mode not in ("rel", "abs"):
        raise ValueError(f'threshold_mode must be "rel" or "abs", got {threshold_mode!r}.')
    number(
        "factor", factor, "a number in [0, 1) (torch: Factor should be < 1.0)", lambda v: 0 <= v < 1
    )
    integer("patience", patience, 0)
    integer("cooldown", cooldown, 0)
    number("threshold", threshold)
    number("min_lr", min_lr)
    number("eps", eps)
    sign = 1.0 if mode == "min" else -1.0

    def init(params):
        count = zero_count(params)
        f64 = lambda v: torch.full((), v, dtype=torch.float64, device=count.device)
        return ReduceOnPlateauState(
            count, f64(sign * math.inf), count.clone(), count.clone(), f64(lr)
        )

    def is_better(a, best):
        if threshold_mode == "rel":
            bound = best * (1.0 - threshold) if mode == "min" else best * (threshold + 1.0)
        else:
            bound = best - threshold if mode == "min" else best + threshold
        return a < bound if mode == "min" else a > bound

    def update(grads, state, params=None, *, value=None, **extra_args):
        if not isinstance(state, ReduceOnPlateauState):
            raise ValueError(f"state does not belong to reduce_on_plateau: {type(state).__name__}.")
        if value is None:
            raise ValueError(
                "reduce_on_plateau reads the loss: call update(grads, state, params, value=loss)."
            )
        current = torch.as_tensor(value).detach().to(torch.float64).reshape(())
        scale = state.lr / lr
        updates = tree_map(lambda g: g * scale.to(g.dtype), grads)
        better = is_better(current, state.best)
        best = torch.where(better, current, state.best)
        bad = torch.where(better, 0, state.num_bad_epochs + 1)
        cooling = state.cooldown_counter > 0
        cooldown_left = torch.where(cooling, state.cooldown_counter - 1, state.cooldown_counter)
        bad = torch.where(cooling, 0, bad)
        reduce = bad > patience
        new_lr = torch.clamp(state.lr * factor, min=min_lr)
        lowered = torch.where(reduce & (state.lr - new_lr > eps), new_lr, state.lr)
        return updates, ReduceOnPlateauState(
            state.count + 1,
            best,
            torch.where(reduce, 0, bad),
            torch.where(reduce, cooldown, cooldown_left),
            lowered,
        )

    return GradientTransformationExtraArgs(init, update)
