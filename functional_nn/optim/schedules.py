"""Learning-rate schedules: functions `count -> lr`, for `scale_by_learning_rate` and every alias.

`count` is the number of updates done so far (the 0-d int64 count in an optimizer's state, or an
int); the result is the learning rate of the next update, a float64 0-d tensor on count's device.
Schedules are tensor arithmetic without Python branches on the count, so they run under vmap and
torch.compile without a host sync.

Each equals its `torch.optim.lr_scheduler` counterpart after `count` calls of `scheduler.step()`
(torch updates the rate recursively, these use the closed forms, so they agree to rounding):
`step_decay` StepLR, `exponential_decay` ExponentialLR, `cosine_decay` CosineAnnealingLR,
`linear` LinearLR, `join` SequentialLR, `warmup_cosine_decay` SequentialLR of LinearLR and
CosineAnnealingLR. Names and the count convention follow optax.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._checks import integer, number

Schedule = Callable[[Tensor | int], Tensor]


def _as_count(count: Tensor | int) -> Tensor:
    return count if isinstance(count, Tensor) else torch.tensor(count, dtype=torch.int64)


def _steps(count: Tensor | int) -> Tensor:
    return _as_count(count).to(torch.float64)


def constant(value: float) -> Schedule:
    """lr_t = value."""
    _check_value("value", value)
    return lambda count: torch.full_like(_steps(count), value)


def step_decay(init_value: float, step_size: int, gamma: float = 0.1) -> Schedule:
    """lr_t = init_value * gamma^floor(t / step_size): torch's StepLR.

    Args:
        init_value: the learning rate for t < step_size.
        step_size: updates between decays, >= 1.
        gamma: the decay factor, >= 0.
    """
    _check_value("init_value", init_value)
    _check_value("gamma", gamma)
    integer("step_size", step_size, 1)
    return lambda count: (
        init_value * torch.pow(gamma, (_as_count(count) // step_size).to(torch.float64))
    )


def exponential_decay(init_value: float, gamma: float) -> Schedule:
    """lr_t = init_value * gamma^t: torch's ExponentialLR."""
    _check_value("init_value", init_value)
    _check_value("gamma", gamma)
    return lambda count: init_value * torch.pow(gamma, _steps(count))


def cosine_decay(
    init_value: float, decay_steps: int, end_value: float = 0.0, *, periodic: bool = False
) -> Schedule:
    """lr_t = end + (init - end) (1 + cos(pi min(t, T) / T)) / 2, T = decay_steps (SGDR, Loshchilov
    & Hutter 2017, without restarts): torch's CosineAnnealingLR(T_max=T, eta_min=end) for t <= T.
    After T it stays at end_value (optax's), or with periodic=True goes on along the cosine,
    rising back to init_value at 2T, as torch's recursive step() does (t, not min(t, T)).
    """
    _check_value("init_value", init_value)
    _check_value("end_value", end_value)
    integer("decay_steps", decay_steps, 1)

    def schedule(count):
        t = _steps(count) if periodic else torch.clamp(_steps(count), max=float(decay_steps))
        return end_value + (init_value - end_value) * (1 + torch.cos(math.pi * t / decay_steps)) / 2

    return schedule


def linear(init_value: float, end_value: float, transition_steps: int) -> Schedule:
    """lr_t = init + (end - init) min(t, T) / T, T = transition_steps: a warmup (or a linear decay);
    torch's LinearLR with start_factor = init / base_lr and end_factor = end / base_lr."""
    _check_value("init_value", init_value)
    _check_value("end_value", end_value)
    integer("transition_steps", transition_steps, 1)

    def schedule(count):
        t = torch.clamp(_steps(count), max=float(transition_steps))
        return init_value + (end_value - init_value) * t / transition_steps

    return schedule


def join(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """schedules[i] from update boundaries[i - 1] on, counting from 0 again there: torch's
    SequentialLR(schedulers, milestones=boundaries).

    Args:
        schedules: n >= 1 schedules.
        boundaries: n - 1 strictly increasing ints >= 0.
    """
    schedules, boundaries = list(schedules), list(boundaries)
    if not schedules or len(boundaries) != len(schedules) - 1:
        raise ValueError(
            f"join needs n >= 1 schedules and n - 1 boundaries, got {len(schedules)} schedules and "
            f"{len(boundaries)} boundaries."
        )
    for i, s in enumerate(schedules):
        if not callable(s):
            raise TypeError(
                f"schedules[{i}] must be a schedule (count -> lr), got {type(s).__name__}."
            )
    for i, b in enumerate(boundaries):
        integer(f"boundaries[{i}]", b, boundaries[i - 1] + 1 if i else 0)

    def schedule(count):
        count = _as_count(count)
        lr = schedules[0](count)
        for boundary, later in zip(boundaries, schedules[1:]):
            lr = torch.where(count >= boundary, later(count - boundary), lr)
        return lr

    return schedule


def warmup_cosine_decay(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    decay_steps: int,
    end_value: float = 0.0,
) -> Schedule:
    """Linear warmup from init_value to peak_value over warmup_steps, then cosine decay to end_value
    at decay_steps (the total length, warmup included), as optax's schedule of that name.

    torch: SequentialLR([LinearLR(start_factor=init/peak, total_iters=warmup_steps),
    CosineAnnealingLR(T_max=decay_steps - warmup_steps, eta_min=end_value)], [warmup_steps]) on an
    optimizer with lr=peak_value.
    """
    integer("warmup_steps", warmup_steps, 0)
    integer("decay_steps", decay_steps, warmup_steps + 1)
    cosine = cosine_decay(peak_value, decay_steps - warmup_steps, end_value)
    if warmup_steps == 0:
        return cosine
    return join([linear(init_value, peak_value, warmup_steps), cosine], [warmup_steps])


def _check_value(name: str, value) -> None:
    number(name, value, "a finite number >= 0", lambda v: 0.0 <= v < math.inf)


# The rest of torch.optim.lr_scheduler, in their own module (this one would pass 300 lines).
from .lr_schedulers import (  # noqa: E402
    chained,
    constant_factor,
    cosine_warm_restarts,
    cyclic,
    lambda_lr,
    multiplicative,
    multistep_decay,
    one_cycle,
    polynomial_decay,
    swa_lr,
)

__all__ = [
    "Schedule",
    "chained",
    "constant",
    "constant_factor",
    "cosine_decay",
    "cosine_warm_restarts",
    "cyclic",
    "exponential_decay",
    "join",
    "lambda_lr",
    "linear",
    "multiplicative",
    "multistep_decay",
    "one_cycle",
    "polynomial_decay",
    "step_decay",
    "swa_lr",
    "warmup_cosine_decay",
]
