"""Metrics: `metric(pred, target) -> 0-d tensor`, pure functions, to watch beside the loss.

fit(..., val=(x_val, y_val), metrics={"accuracy": "accuracy"}) evaluates each on val, in eval
mode, at every evaluation (FitResult.val_metrics). A metric needs no gradient; it is a float
tensor in pred's dtype, so vmap (fit_ensemble) and torch.compile take it as they take a loss.
A metric is given by name (see METRICS) or as any callable of the same contract.

Ties: a class whose score equals the true class's counts as ranked above it, so constant
predictions (e.g. a network that has learned nothing) score 0, never 1; the result never
depends on which of equal scores a kernel picks.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

Metric = Callable[[Tensor, Tensor], Tensor]


def top_k_accuracy(pred: Tensor, target: Tensor, k: int = 5) -> Tensor:
    """The fraction of rows whose true class is among the k highest scores.

    Args:
        pred: (N, C) scores (logits or probabilities).
        target: (N,) integer class labels in 0..C-1.
        k: how many top classes count, >= 1.
    Returns:
        A 0-d tensor in pred's dtype, in [0, 1].
    """
    true = pred.gather(1, target.long()[:, None])  # (N, 1)
    # rank: the other classes scoring at least as high as the true one (a tie counts against)
    rank = (pred >= true).sum(1) - 1
    return (rank < k).to(pred.dtype).mean()


def accuracy(pred: Tensor, target: Tensor) -> Tensor:
    """The fraction of rows whose true class has the highest score: top_k_accuracy with k = 1.

    Args:
        pred: (N, C) scores; target: (N,) integer class labels in 0..C-1.
    Returns:
        A 0-d tensor in pred's dtype.
    """
    return top_k_accuracy(pred, target, k=1)


def binary_accuracy(pred: Tensor, target: Tensor) -> Tensor:
    """The fraction of logits on the side of 0 that the 0/1 target is on (pred > 0 for 1).

    Args:
        pred: (N, ...) logits; target: the same shape, 0/1 labels (floats or ints).
    Returns:
        A 0-d tensor in pred's dtype.
    """
    return ((pred > 0) == (target > 0.5)).to(pred.dtype).mean()


def mean_absolute_error(pred: Tensor, target: Tensor) -> Tensor:
    """mean |pred - target| over every element, as torch.nn.functional.l1_loss.

    Args:
        pred, target: tensors of one shape.
    Returns:
        A 0-d tensor.
    """
    return (pred - target).abs().mean()


def mean_squared_error(pred: Tensor, target: Tensor) -> Tensor:
    """mean (pred - target)^2 over every element, as torch.nn.functional.mse_loss.

    Args:
        pred, target: tensors of one shape.
    Returns:
        A 0-d tensor.
    """
    return (pred - target).square().mean()


def root_mean_squared_error(pred: Tensor, target: Tensor) -> Tensor:
    """sqrt(mean (pred - target)^2), in pred's units.

    Args:
        pred, target: tensors of one shape.
    Returns:
        A 0-d tensor.
    """
    return mean_squared_error(pred, target).sqrt()


METRICS: dict[str, Metric] = {
    "accuracy": accuracy,
    "binary_accuracy": binary_accuracy,
    "mean_absolute_error": mean_absolute_error,
    "mean_squared_error": mean_squared_error,
    "root_mean_squared_error": root_mean_squared_error,
    "top_k_accuracy": top_k_accuracy,
}


def get_metric(metric: str | Metric, name: str = "metric") -> Metric:
    """The metric named `metric`, or `metric` itself when callable; `name` is the argument's."""
    if callable(metric):
        return metric
    if isinstance(metric, str) and metric in METRICS:
        return METRICS[metric]
    raise (ValueError if isinstance(metric, str) else TypeError)(
        f"{name} must be a metric's name, one of {sorted(METRICS)}, or a callable "
        f"(pred, target) -> 0-d tensor, got {metric!r}."
    )


def check_metrics(metrics: object) -> tuple[tuple[str, Metric], ...]:
    """fit's metrics= checked: a dict of names to metrics (names or callables), as pairs."""
    if not isinstance(metrics, dict) or not all(isinstance(k, str) for k in metrics):
        raise TypeError(
            'metrics must be a dict of names to metrics, e.g. {"accuracy": "accuracy"} or '
            f"{{'acc': fnn.metrics.accuracy}}, got {metrics!r}."
        )
    return tuple((k, get_metric(m, f"metrics[{k!r}]")) for k, m in metrics.items())


def scoring(loss: Callable, metrics: tuple[tuple[str, Metric], ...]) -> Callable:
    """`loss` as the evaluators call it: with metrics, (pred, y) -> (loss, {name: value}) from
    one prediction; without, loss itself."""
    if not metrics:
        return loss
    return lambda pred, y: (loss(pred, y), {k: m(pred, y) for k, m in metrics})
