"""Optimizers with torch.optim's names, defaults and numerics, composed from `transforms`.

Hyper-parameters are validated when the optimizer is built, as torch.optim does.
"""

from __future__ import annotations

from torch import Tensor

from .base import GradientTransformation, chain
from .transforms import add_decayed_weights, scale, scale_by_adam, scale_by_learning_rate, trace


def _check_non_negative(name: str, value: float, what: str) -> None:
    if isinstance(value, Tensor):
        # A tensor lr may be batched under vmap (fit_ensemble's per-model lrs), where a check would
        # branch on its value; whoever made the tensor checks it (fit_ensemble does, eagerly).
        return
    if not value >= 0.0:  # also rejects NaN
        raise ValueError(f"Invalid {what}: {value} ({name} must be >= 0).")


def _check_beta(index: int, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"Invalid beta parameter at index {index}: {value} (must be in [0, 1)).")


def _head(maximize: bool, weight_decay: float) -> list[GradientTransformation]:
    """The transforms torch.optim applies to the raw gradient first: negate, then add L2 decay."""
    head = [scale(-1.0)] if maximize else []
    if weight_decay != 0.0:
        head.append(add_decayed_weights(weight_decay))
    return head


def sgd(
    lr: float = 1e-3,
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
    """
    _check_non_negative("lr", lr, "learning rate")
    _check_non_negative("momentum", momentum, "momentum value")
    _check_non_negative("weight_decay", weight_decay, "weight_decay value")
    if nesterov and (momentum <= 0.0 or dampening != 0.0):
        raise ValueError(
            f"Nesterov momentum requires a momentum and zero dampening, got momentum={momentum}, "
            f"dampening={dampening}."
        )
    parts = _head(maximize, weight_decay)
    if momentum != 0.0:
        parts.append(trace(momentum, dampening, nesterov))
    return chain(*parts, scale_by_learning_rate(lr))


def adam(
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
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
    """
    _check_non_negative("lr", lr, "learning rate")
    _check_non_negative("eps", eps, "epsilon value")
    _check_beta(0, betas[0])
    _check_beta(1, betas[1])
    _check_non_negative("weight_decay", weight_decay, "weight_decay value")
    return chain(
        *_head(maximize, weight_decay),
        scale_by_adam(betas[0], betas[1], eps, amsgrad),
        scale_by_learning_rate(lr),
    )
