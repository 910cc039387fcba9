"""Optimizers with torch.optim's names, defaults and numerics, composed from the transforms.

Each alias is `chain(head, direction, [decoupled decay], scale_by_learning_rate(lr))`, where the head
is what torch.optim does to the raw gradient first (negate when maximizing, then add L2 decay).
Hyper-parameters are validated when the optimizer is built, as torch.optim does, and more strictly:
numbers must be finite, flags bools. `lr` may be a number, a 0-d tensor (e.g. batched by vmap: one
learning rate per model) or a schedule. `betas` may be two numbers or, as torch.optim.Adam takes
them, two 1-element tensors, read once when the optimizer is built (the only host sync, never in
an update): the numerics are those of the same betas given as floats.
"""

from __future__ import annotations

import torch

from ._checks import flags, non_negative, number
from ._named import shown_as_call
from .adaptive import (
    scale_by_adam,
    scale_by_adamax,
    scale_by_nadam,
    scale_by_radam,
    scale_by_rms,
    scale_by_rss,
)
from .base import GradientTransformation, chain
from .transforms import (
    Schedule,
    add_decayed_weights,
    as_schedule,
    scale,
    scale_by_learning_rate,
    trace,
)

LearningRate = float | torch.Tensor | Schedule


Betas = tuple[float, float] | tuple[torch.Tensor, torch.Tensor]


def _betas(betas: Betas) -> tuple[float, float]:
    """betas as two floats in [0, 1), after torch.optim.Adam's checks (two numbers or two tensors)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(
            f"Invalid betas: {betas!r} (expected a pair (beta1, beta2), e.g. (0.9, 0.999))."
        )
    if isinstance(betas[0], torch.Tensor) != isinstance(betas[1], torch.Tensor):
        raise ValueError(
            f"betas must be either both floats or both Tensors (as in torch.optim.Adam), got "
            f"({type(betas[0]).__name__}, {type(betas[1]).__name__}); make both numbers, e.g. "
            f"(0.9, 0.999), or both tensors."
        )
    values = tuple(_beta_value(i, b) for i, b in enumerate(betas))
    for i, b in enumerate(values):
        number(f"betas[{i}]", b, "a number in [0, 1)", lambda v: 0.0 <= v < 1.0)
    return values[0], values[1]


def _beta_value(i: int, beta: float | torch.Tensor) -> float:
    """A tensor beta's value as a float (the arithmetic then is that of float betas)."""
    if not isinstance(beta, torch.Tensor):
        return beta
    if beta.numel() != 1 or not beta.is_floating_point():
        raise ValueError(
            f"Tensor betas[{i}] must be 1-element and floating, got shape {tuple(beta.shape)} and "
            f"dtype {beta.dtype}; e.g. torch.tensor(0.9)."
        )
    if beta.requires_grad:
        raise ValueError(
            f"Tensor betas[{i}] requires grad, but betas are read as numbers when the optimizer is "
            f"built, so no gradient would reach it; pass betas[{i}].detach() (a 0-d tensor lr can "
            "be differentiated through)."
        )
    return beta.item()


def _parts(maximize: bool, weight_decay: float, *direction, decoupled: bool = False) -> list:
    """torch.optim's order: negate the gradient when maximizing, add L2 decay, take the direction,
    then add the decoupled decay (AdamW's) when `decoupled`, before the learning rate scales all."""
    sign = [scale(-1.0)] if maximize else []
    decay = [add_decayed_weights(weight_decay)] if weight_decay != 0.0 else []
    return sign + ([] if decoupled else decay) + list(direction) + (decay if decoupled else [])


@shown_as_call
def sgd(
    lr: LearningRate = 1e-3,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """Stochastic gradient descent, as torch.optim.SGD.

    g_t <- -g_t if maximize;  g_t <- g_t + weight_decay * p;
    b_1 = g_1, b_t = momentum * b_{t-1} + (1 - dampening) * g_t  (when momentum != 0);
    g_t <- g_t + momentum * b_t if nesterov else b_t;  p <- p - lr * g_t.

    Args:
        lr, momentum, dampening, weight_decay, nesterov, maximize: as torch.optim.SGD's,
            with its defaults; lr may also be a 0-d tensor (one per model under vmap) or a
            schedule.
    Returns:
        A GradientTransformation whose state holds the momentum buffer (when momentum != 0) and
        the learning rate.
    """
    non_negative(momentum=momentum, weight_decay=weight_decay)
    number("dampening", dampening, "a number", lambda v: True)
    flags(nesterov=nesterov, maximize=maximize)
    if nesterov and (momentum <= 0.0 or dampening != 0.0):
        raise ValueError(
            f"Nesterov momentum requires momentum > 0 and dampening == 0, got momentum={momentum}, "
            f"dampening={dampening}; set them so, or nesterov=False."
        )
    direction = [trace(momentum, dampening, nesterov)] if momentum != 0.0 else []
    return chain(*_parts(maximize, weight_decay, *direction), scale_by_learning_rate(lr))


@shown_as_call
def rmsprop(
    lr: LearningRate = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """RMSprop, as torch.optim.RMSprop.

    g_t <- -g_t if maximize;  g_t <- g_t + weight_decay * p;
    v_t = alpha v_{t-1} + (1 - alpha) g_t^2;  d_t = g_t / (sqrt(v_t - m_t^2 if centered else v_t) + eps),
    m_t = lerp(m_{t-1}, g_t, 1 - alpha);  b_t = momentum b_{t-1} + d_t if momentum > 0 else d_t;
    p <- p - lr * b_t.

    Args:
        lr, alpha, eps, weight_decay, momentum, centered, maximize: as
            torch.optim.RMSprop's, with its defaults; lr may also be a 0-d tensor (one per
            model under vmap) or a schedule.
    Returns:
        A GradientTransformation whose state holds the mean square (and mean) of the grads, the
        momentum buffer and the learning rate.
    """
    non_negative(weight_decay=weight_decay, momentum=momentum)
    flags(maximize=maximize)
    direction = [scale_by_rms(alpha, eps, centered)] + ([trace(momentum)] if momentum > 0.0 else [])
    return chain(*_parts(maximize, weight_decay, *direction), scale_by_learning_rate(lr))


@shown_as_call
def adam(
    lr: LearningRate = 1e-3,
    betas: Betas = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """Adam, as torch.optim.Adam (weight_decay is L2 added to the gradient, not AdamW's).

    g_t <- -g_t if maximize;  g_t <- g_t + weight_decay * p;
    m_t = b1 m_{t-1} + (1 - b1) g_t;  v_t = b2 v_{t-1} + (1 - b2) g_t^2;
    v_t <- max(vmax_{t-1}, v_t) if amsgrad;
    p <- p - lr * m_t / (1 - b1^t) / (sqrt(v_t) / sqrt(1 - b2^t) + eps).

    Args:
        lr, betas, eps, weight_decay, amsgrad, maximize: as torch.optim.Adam's, with its
            defaults; lr may also be a 0-d tensor (one per model under vmap) or a schedule.
    Returns:
        A GradientTransformation whose state holds the step count and both moments (and their
        max with amsgrad) and the learning rate.
    """
    b1, b2 = _betas(betas)
    non_negative(weight_decay=weight_decay)
    flags(maximize=maximize)
    direction = scale_by_adam(b1, b2, eps, amsgrad)
    return chain(*_parts(maximize, weight_decay, direction), scale_by_learning_rate(lr))


@shown_as_call
def adamw(
    lr: LearningRate = 1e-3,
    betas: Betas = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    amsgrad: bool = False,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """AdamW (Loshchilov & Hutter 2019), as torch.optim.AdamW: decay decoupled from the gradient.

    d_t = Adam's direction of (-g_t if maximize else g_t), without weight decay;
    p <- p - lr * (d_t + weight_decay * p)   (torch: p <- p (1 - lr weight_decay) - lr d_t).

    Args:
        lr, betas, eps, weight_decay, amsgrad, maximize: as torch.optim.AdamW's, with its
            defaults; lr may also be a 0-d tensor (one per model under vmap) or a schedule.
    Returns:
        A GradientTransformation whose state holds the step count and both moments (and their
        max with amsgrad) and the learning rate.
    """
    b1, b2 = _betas(betas)
    non_negative(weight_decay=weight_decay)
    flags(maximize=maximize)
    direction = scale_by_adam(b1, b2, eps, amsgrad)
    return chain(
        *_parts(maximize, weight_decay, direction, decoupled=True), scale_by_learning_rate(lr)
    )


@shown_as_call
def adagrad(
    lr: LearningRate = 1e-2,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """Adagrad, as torch.optim.Adagrad.

    g_t <- -g_t if maximize;  g_t <- g_t + weight_decay * p;  s_t = s_{t-1} + g_t^2,
    s_0 = initial_accumulator_value;  p <- p - lr / (1 + (t - 1) lr_decay) * g_t / (sqrt(s_t) + eps).
    The decayed rate is the optimizer's learning rate: `current_lr` reports it.

    Args:
        lr, lr_decay, weight_decay, initial_accumulator_value, eps, maximize: as
            torch.optim.Adagrad's, with its defaults; lr may also be a 0-d tensor (one per
            model under vmap) or a schedule.
    Returns:
        A GradientTransformation whose state holds the sum of squared grads and the learning
        rate.
    """
    non_negative(lr_decay=lr_decay, weight_decay=weight_decay)
    flags(maximize=maximize)
    direction = scale_by_rss(initial_accumulator_value, eps)
    if lr_decay != 0.0:
        lr = _inverse_time_decay(as_schedule(lr), lr_decay)
    return chain(*_parts(maximize, weight_decay, direction), scale_by_learning_rate(lr))


def _inverse_time_decay(schedule: Schedule, lr_decay: float) -> Schedule:
    """count -> schedule(count) / (1 + count * lr_decay), rounded as torch's Python floats."""
    return lambda count: schedule(count) / (1.0 + count.to(torch.float64) * lr_decay)


@shown_as_call
def adamax(
    lr: LearningRate = 2e-3,
    betas: Betas = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """Adamax, as torch.optim.Adamax.

    g_t <- -g_t if maximize;  g_t <- g_t + weight_decay * p;
    m_t = lerp(m_{t-1}, g_t, 1 - b1);  u_t = max(b2 u_{t-1}, |g_t| + eps);
    p <- p - lr / (1 - b1^t) * m_t / u_t.

    Args:
        lr, betas, eps, weight_decay, maximize: as torch.optim.Adamax's, with its defaults;
            lr may also be a 0-d tensor (one per model under vmap) or a schedule.
    Returns:
        A GradientTransformation whose state holds the step count, the first moment and the
        infinity norm and the learning rate.
    """
    b1, b2 = _betas(betas)
    non_negative(weight_decay=weight_decay)
    flags(maximize=maximize)
    direction = scale_by_adamax(b1, b2, eps)
    return chain(*_parts(maximize, weight_decay, direction), scale_by_learning_rate(lr))


@shown_as_call
def nadam(
    lr: LearningRate = 2e-3,
    betas: Betas = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum_decay: float = 4e-3,
    decoupled_weight_decay: bool = False,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """NAdam, as torch.optim.NAdam (NAdamW with decoupled_weight_decay=True).

    g_t <- -g_t if maximize;  g_t <- g_t + weight_decay * p unless decoupled;
    d_t = NAdam's direction (see `scale_by_nadam`);
    p <- p - lr * (d_t + weight_decay * p if decoupled else d_t).

    Args:
        lr, betas, eps, weight_decay, momentum_decay, decoupled_weight_decay, maximize: as
            torch.optim.NAdam's, with its defaults; lr may also be a 0-d tensor (one per
            model under vmap) or a schedule.
    Returns:
        A GradientTransformation whose state holds the step count, the momentum product and both
        moments and the learning rate.
    """
    b1, b2 = _betas(betas)
    non_negative(weight_decay=weight_decay)
    flags(decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
    direction = scale_by_nadam(b1, b2, eps, momentum_decay)
    parts = _parts(maximize, weight_decay, direction, decoupled=decoupled_weight_decay)
    return chain(*parts, scale_by_learning_rate(lr))


@shown_as_call
def radam(
    lr: LearningRate = 1e-3,
    betas: Betas = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """RAdam, as torch.optim.RAdam (RAdamW with decoupled_weight_decay=True).

    g_t <- -g_t if maximize;  g_t <- g_t + weight_decay * p unless decoupled;
    d_t = RAdam's rectified direction (see `scale_by_radam`);
    p <- p - lr * (d_t + weight_decay * p if decoupled else d_t).

    Args:
        lr, betas, eps, weight_decay, decoupled_weight_decay, maximize: as
            torch.optim.RAdam's, with its defaults; lr may also be a 0-d tensor (one per
            model under vmap) or a schedule.
    Returns:
        A GradientTransformation whose state holds the step count and both moments and the
        learning rate.
    """
    b1, b2 = _betas(betas)
    non_negative(weight_decay=weight_decay)
    flags(decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
    direction = scale_by_radam(b1, b2, eps)
    parts = _parts(maximize, weight_decay, direction, decoupled=decoupled_weight_decay)
    return chain(*parts, scale_by_learning_rate(lr))
