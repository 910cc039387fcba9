"""The rest of torch.optim.lr_scheduler as schedules `count -> lr` (see `schedules`, which
re-exports these): each equals its torch class's lr after `count` calls of `scheduler.step()`,
torch's recursive updates written in closed form, so they agree to rounding.

LambdaLR `lambda_lr`, MultiplicativeLR `multiplicative`, MultiStepLR `multistep_decay`, ConstantLR
`constant_factor`, PolynomialLR `polynomial_decay`, ChainedScheduler `chained`, CyclicLR `cyclic`,
OneCycleLR `one_cycle`, CosineAnnealingWarmRestarts `cosine_warm_restarts`, SWALR `swa_lr`.
ReduceLROnPlateau reads the loss, so it is a transform: `wrappers.reduce_on_plateau`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ._checks import integer, number
from .schedules import Schedule, _as_count, _check_value, _steps


def lambda_lr(init_value: float, lr_lambda: Callable) -> Schedule:
    """lr_t = init_value * lr_lambda(t): torch's LambdaLR.

    Args:
        init_value: the optimizer's lr.
        lr_lambda: `lr_lambda(t) -> factor`, t the count as a 0-d float64 tensor (so that
            `0.98 ** t` is float64 too, where an int64 tensor would give float32); tensor ops
            (torch.where for a branch) keep it free of host syncs.
    """
    _check_value("init_value", init_value)
    _callable("lr_lambda", lr_lambda)
    return lambda count: init_value * torch.as_tensor(lr_lambda(_steps(count)), dtype=torch.float64)


def multiplicative(init_value: float, lr_lambda: Callable[[int], float]) -> Schedule:
    """lr_t = init_value * prod_{k=1..t} lr_lambda(k): torch's MultiplicativeLR.

    The product is over Python ints, as torch calls lr_lambda, so this reads the count (a host
    sync, unlike the other schedules); the prefix products are cached, so a step costs O(1).
    """
    _check_value("init_value", init_value)
    _callable("lr_lambda", lr_lambda)
    products = [init_value]  # a cache of a pure function of the count, not state

    def schedule(count):
        count = _as_count(count)
        t = int(count)
        while len(products) <= t:  # torch's op order: lr = lr * lambda(epoch), in Python floats
            products.append(products[-1] * lr_lambda(len(products)))
        return torch.tensor(products[t], dtype=torch.float64, device=count.device)

    return schedule


def multistep_decay(init_value: float, milestones: Sequence[int], gamma: float = 0.1) -> Schedule:
    """lr_t = init_value * gamma^(number of milestones <= t): torch's MultiStepLR."""
    _check_value("init_value", init_value)
    _check_value("gamma", gamma)
    for i, m in enumerate(milestones):
        integer(f"milestones[{i}]", m, 0)
    marks = sorted(milestones)  # torch counts a repeated milestone twice, as this does

    def schedule(count):
        count = _as_count(count)
        passed = sum(
            ((count >= m).to(torch.float64) for m in marks), torch.zeros_like(_steps(count))
        )
        return init_value * torch.pow(gamma, passed)

    return schedule


def constant_factor(init_value: float, factor: float = 1.0 / 3, total_iters: int = 5) -> Schedule:
    """lr_t = init_value * factor for t < total_iters, init_value after: torch's ConstantLR."""
    _check_value("init_value", init_value)
    number("factor", factor, "a number in [0, 1]", lambda v: 0.0 <= v <= 1.0)
    integer("total_iters", total_iters, 0)
    return lambda count: torch.where(
        _as_count(count) < total_iters,
        init_value * factor,
        torch.full_like(_steps(count), init_value),
    )


def polynomial_decay(init_value: float, total_iters: int = 5, power: float = 1.0) -> Schedule:
    """lr_t = init_value * (1 - min(t, T) / T)^power, T = total_iters: torch's PolynomialLR."""
    _check_value("init_value", init_value)
    _check_value("power", power)
    integer("total_iters", total_iters, 1)

    def schedule(count):
        t = torch.clamp(_steps(count), max=float(total_iters))
        return init_value * torch.pow(1.0 - t / total_iters, power)

    return schedule


def chained(schedules: Sequence[Schedule], init_value: float) -> Schedule:
    """lr_t = init_value * prod_i schedules[i](t) / init_value: torch's ChainedScheduler, each
    schedule built with the same init_value (the optimizer's lr)."""
    number("init_value", init_value, "a number > 0", lambda v: 0.0 < v < math.inf)
    schedules = list(schedules)
    if not schedules:
        raise ValueError("chained needs at least one schedule.")
    for i, s in enumerate(schedules):
        _callable(f"schedules[{i}]", s)

    def schedule(count):
        lr = torch.full_like(_steps(count), init_value)
        for s in schedules:
            lr = lr * (s(count) / init_value)
        return lr

    return schedule


def cyclic(
    base_lr: float,
    max_lr: float,
    step_size_up: int = 2000,
    step_size_down: int | None = None,
    mode: str = "triangular",
    gamma: float = 1.0,
    scale_fn: Callable | None = None,
    scale_mode: str = "cycle",
) -> Schedule:
    """torch's CyclicLR (Smith 2017), its learning rate only (the momentum cycling is left out).

    cycle = floor(1 + t / S), S = up + down;  x = 1 + t / S - cycle;
    h = x / r if x <= r else (x - 1) / (r - 1), r = up / S;
    lr_t = base_lr + (max_lr - base_lr) h scale(cycle or t): scale 1 (triangular), 2^-(cycle - 1)
    (triangular2), gamma^t (exp_range), or scale_fn with scale_mode "cycle" / "iterations".
    """
    _check_value("base_lr", base_lr)
    _check_value("max_lr", max_lr)
    integer("step_size_up", step_size_up, 1)
    down = step_size_up if step_size_down is None else step_size_down
    integer("step_size_down", down, 0)
    if scale_fn is None:
        fns = {
            "triangular": (lambda x: torch.ones_like(x), "cycle"),
            "triangular2": (lambda x: 1 / torch.pow(2.0, x - 1), "cycle"),
            "exp_range": (lambda x: torch.pow(gamma, x), "iterations"),
        }
        if mode not in fns:
            raise ValueError(f"mode must be one of {sorted(fns)} (or give scale_fn), got {mode!r}.")
        scale_fn, scale_mode = fns[mode]
    elif scale_mode not in ("cycle", "iterations"):
        raise ValueError(f'scale_mode must be "cycle" or "iterations", got {scale_mode!r}.')
    total = float(step_size_up + down)
    ratio = step_size_up / total

    def schedule(count):
        t = _steps(count)
        cycle = torch.floor(1 + t / total)
        x = 1.0 + t / total - cycle
        height = (max_lr - base_lr) * torch.where(x <= ratio, x / ratio, (x - 1) / (ratio - 1))
        return base_lr + height * scale_fn(cycle if scale_mode == "cycle" else t)

    return schedule


def one_cycle(
    max_lr: float,
    total_steps: int,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    three_phase: bool = False,
) -> Schedule:
    """torch's OneCycleLR (Smith & Topin 2018), its learning rate only (no momentum cycling).

    From max_lr / div_factor up to max_lr by step pct_start T - 1, then down to
    max_lr / div_factor / final_div_factor at T - 1 (three_phase: back to max_lr / div_factor at
    2 pct_start T - 2 first), each phase annealed by cos ((1 + cos(pi p)) / 2) or linearly.
    Past T - 1 the last phase's formula continues (torch raises past T).
    """
    _check_value("max_lr", max_lr)
    integer("total_steps", total_steps, 1)
    number("pct_start", pct_start, "a number in [0, 1]", lambda v: 0.0 <= v <= 1.0)
    if anneal_strategy not in ("cos", "linear"):
        raise ValueError(f'anneal_strategy must be "cos" or "linear", got {anneal_strategy!r}.')
    initial = max_lr / div_factor
    low = initial / final_div_factor
    up = float(pct_start * total_steps) - 1
    if three_phase:
        phases = [
            (up, initial, max_lr),
            (2 * up, max_lr, initial),
            (total_steps - 1.0, initial, low),
        ]
    else:
        phases = [(up, initial, max_lr), (total_steps - 1.0, max_lr, low)]

    def anneal(start, end, pct):
        if anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (torch.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def schedule(count):
        t = _steps(count)
        lr, begins = None, [0.0] + [p[0] for p in phases[:-1]]
        # from the last phase back, so the first phase whose end holds t wins, as in torch
        for (end_step, start, end), begin in reversed(list(zip(phases, begins))):
            value = anneal(start, end, (t - begin) / (end_step - begin))
            lr = value if lr is None else torch.where(t <= end_step, value, lr)
        return lr

    return schedule


def cosine_warm_restarts(
    init_value: float, T_0: int, T_mult: int = 1, eta_min: float = 0.0
) -> Schedule:
    """torch's CosineAnnealingWarmRestarts (SGDR, Loshchilov & Hutter 2017), stepped once a step.

    lr_t = eta_min + (init_value - eta_min) (1 + cos(pi T_cur / T_i)) / 2, where the i-th period
    has length T_i = T_0 T_mult^i and T_cur counts the steps since its start.
    """
    _check_value("init_value", init_value)
    _check_value("eta_min", eta_min)
    integer("T_0", T_0, 1)
    integer("T_mult", T_mult, 1)
    # period starts, exact ints, up to where no int64 count reaches
    starts, length = [0], T_0
    while T_mult > 1 and starts[-1] + length < 2**62:
        starts.append(starts[-1] + length)
        length *= T_mult

    def schedule(count):
        count = _as_count(count)
        if T_mult == 1:
            t_cur, t_i = count % T_0, torch.full_like(_steps(count), float(T_0))
        else:
            bounds = torch.tensor(starts[1:], dtype=torch.int64, device=count.device)
            n = (count >= bounds).sum()
            t_cur = count - torch.tensor(starts, device=count.device)[n]  # exact, in int64
            t_i = T_0 * torch.pow(float(T_mult), n.to(torch.float64))
        t_cur = t_cur.to(torch.float64)  # an int64 tensor times math.pi would be float32
        return eta_min + (init_value - eta_min) * (1 + torch.cos(math.pi * t_cur / t_i)) / 2

    return schedule


def swa_lr(
    init_value: float, swa_lr: float, anneal_epochs: int = 10, anneal_strategy: str = "cos"
) -> Schedule:
    """torch.optim.swa_utils.SWALR: from init_value to swa_lr over anneal_epochs steps, then swa_lr.

    lr_t = init_value + (swa_lr - init_value) a(min(1, t / max(1, E))), a(u) = (1 - cos(pi u)) / 2
    (cos) or u (linear); with E = 0, swa_lr from the start.
    """
    _check_value("init_value", init_value)
    _check_value("swa_lr", swa_lr)
    integer("anneal_epochs", anneal_epochs, 0)
    if anneal_strategy not in ("cos", "linear"):
        raise ValueError(f'anneal_strategy must be "cos" or "linear", got {anneal_strategy!r}.')

    def schedule(count):
        t = _steps(count)
        u = torch.clamp(
            torch.clamp(t, min=1.0) if anneal_epochs == 0 else t / anneal_epochs, max=1.0
        )
        a = (1 - torch.cos(math.pi * u)) / 2 if anneal_strategy == "cos" else u
        return swa_lr * a + init_value * (1 - a)

    return schedule


def _callable(name: str, fn) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be callable, got {type(fn).__name__}: {fn!r}.")
