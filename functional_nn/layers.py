"""Layers: pure functions of (params, x), and the activations (re-exported from activations.py).

Convention (every function here obeys it):
- a layer is `f(params, x, **options) -> y`, where `params` is a dict of tensors with the names
  and shapes of the matching `torch.nn` module (`linear`: `{"weight": (out, in), "bias": (out,)}`,
  `conv2d`: `{"weight": (out, in / groups, kh, kw), "bias": (out,)}`), and the options have
  torch.nn.functional's names and defaults;
- a layer with state (`norm.batch_norm`) takes it and returns the new one; a random layer
  (`dropout.dropout`) takes a key: see those modules;
- nothing here mutates its inputs or reads global state, so every function composes with
  `torch.func.grad`, `vmap` and `torch.compile`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .activations import (  # noqa: F401  (re-exported: layers.relu is activations.relu)
    ACTIVATIONS,
    SELU_ALPHA,
    SELU_SCALE,
    Activation,
    elu,
    gelu,
    get_activation,
    hardswish,
    identity,
    leaky_relu,
    log_softmax,
    logsigmoid,
    mish,
    relu,
    selu,
    sigmoid,
    silu,
    softmax,
    softplus,
    tanh,
)
from .dropout import dropout  # noqa: F401
from .norm import batch_norm, layer_norm  # noqa: F401

Pair = int | tuple[int, int]


def linear(params: dict[str, Tensor], x: Tensor) -> Tensor:
    """Affine map `x @ weight.T + bias`; the bias is optional.

    Args:
        params: `{"weight": (out, in)}`, plus `"bias": (out,)` when the layer has one.
        x: (..., in).
    Returns:
        (..., out).
    """
    return F.linear(x, params["weight"], params.get("bias"))


def conv2d(
    params: dict[str, Tensor],
    x: Tensor,
    stride: Pair = 1,
    padding: Pair | str = 0,
    dilation: Pair = 1,
    groups: int = 1,
) -> Tensor:
    """2-d cross-correlation, as `torch.nn.functional.conv2d` (zero padding).

    Args:
        params: `{"weight": (C_out, C_in / groups, kh, kw)}`, plus `"bias": (C_out,)`.
        x: (N, C_in, H, W) or (C_in, H, W).
        stride, padding, dilation: ints or (h, w) pairs; padding may be "valid" or "same".
        groups: C_in and C_out are both divisible by it.
    Returns:
        (N, C_out, H_out, W_out), H_out = floor((H + 2 ph - dh (kh - 1) - 1) / sh) + 1.
    """
    return F.conv2d(x, params["weight"], params.get("bias"), stride, padding, dilation, groups)


def max_pool2d(
    x: Tensor, kernel_size: Pair, stride: Pair | None = None, padding: Pair = 0, dilation: Pair = 1
) -> Tensor:
    """The maximum over each (kh, kw) window, as `torch.nn.functional.max_pool2d` (floor mode).

    At a tie the gradient goes to the first maximum of the window in row-major order: the window
    is unfolded and its `argmax` taken, whose first-index choice torch documents, so the choice is
    this function's, never a pooling kernel's. Padding is -inf, so it is never the maximum.

    Args:
        x: (N, C, H, W).
        kernel_size, stride (default: kernel_size), padding, dilation: ints or (h, w) pairs.
    Returns:
        (N, C, H_out, W_out), H_out = floor((H + 2 ph - dh (kh - 1) - 1) / sh) + 1.
    """
    kh, kw = _pair(kernel_size, "kernel_size")
    stride = (kh, kw) if stride is None else _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(
            f"max_pool2d: padding must be at most half the kernel size, got padding {(ph, pw)} "
            f"for kernel_size {(kh, kw)}."
        )
    if x.ndim != 4:
        raise ValueError(f"max_pool2d: x must be (N, C, H, W), got shape {tuple(x.shape)}.")
    n, c, h, w = x.shape
    padded = F.pad(x, (pw, pw, ph, ph), value=-torch.inf) if ph or pw else x
    dilation = _pair(dilation, "dilation")
    h_out = (h + 2 * ph - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    w_out = (w + 2 * pw - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    # (N * C, kh * kw, L): one column per window; channels folded into N so windows stay apart.
    cols = F.unfold(padded.reshape(n * c, 1, *padded.shape[2:]), (kh, kw), dilation, 0, stride)
    best = cols.gather(1, cols.argmax(dim=1, keepdim=True))
    return best.reshape(n, c, h_out, w_out)


def flatten(x: Tensor, start_dim: int = 1, end_dim: int = -1) -> Tensor:
    """x with dims start_dim..end_dim merged into one, as `torch.flatten` (the batch dim kept).

    Args:
        x: (N, d1, ..., dk) by default.
    Returns:
        (N, d1 * ... * dk) by default.
    """
    return torch.flatten(x, start_dim, end_dim)


def embedding(params: dict[str, Tensor], x: Tensor, padding_idx: int | None = None) -> Tensor:
    """Rows of `weight` looked up by index, as `torch.nn.functional.embedding`.

    Args:
        params: `{"weight": (num_embeddings, dim)}`.
        x: integer indices of any shape, each in [0, num_embeddings).
        padding_idx: a row whose gradient is always 0 (negative counts from the end), or None.
    Returns:
        x.shape + (dim,).
    """
    weight = params["weight"]
    if padding_idx is not None:
        if not -weight.shape[0] <= padding_idx < weight.shape[0]:
            raise ValueError(
                f"embedding: padding_idx must lie in [-{weight.shape[0]}, {weight.shape[0]}), "
                f"got {padding_idx}."
            )
        padding_idx %= weight.shape[0]
    return F.embedding(x, weight, padding_idx)


def _pair(value: Pair, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}.")
    return pair
