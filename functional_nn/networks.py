"""Networks: a frozen pair of pure functions `(init, apply)` over a params pytree.

`mlp` and `dense` build networks of linear layers; `serial` chains networks and activations into
one; `interop.from_module` wraps any `torch.nn.Module`. Every network also carries a `check` that
rejects params or inputs that do not fit it, naming the layer and both shapes.

Model state and randomness (DESIGN, "Model state and randomness"), after haiku's
transform_with_state. A plain network is `apply(params, x) -> y`, and most networks stay exactly
that. A network with state (batch-norm running statistics) or randomness (dropout) says so by
having an `init_state`, and then its apply takes both, and the mode, explicitly:
    apply(params, x, *, state, train: bool, key) -> (y, new_state)
`init_state(dtype=None, device=None) -> state` makes the fresh state (a pytree; `{}` for a layer
with randomness and no state). In training, apply returns the new state (it never mutates the one
given); in eval (`train=False`) it uses the state and returns it unchanged, and dropout is off.
`key` is a key from `dropout.key`/`fold_in` (None is fine in eval); a trainer derives one per step
as `fold_in(key(seed), step)` (fit does; fit_ensemble folds in the model index too). `serial`
is stateful when any of its layers is: its state is a list with one entry per layer (`{}` for a
stateless one), and layer i gets the key `fold_in(key, i)`, so no two layers share a mask.

Why keys and not a `torch.Generator` or torch's global RNG: a key is a 0-d int64 tensor, data like
any other input, and a draw is a pure, counter-based function of it (`dropout.py`). So the same
(seed, step) gives bitwise the same mask whatever ran before, on any device; a step stays a pure
function that `torch.func.grad` differentiates, `vmap` batches (K models, K keys, K independent
masks: a generator is one mutable object that vmap cannot split) and `torch.compile` traces (no
host sync, no side effect on a global). A resumed fit continues bitwise, because the key of step t
depends on t alone, not on how many draws came before.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch
from torch import Tensor

from . import _provenance
from ._pytree import PyTree, tree_map
from .dropout import fold_in
from .init import as_generator, get_scheme
from .layers import Activation, get_activation, linear


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
        name: what `repr` shows, e.g. "mlp: 1000 -> 100 -> 10, relu"; not part of equality.
        init_state: None for a plain network; for one with state or randomness,
            `init_state(*, dtype=None, device=None) -> state`, and then apply is
            `apply(params, x, *, state, train, key) -> (y, new_state)` (see the module docstring).
    """

    # Network(init=...) stores the function as _make; the init method records what it returns.
    _make: Callable[..., PyTree] = attrs.field(alias="init", converter=lambda f: _unbound(f))
    apply: Callable[..., Any]
    check: Callable[[PyTree, Tensor], None] = _no_check
    name: str = attrs.field(default="", kw_only=True, eq=False)
    init_state: Callable[..., PyTree] | None = attrs.field(default=None, kw_only=True)

    @property
    def stateful(self) -> bool:
        """Whether apply takes state, train and key and returns (y, new_state)."""
        return self.init_state is not None

    def init(self, *args: Any, **kwargs: Any) -> PyTree:
        """Draws params (see the attribute); noted as this network's, so fit finds it."""
        return _provenance.record(self._make(*args, **kwargs), self)

    def __call__(self, params: PyTree, x: Tensor, **kwargs: Any) -> Any:
        return self.apply(params, x, **kwargs)

    def __repr__(self) -> str:
        return f"Network({_label(self)})"


def _unbound(init: Callable) -> Callable:
    """Another network's init method as the function it calls: Network(init=net.init, ...)
    then equals net where the rest does, and what it draws is noted once, as its own."""
    return init.__self__._make if getattr(init, "__func__", None) is Network.init else init


def mlp(
    sizes: Sequence[int],
    activation: str | Activation = "relu",
    bias: bool = True,
    init: str = "normal",
    output_activation: str | Activation | None = None,
) -> Network:
    """A multi-layer perceptron: linear layers with `activation` between them.

    Args:
        sizes: `(in, hidden..., out)`, at least two positive ints; the PyTorch tutorial's two-layer
            network is `mlp([1000, 100, 10], bias=False)`.
        activation: a name (see `layers.ACTIVATIONS`) or a callable Tensor -> Tensor, e.g.
            `functools.partial(layers.leaky_relu, negative_slope=0.2)`.
        bias: whether each linear layer has a bias.
        init: an initialiser scheme name (see `init.SCHEMES`); "normal" draws standard-normal
            weights and biases, as the PyTorch tutorial does; "torch" draws as `torch.nn.Linear`.
        output_activation: applied after the last layer; None (the default) for none.
    Returns:
        A Network whose params are a list with one dict per linear layer,
        `{"weight": (out, in), "bias": (out,)}`: the names and shapes of `torch.nn.Linear`.
    """
    sizes = _check_sizes(sizes)
    act = get_activation(activation)
    out_act = None if output_activation is None else get_activation(output_activation)
    layers = [dense(fan_in, fan_out, bias, init) for fan_in, fan_out in itertools.pairwise(sizes)]

    def init_fn(seed_or_generator, *, dtype: torch.dtype | None = None, device: Any = None):
        generator = as_generator(seed_or_generator)
        return [layer.init(generator, dtype=dtype, device=device) for layer in layers]

    def apply(params, x):
        *hidden, last = params
        for layer in hidden:
            x = act(linear(layer, x))
        x = linear(last, x)
        return x if out_act is None else out_act(x)

    def check(params, x):
        _check_list(params, len(layers), "layer dicts")
        for i, layer in enumerate(params):
            _check_linear(
                layer, _linear_shapes(sizes[i], sizes[i + 1], bias), f"layer {i}: params[{i}]"
            )
        _check_features(x, sizes[0])

    name = " -> ".join(map(str, sizes)) + f", {_callable_name(activation)}"
    name += "" if bias else ", bias=False"
    name += "" if output_activation is None else f", output={_callable_name(output_activation)}"
    return Network(init=init_fn, apply=apply, check=check, name=f"mlp: {name}")


def dense(in_features: int, out_features: int, bias: bool = True, init: str = "normal") -> Network:
    """One linear layer as a Network, to chain with `serial`.

    Args:
        in_features, out_features: positive ints.
        bias: whether the layer has a bias.
        init: an initialiser scheme name (see `init.SCHEMES`).
    Returns:
        A Network whose params are `{"weight": (out, in), "bias": (out,)}`, as `torch.nn.Linear`.
    """
    fan_in, fan_out = _check_sizes((in_features, out_features))
    weight_init, bias_init = get_scheme(init)
    shapes = _linear_shapes(fan_in, fan_out, bias)

    def init_fn(seed_or_generator, *, dtype: torch.dtype | None = None, device: Any = None):
        generator = as_generator(seed_or_generator)
        dtype = dtype or torch.get_default_dtype()
        # weight before bias: the order torch.nn.Linear draws them in.
        params = {"weight": weight_init(generator, shapes["weight"], fan_in, fan_out, dtype)}
        if bias:
            params["bias"] = bias_init(generator, shapes["bias"], fan_in, fan_out, dtype)
        return params if device is None else tree_map(lambda t: t.to(device), params)

    def check(params, x):
        _check_linear(params, shapes, "params")
        _check_features(x, fan_in)

    name = f"dense: {fan_in} -> {fan_out}" + ("" if bias else ", bias=False")
    return Network(init=init_fn, apply=linear, check=check, name=name)


def serial(*layers: Network | tuple | str | Activation) -> Network:
    """Chain layers into one Network: `apply` feeds each layer's output to the next.

    Args:
        layers: each a Network (e.g. `dense(3, 4)`, an `mlp`, another `serial`), an
            `(init, apply)` pair with Network's contract, or an activation (a name or a callable
            Tensor -> Tensor), which has no params.
    Returns:
        A Network whose params are a list with one entry per layer; `{}` for an activation.
        `init` draws the layers' params in order from one generator. When a layer is stateful
        (batch_norm, dropout), so is the result: its state is a list with one entry per layer
        (`{}` for a stateless one) and layer i draws from `fold_in(key, i)`.
    """
    if not layers:
        raise ValueError("serial needs at least one layer, got none.")
    nets = [_as_network(layer, i) for i, layer in enumerate(layers)]
    if any(net.stateful for net in nets):
        return _stateful_serial(nets)

    def init_fn(seed_or_generator, *, dtype: torch.dtype | None = None, device: Any = None):
        generator = as_generator(seed_or_generator)
        return [net.init(generator, dtype=dtype, device=device) for net in nets]

    def apply(params, x):
        for net, p in zip(nets, params):
            x = net.apply(p, x)
        return x

    def check(params, x):
        _check_list(params, len(nets), "entries, one per serial layer")
        for i, (net, p) in enumerate(zip(nets, params)):
            try:
                net.check(p, x)
                x = _meta_apply(net.apply, p, x)
            except ValueError as error:
                raise ValueError(f"serial layer {i}: {error}") from None
            if x is None:  # this layer runs ops with no meta kernel: later inputs are unknown
                return

    # a layer's name holding a comma is parenthesised, so the list's commas stay unambiguous
    names = [f"({_label(n)})" if "," in _label(n) else _label(n) for n in nets]
    return Network(init=init_fn, apply=apply, check=check, name=f"serial: [{', '.join(names)}]")


def _stateful_serial(nets: list[Network]) -> Network:
    """serial over layers some of which are stateful: state and keys threaded layer by layer."""
    plain = serial(*[eval_view(net) for net in nets])  # init, check and name of the chain

    def init_state(*, dtype: torch.dtype | None = None, device: Any = None):
        return [net.init_state(dtype=dtype, device=device) if net.stateful else {} for net in nets]

    def apply(params, x, *, state, train: bool, key=None):
        _check_list(state, len(nets), "states, one per serial layer (from init_state)")
        new_state = []
        for i, (net, p, s) in enumerate(zip(nets, params, state)):
            if not net.stateful:
                x = net.apply(p, x)
                new_state.append(s)
                continue
            x, s = net.apply(p, x, state=s, train=train, key=_fold(key, i))
            new_state.append(s)
        return x, new_state

    return Network(
        init=plain.init, apply=apply, check=plain.check, name=plain.name, init_state=init_state
    )


def _fold(key: Tensor | None, i: int) -> Tensor | None:
    return None if key is None else fold_in(key, i)


def eval_view(net: Network) -> Network:
    """A stateful network as a plain one, in eval mode with its fresh state: for shape checks
    (fit's checks run it on meta tensors); a plain network is returned as it is."""
    if not net.stateful:
        return net

    def apply(params, x):
        state = net.init_state(dtype=x.dtype, device=x.device)
        return net.apply(params, x, state=state, train=False, key=None)[0]

    return Network(init=net.init, apply=apply, check=net.check, name=net.name)


def eval_shape(
    model: Network | Callable[[PyTree, Tensor], Tensor], params: PyTree, x: Tensor
) -> torch.Size:
    """The shape of `model(params, x)`, traced on meta tensors: no arithmetic, no memory (it
    runs the model for real only if some op has no meta kernel).

    Args:
        model: a Network or any `apply(params, x)`.
        params, x: as `model` takes them, on any device.
    Returns:
        The output's shape, e.g. to check targets against with `losses.check`.
    """
    apply = model.apply if isinstance(model, Network) else model
    out = _meta_apply(apply, params, x)
    return apply(params, x).shape if out is None else out.shape


def _meta_apply(apply: Callable, params: PyTree, x: Tensor) -> Tensor | None:
    """apply(params, x) on meta copies, or None when an op has no meta kernel.

    A shape mismatch becomes a ValueError naming x's shape and torch's reason.
    """

    def meta(t):
        return t.to("meta") if isinstance(t, Tensor) else t

    try:
        return apply(tree_map(meta, params), meta(x))
    except NotImplementedError:
        return None
    except RuntimeError as error:
        raise ValueError(f"input of shape {tuple(x.shape)} does not fit: {error}") from None


def _as_network(layer: Any, index: int) -> Network:
    if isinstance(layer, Network):
        return layer
    if isinstance(layer, torch.nn.Module):
        raise TypeError(
            f"serial layer {index} is a torch.nn.Module ({type(layer).__name__}); wrap it first: "
            "net, params = interop.from_module(module), then pass net."
        )
    if isinstance(layer, tuple) and len(layer) == 2 and all(callable(f) for f in layer):
        return Network(init=layer[0], apply=layer[1])
    if isinstance(layer, str) or callable(layer):
        act = get_activation(layer)
        return Network(
            init=lambda *_, **__: {},
            apply=lambda params, x: act(x),
            check=_check_no_params,
            name=_callable_name(layer),
        )
    raise TypeError(
        f"serial layer {index} must be a Network, an (init, apply) pair or an activation, got "
        f"{type(layer).__name__}: {layer!r}."
    )


def _label(net: Network) -> str:
    return net.name or f"apply={_callable_name(net.apply)}"


def _callable_name(f: Any) -> str:
    """A short name for an activation or function: its name, a partial's keywords included."""
    if isinstance(f, str):
        return f
    if isinstance(f, functools.partial):
        args = [repr(a) for a in f.args] + [f"{k}={v!r}" for k, v in f.keywords.items()]
        return f"{_callable_name(f.func)}({', '.join(args)})"
    return getattr(f, "__qualname__", None) or repr(f)


def _check_no_params(params: PyTree, x: Tensor) -> None:
    if not isinstance(params, dict) or params:
        raise ValueError(
            f"an activation layer has no params, so its entry must be {{}}, got {params!r}."
        )


def _check_list(params: PyTree, length: int, entries: str) -> None:
    if isinstance(params, (list, tuple)) and len(params) == length:
        return
    given = f"a {type(params).__name__}" + (
        f" of {len(params)}" if isinstance(params, (list, tuple)) else ""
    )
    raise ValueError(
        f"params must be a list of {length} {entries}, got {given}; "
        "use the params made by this network's init."
    )


def _check_sizes(sizes: Sequence[int]) -> tuple[int, ...]:
    sizes = tuple(sizes)
    if len(sizes) < 2 or not all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes
    ):
        raise ValueError(
            f"sizes must be at least two positive ints (in, hidden..., out), got {sizes!r}."
        )
    return sizes


def _linear_shapes(fan_in: int, fan_out: int, bias: bool) -> dict[str, tuple[int, ...]]:
    return (
        {"weight": (fan_out, fan_in), "bias": (fan_out,)} if bias else {"weight": (fan_out, fan_in)}
    )


def _check_linear(layer: PyTree, expected: dict[str, tuple[int, ...]], where: str) -> None:
    """Raise ValueError, naming `where`, when the keys or shapes of `layer` differ from `expected`."""
    keys = sorted(layer) if isinstance(layer, dict) else None
    if keys != sorted(expected):
        raise ValueError(
            f"{where} has keys {keys}, expected {sorted(expected)}; "
            "check the bias setting of the network that made these params."
        )
    for key, shape in expected.items():
        if not isinstance(layer[key], Tensor):
            raise TypeError(
                f"{where}[{key!r}] must be a tensor of shape {shape}, got {type(layer[key]).__name__}."
            )
        given = tuple(layer[key].shape)
        if given != shape:
            raise ValueError(
                f"{where}[{key!r}] has shape {given}, expected {shape}; "
                "these params belong to a network of other sizes."
            )


def _check_features(x: Tensor, features: int) -> None:
    if x.ndim < 1 or x.shape[-1] != features:
        raise ValueError(
            f"x has shape {tuple(x.shape)}, but the first layer expects {features} features "
            f"in its last dimension: pass x of shape (N, {features}), or build the network for "
            f"{x.shape[-1] if x.ndim else 'x.shape[-1]'} input features."
        )
