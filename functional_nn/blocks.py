"""Network-building layers beyond `dense`: each returns a Network to chain with `networks.serial`.

`blocks.conv2d(1, 8, 3)` is to `layers.conv2d(params, x)` what `torch.nn.Conv2d` is to
`torch.nn.functional.conv2d`: it holds the options and makes the params, with torch.nn's names,
shapes and (with init="torch") torch.nn's draws. A small CNN without torch.nn:
`serial(conv2d(1, 8, 3, padding=1), "relu", max_pool2d(2), flatten(), dense(8 * 14 * 14, 10))`.

`batch_norm` and `dropout` are stateful Networks (see `networks.py`): their apply is
`apply(params, x, *, state, train, key) -> (y, new_state)`, batch_norm's state its running
statistics (`norm.batch_norm_state`), dropout's `{}` and a key; `serial` threads both.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from . import dropout as _dropout
from . import layers, norm
from ._pytree import tree_map
from .init import as_generator, get_scheme
from .networks import Network, _check_linear


def _no_params(name: str):
    def check(params, x):
        if not isinstance(params, dict) or params:
            raise ValueError(f"{name} has no params, so its entry must be {{}}, got {params!r}.")

    return check


def _empty(*_, **__) -> dict:
    return {}


def _place(params: dict, device: Any) -> dict:
    return params if device is None else tree_map(lambda t: t.to(device), params)


def conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    bias: bool = True,
    init: str = "torch",
) -> Network:
    """A 2-d convolution as a Network, as `torch.nn.Conv2d` (zero padding).

    Args:
        in_channels, out_channels: positive ints, both divisible by groups.
        kernel_size, stride, padding, dilation, groups: as `layers.conv2d`.
        bias: whether the layer has a bias.
        init: an initialiser scheme (see `init.SCHEMES`); "torch" draws as torch.nn.Conv2d, with
            fan_in = in_channels / groups * kh * kw.
    Returns:
        A Network with params `{"weight": (out, in / groups, kh, kw), "bias": (out,)}`.
    """
    kh, kw = layers._pair(kernel_size, "kernel_size")
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if not isinstance(value, int) or value <= 0 or value % groups:
            raise ValueError(
                f"conv2d: {name} must be a positive int divisible by groups={groups}, got {value!r}."
            )
    weight_init, bias_init = get_scheme(init)
    shapes = {"weight": (out_channels, in_channels // groups, kh, kw)}
    if bias:
        shapes["bias"] = (out_channels,)
    fan_in, fan_out = in_channels // groups * kh * kw, out_channels * kh * kw
    options = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)

    def init_fn(seed_or_generator, *, dtype: torch.dtype | None = None, device: Any = None):
        generator = as_generator(seed_or_generator)
        dtype = dtype or torch.get_default_dtype()
        params = {"weight": weight_init(generator, shapes["weight"], fan_in, fan_out, dtype)}
        if bias:
            params["bias"] = bias_init(generator, shapes["bias"], fan_in, fan_out, dtype)
        return _place(params, device)

    def check(params, x):
        _check_linear(params, shapes, "params")
        if x.ndim not in (3, 4) or x.shape[-3] != in_channels:
            raise ValueError(
                f"x has shape {tuple(x.shape)}, but conv2d expects (N, {in_channels}, H, W)."
            )

    defaults = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}
    shown = "".join(f", {k}={v}" for k, v in options.items() if v != defaults[k])
    name = f"conv2d: {in_channels} -> {out_channels}, {kh}x{kw}{shown}"
    apply = functools.partial(layers.conv2d, **options)
    return Network(init=init_fn, apply=apply, check=check, name=name)


def max_pool2d(kernel_size, stride=None, padding=0, dilation=1) -> Network:
    """Max pooling as a Network with no params, as `torch.nn.MaxPool2d`; see `layers.max_pool2d`."""
    options = dict(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation)
    return Network(
        init=_empty,
        apply=lambda params, x: layers.max_pool2d(x, **options),
        check=_no_params("max_pool2d"),
        name=f"max_pool2d: {kernel_size}",
    )


def flatten(start_dim: int = 1, end_dim: int = -1) -> Network:
    """torch.flatten as a Network with no params, as `torch.nn.Flatten`: (N, ...) -> (N, prod)."""
    return Network(
        init=_empty,
        apply=lambda params, x: layers.flatten(x, start_dim, end_dim),
        check=_no_params("flatten"),
        name="flatten",
    )


def embedding(num_embeddings: int, embedding_dim: int, padding_idx: int | None = None) -> Network:
    """A lookup table as a Network, as `torch.nn.Embedding`: N(0, 1) rows, the padding row 0.

    Returns:
        A Network with params `{"weight": (num_embeddings, embedding_dim)}`, mapping integer
        indices of any shape to x.shape + (embedding_dim,).
    """
    shapes = {"weight": (num_embeddings, embedding_dim)}

    def init_fn(seed_or_generator, *, dtype: torch.dtype | None = None, device: Any = None):
        generator = as_generator(seed_or_generator)
        weight = torch.randn(shapes["weight"], generator=generator, dtype=dtype)
        if padding_idx is not None:
            weight[padding_idx] = 0.0  # a fresh tensor of ours: nobody else holds it
        return _place({"weight": weight}, device)

    def apply(params, x):
        return layers.embedding(params, x, padding_idx)

    check = lambda p, x: _check_linear(p, shapes, "params")
    name = f"embedding: {num_embeddings} x {embedding_dim}"
    return Network(init=init_fn, apply=apply, check=check, name=name)


def _affine(shape: tuple[int, ...], affine: bool):
    """init for a normalisation's weight (ones) and bias (zeros), as torch.nn; {} without."""

    def init_fn(seed_or_generator, *, dtype: torch.dtype | None = None, device: Any = None):
        as_generator(seed_or_generator)  # validates; draws nothing
        if not affine:
            return {}
        dtype = dtype or torch.get_default_dtype()
        return {
            "weight": torch.ones(shape, dtype=dtype, device=device),
            "bias": torch.zeros(shape, dtype=dtype, device=device),
        }

    shapes = {"weight": shape, "bias": shape} if affine else {}
    return init_fn, lambda params, x: _check_linear(params, shapes, "params")


def layer_norm(normalized_shape: int | tuple[int, ...], eps: float = 1e-5, affine: bool = True):
    """Layer normalisation over the last dims as a Network, as `torch.nn.LayerNorm`."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    init_fn, check = _affine(shape, affine)
    apply = lambda p, x: layers.layer_norm(p, x, shape, eps)
    return Network(init=init_fn, apply=apply, check=check, name=f"layer_norm: {shape}")


def batch_norm(
    num_features: int,
    eps: float = 1e-5,
    momentum: float | None = 0.1,
    affine: bool = True,
    track_running_stats: bool = True,
) -> Network:
    """Batch normalisation as a stateful Network, as torch.nn.BatchNorm1d/2d: batch statistics
    in training, which move the running statistics (see `norm.batch_norm`); the running
    statistics in eval. With track_running_stats=False, batch statistics in both and state None.

    Returns:
        A Network with params `{"weight": (C,), "bias": (C,)}` (`{}` without affine) and state
        `{"running_mean": (C,), "running_var": (C,), "num_batches_tracked": ()}`.
    """
    init_fn, check = _affine((num_features,), affine)

    def init_state(*, dtype: torch.dtype | None = None, device: Any = None):
        return norm.batch_norm_state(num_features, dtype, device) if track_running_stats else None

    def apply(params, x, *, state, train: bool, key=None):
        return norm.batch_norm(params, state, x, train=train, momentum=momentum, eps=eps)

    name = f"batch_norm: {num_features}"
    return Network(init=init_fn, apply=apply, check=check, name=name, init_state=init_state)


def dropout(p: float = 0.5) -> Network:
    """Inverted dropout as a stateful Network with no params and no state, as torch.nn.Dropout:
    in training, `dropout.dropout(x, p, key=key)`, so it needs the key apply is given; in eval, x.

    Returns:
        A Network with params `{}` and state `{}`.
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be a number in [0, 1], got {p!r}.")

    def apply(params, x, *, state, train: bool, key=None):
        if not train:
            return x, state
        if key is None:
            raise ValueError(
                "dropout in training needs a key: pass key=dropout.key(seed) (fit passes one "
                "per step), or train=False."
            )
        return _dropout.dropout(x, p, key=key, train=True), state

    return Network(
        init=_empty,
        apply=apply,
        check=_no_params("dropout"),
        name=f"dropout: p={p}",
        init_state=_empty,
    )
