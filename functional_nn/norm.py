"""Normalisation layers: batch_norm, whose running statistics are explicit state, and layer_norm.

Model state is threaded functionally (DESIGN, "Model state and randomness"): `batch_norm` takes
the running statistics as an argument and returns the new ones, so nothing is mutated and nothing
is hidden in a module; the mode is the `train` argument, not a flag on an object. State is a dict
with torch.nn.BatchNorm's buffer names, so it moves to and from a module's state dict unchanged:
`{"running_mean": (C,), "running_var": (C,), "num_batches_tracked": () int64}`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

BatchNormState = dict[str, Tensor]


def batch_norm_state(
    num_features: int, dtype: torch.dtype | None = None, device=None
) -> BatchNormState:
    """Fresh running statistics, as a new torch.nn.BatchNorm's buffers: mean 0, variance 1.

    Returns:
        `{"running_mean": (C,) zeros, "running_var": (C,) ones, "num_batches_tracked": () 0}`.
    """
    dtype = dtype or torch.get_default_dtype()
    return {
        "running_mean": torch.zeros(num_features, dtype=dtype, device=device),
        "running_var": torch.ones(num_features, dtype=dtype, device=device),
        "num_batches_tracked": torch.zeros((), dtype=torch.long, device=device),
    }


def batch_norm(
    params: dict[str, Tensor],
    state: BatchNormState | None,
    x: Tensor,
    *,
    train: bool,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
) -> tuple[Tensor, BatchNormState | None]:
    """Batch normalisation (Ioffe and Szegedy 2015), as `torch.nn.BatchNorm1d/2d`.

    In training, x is normalised with its own mean and biased variance over every dim but C, and
    the running statistics move towards the batch's (torch's rule, with the unbiased variance):
        running_mean <- (1 - m) running_mean + m mean
        running_var  <- (1 - m) running_var + m var * n / (n - 1),   n = numel / C
    with m = momentum, or 1 / num_batches_tracked after the increment when momentum is None
    (a cumulative average). In eval, x is normalised with the running statistics and the state
    comes back unchanged. `state=None` is torch's `track_running_stats=False`: batch statistics
    in both modes, and None comes back.

    Args:
        params: `{"weight": (C,), "bias": (C,)}`, or `{}` without the affine part.
        state: running statistics (see `batch_norm_state`), or None.
        x: (N, C), (N, C, L) or (N, C, H, W).
        train: True for batch statistics and new running statistics.
        momentum, eps: torch's defaults.
    Returns:
        (y of x's shape, the new state).
    """
    if x.ndim < 2:
        raise ValueError(f"batch_norm: x must be (N, C, ...), got shape {tuple(x.shape)}.")
    dims = [0, *range(2, x.ndim)]
    shape = [1, -1] + [1] * (x.ndim - 2)  # broadcasts a (C,) vector over x
    if train or state is None:
        n = x.numel() // x.shape[1]
        if n <= 1:
            raise ValueError(
                f"batch_norm: training needs more than 1 value per channel, got x of shape "
                f"{tuple(x.shape)}; use a larger batch, or train=False."
            )
        mean = x.mean(dims)
        var = x.var(dims, correction=0)
    else:
        mean, var = state["running_mean"], state["running_var"]
    y = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + eps)
    if "weight" in params:
        y = y * params["weight"].reshape(shape)
    if "bias" in params:
        y = y + params["bias"].reshape(shape)
    if not train or state is None:
        return y, state
    count = state["num_batches_tracked"] + 1
    m = (1.0 / count).to(x.dtype) if momentum is None else momentum
    mean, unbiased = mean.detach(), var.detach() * (n / (n - 1))
    return y, {
        "running_mean": (1 - m) * state["running_mean"] + m * mean,
        "running_var": (1 - m) * state["running_var"] + m * unbiased,
        "num_batches_tracked": count,
    }


def layer_norm(
    params: dict[str, Tensor],
    x: Tensor,
    normalized_shape: tuple[int, ...] | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Layer normalisation (Ba et al. 2016) over the last dims, as `torch.nn.functional.layer_norm`.

    Args:
        params: `{"weight": S, "bias": S}` with S = normalized_shape, or `{}`.
        x: (..., *S).
        normalized_shape: S; by default the weight's shape.
        eps: added to the biased variance.
    Returns:
        x's shape.
    """
    weight, bias = params.get("weight"), params.get("bias")
    if normalized_shape is None:
        if weight is None:
            raise ValueError("layer_norm: without a weight, pass normalized_shape.")
        normalized_shape = tuple(weight.shape)
    return F.layer_norm(x, tuple(normalized_shape), weight, bias, eps)
