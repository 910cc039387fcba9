"""Networks: a frozen pair of pure functions `(init, apply)` over a params pytree."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import attrs
import torch
from torch import Tensor

from ._pytree import PyTree, tree_map
from .init import as_generator, get_scheme
from .layers import get_activation, linear


def _no_check(params: PyTree, x: Tensor) -> None:
    return None


@attrs.frozen
class Network:
    """A network as two pure functions.

    Attributes:
        init: `init(seed_or_generator, *, dtype=None, device=None) -> params`, deterministic.
        apply: `apply(params, x) -> y`; mutates nothing and reads no global state.
        check: `check(params, x) -> None`; raises ValueError, naming the layer and both shapes,
            when params or x do not fit the network. `fit` calls it once, before any work.
    """

    init: Callable[..., PyTree]
    apply: Callable[[PyTree, Tensor], Tensor]
    check: Callable[[PyTree, Tensor], None] = _no_check

    def __call__(self, params: PyTree, x: Tensor) -> Tensor:
        return self.apply(params, x)


def mlp(
    sizes: Sequence[int],
    activation: str | Callable[[Tensor], Tensor] = "relu",
    bias: bool = True,
    init: str = "normal",
) -> Network:
    """A multi-layer perceptron: linear layers with `activation` between them (not after the last).

    Args:
        sizes: `(in, hidden..., out)`, at least two positive ints; the seeds' net is
            `mlp([1000, 100, 10], bias=False)`.
        activation: a name (see `layers.ACTIVATIONS`) or a callable Tensor -> Tensor.
        bias: whether each linear layer has a bias.
        init: an initialiser scheme name (see `init.SCHEMES`); "normal" draws standard-normal
            weights and biases, as the seeds do.
    Returns:
        A Network whose params are a list with one dict per linear layer,
        `{"weight": (out, in), "bias": (out,)}`: the names and shapes of `torch.nn.Linear`.
    """
    sizes = _check_sizes(sizes)
    act = get_activation(activation)
    weight_init, bias_init = get_scheme(init)
    shapes = _layer_shapes(sizes, bias)

    def init_fn(seed_or_generator, *, dtype: torch.dtype | None = None, device: Any = None):
        generator = as_generator(seed_or_generator)
        dtype = dtype or torch.get_default_dtype()
        params = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            layer = {"weight": weight_init(generator, (fan_out, fan_in), fan_in, fan_out, dtype)}
            if bias:
                layer["bias"] = bias_init(generator, (fan_out,), fan_in, fan_out, dtype)
            params.append(layer)
        return params if device is None else tree_map(lambda t: t.to(device), params)

    def apply(params, x):
        *hidden, last = params
        for layer in hidden:
            x = act(linear(layer, x))
        return linear(last, x)

    def check(params, x):
        _check_layers(params, shapes)
        if x.ndim < 1 or x.shape[-1] != sizes[0]:
            raise ValueError(
                f"x has shape {tuple(x.shape)}, but the first layer expects {sizes[0]} features "
                f"in its last dimension: pass x of shape (N, {sizes[0]}), or build the mlp with "
                f"sizes[0] = {x.shape[-1] if x.ndim else 'x.shape[-1]'}."
            )

    return Network(init=init_fn, apply=apply, check=check)


def _check_sizes(sizes: Sequence[int]) -> tuple[int, ...]:
    sizes = tuple(sizes)
    if len(sizes) < 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        raise ValueError(
            f"sizes must be at least two positive ints (in, hidden..., out), got {sizes!r}."
        )
    return sizes


def _layer_shapes(sizes: tuple[int, ...], bias: bool) -> list[dict[str, tuple[int, ...]]]:
    shapes = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layer = {"weight": (fan_out, fan_in)}
        if bias:
            layer["bias"] = (fan_out,)
        shapes.append(layer)
    return shapes


def _check_layers(params: PyTree, shapes: list[dict[str, tuple[int, ...]]]) -> None:
    """Raise ValueError naming the first layer whose keys or shapes differ from `shapes`."""
    if not isinstance(params, (list, tuple)) or len(params) != len(shapes):
        given = f"a {type(params).__name__} of {len(params)}" if isinstance(params, (list, tuple)) else repr(type(params))
        raise ValueError(
            f"params must be a list of {len(shapes)} layer dicts, got {given}; "
            "use the params made by this network's init."
        )
    for i, (layer, expected) in enumerate(zip(params, shapes)):
        keys = sorted(layer) if isinstance(layer, dict) else None
        if keys != sorted(expected):
            raise ValueError(
                f"params[{i}] (layer {i}) has keys {keys}, expected {sorted(expected)}; "
                "check the bias setting of the network that made these params."
            )
        for key, shape in expected.items():
            given = tuple(layer[key].shape)
            if given != shape:
                raise ValueError(
                    f"params[{i}][{key!r}] (layer {i}) has shape {given}, expected {shape}; "
                    "these params belong to a network of other sizes."
                )
