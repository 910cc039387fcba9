"""Moving between torch.nn and functional_nn.

- `from_module(module) -> (net, params)`: any `torch.nn.Module` as a Network, its params a dict
  keyed as `module.named_parameters()`; `to_module(module, params)` loads them back, all or
  nothing: a bad value raises before any parameter is overwritten.
- `mlp_to_state_dict` / `mlp_from_state_dict`: mlp params as the state dict of the equivalent
  `nn.Sequential(nn.Linear, activation, nn.Linear, ...)`, and back.

Buffers (batch-norm running statistics, ...) are not params: nothing differentiates or optimizes
them. A module with buffers or with torch.nn's random layers (dropout), or any module given
`fork_rng=True`, becomes a stateful Network (see networks.py): its buffers are the model state,
`apply(params, x, *, state, train, key) -> (y, new_state)` runs `torch.func.functional_call` on
clones of the state's tensors (so the module's in-place updates, e.g. BatchNorm's running
statistics in train mode, land on tensors that only the new state holds: neither the caller's
module nor the state passed in ever changes), and train/eval is that argument: apply runs a
private copy of the module set to that mode (one per mode, with meta tensors in place of its
parameters and buffers, so they cost no tensor memory), so the module's own `.training` flag is
neither read nor changed.
"""

from __future__ import annotations

import contextlib
import copy
import re
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from . import _provenance
from . import dropout as _dropout
from .init import as_generator
from .networks import Network, _meta_apply, eval_view


def from_module(module: nn.Module, *, fork_rng: bool = False) -> tuple[Network, dict[str, Tensor]]:
    """A Network that runs `module` functionally, and a copy of its params.

    Without buffers or random submodules, `apply(params, x)` is
    `torch.func.functional_call(module, params, (x,))`: the module's code with these params. With
    them, the network is stateful (see the module docstring): `init_state(dtype=, device=)`
    gives copies of the buffers (floating ones in dtype), and `apply(params, x, *, state, train,
    key)` runs it in that mode. Its random layers draw from `key`, never from torch's RNG: in the
    private copies apply runs, torch.nn's Dropout, Dropout1d/2d/3d, AlphaDropout,
    FeatureAlphaDropout and RReLU are made keyed: the same function with a mask from
    `dropout`'s keyed functions (the i-th of them from fold_in(key, i)), so they vmap to one draw
    per model (fit_ensemble), compile, and give the same draw on any device. Any other of torch's
    random ops (torch.randn in a forward, attention or rnn dropout > 0) cannot be keyed: `check`
    (which fit runs before any work) finds it in a training-mode run on meta tensors and raises,
    unless `fork_rng=True`: then, in training, the module runs under a fork of torch's RNG seeded
    from `key` (`torch.random.fork_rng`), so the draw is the key's and torch's RNG is put back.
    Reading the seed is a host sync, which compile and vmap cannot do: such a network trains in
    fit without compile only (not fit_ensemble), and says so when run there.
    `init(seed)` draws fresh params by calling each submodule's `reset_parameters()` on a CPU
    copy, in the module's dtype, with torch's CPU generator seeded from `seed`: seed s gives what
    building the module after `torch.manual_seed(s)` gives.

    Args:
        module: any `torch.nn.Module`; left unchanged.
        fork_rng: run torch's random ops that are not keyed under a key-seeded fork of torch's
            RNG (eager only), instead of refusing them.
    Returns:
        (Network, params): params is `{name: tensor}` for each of `module.named_parameters()`,
        detached copies.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}.")
    params = {name: p.detach().clone() for name, p in module.named_parameters()}
    buffers = {name: b.detach().clone() for name, b in module.named_buffers()}
    shapes = {name: tuple(p.shape) for name, p in params.items()}
    # any torch.nn random layer (keyable or a subclass with its own forward) makes it stateful
    random = fork_rng or any(isinstance(m, _RANDOM) for m in module.modules())

    def init(seed_or_generator, *, dtype: torch.dtype | None = None, device: Any = None):
        drawn = _reset_copy(module, seed_or_generator).named_parameters()
        return {name: p.detach().to(dtype=dtype or p.dtype, device=device) for name, p in drawn}

    def check(params, x):
        _check_params(params, shapes, type(module).__name__)
        try:
            _meta_apply(eval_view(net).apply, params, x)
            if not fork_rng:
                _refuse_unkeyed_random(_in_training(net), params, x)
        except ValueError as error:
            raise ValueError(f"{type(module).__name__}: {error}") from None

    name = f"from_module: {type(module).__name__}"
    if not buffers and not random:
        apply = lambda params, x: torch.func.functional_call(module, params, (x,))
        net = Network(init=init, apply=apply, check=check, name=name)
        return net, _provenance.record(params, net)
    skeleton, keyed = _skeleton(module)
    modes = {mode: copy.deepcopy(skeleton).train(mode) for mode in (True, False)}

    def init_state(*, dtype: torch.dtype | None = None, device: Any = None):
        return {name: _like(b, dtype, device) for name, b in buffers.items()}

    def apply(params, x, *, state, train: bool, key=None):
        fresh = {name: t.clone() for name, t in state.items()}  # the module updates these in place
        keys = {}
        if train and keyed:
            if key is None:
                raise ValueError(
                    f"{type(module).__name__} has random layers: in training it needs a key: "
                    "pass key=dropout.key(seed) (fit passes one per step), or train=False."
                )
            keys = {_join(path, "key"): _dropout.fold_in(key, i) for i, path in enumerate(keyed)}
            for path in keyed:
                modes[True].get_submodule(path).calls = 0
        with _seeded_fork(key if train and fork_rng else None, x.device):
            y = torch.func.functional_call(modes[bool(train)], (params, fresh, keys), (x,))
        return y, fresh

    net = Network(init=init, apply=apply, check=check, name=name, init_state=init_state)
    return net, _provenance.record(params, net)


# torch.nn's modules that draw random numbers in training, each run keyed by _Keyed (unless a
# subclass overrides forward: its own code then runs, and check refuses its random ops).
_RANDOM = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
    nn.RReLU,
)


class _Keyed:
    """Mixed into a private copy of a torch.nn random module (its class becomes a subclass of
    this and its own class, so its attributes, isinstance and hooks stay): the same computation,
    drawn from the `key` buffer that apply hands functional_call (fold_in(step key, i) for the
    i-th random module), so it is pure, vmaps to one draw per model and compiles. A module called
    n times in one forward draws its n-th call from fold_in(key, n), as torch draws anew."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)  # torch's own eval (the identity, or rrelu's mean slope)
        key = self.key if self.calls == 0 else _dropout.fold_in(self.key, self.calls)
        self.calls += 1  # apply resets it to 0 before each call
        if isinstance(self, nn.RReLU):
            return _dropout.rrelu(x, self.lower, self.upper, key=key, train=True)
        alpha = isinstance(self, (nn.AlphaDropout, nn.FeatureAlphaDropout))
        draw = _dropout.alpha_dropout if alpha else _dropout.dropout
        return draw(x, self.p, key=key, train=True, noise_shape=_noise_shape(self, x))


_KEYED_CLASSES: dict[type, type] = {}


def _make_keyed(m: nn.Module) -> None:
    """Turns m (a private copy) into its keyed version in place."""
    cls = type(m)
    if cls not in _KEYED_CLASSES:
        _KEYED_CLASSES[cls] = type(f"Keyed{cls.__name__}", (_Keyed, cls), {})
    m.__class__ = _KEYED_CLASSES[cls]
    m.register_buffer("key", torch.zeros((), dtype=torch.long, device="meta"), persistent=False)
    m.calls = 0


def _noise_shape(m: nn.Module, x: Tensor) -> tuple[int, ...]:
    """The shape of torch's mask for m: x's for Dropout and AlphaDropout; one draw per (sample,
    channel), the first two dims, for the feature dropouts, as ATen's feature noise; torch's
    Dropout1d (2-d input) and Dropout3d (any but 5-d) add a batch dim first: one per channel."""
    if isinstance(m, (nn.Dropout, nn.AlphaDropout)):
        return tuple(x.shape)
    if isinstance(m, nn.Dropout1d) and x.dim() not in (2, 3):
        raise RuntimeError(f"dropout1d: Expected 2D or 3D input, but received a {x.dim()}D input.")
    unbatched = (isinstance(m, nn.Dropout1d) and x.dim() == 2) or (
        isinstance(m, nn.Dropout3d) and x.dim() != 5
    )
    if x.dim() < (1 if unbatched else 2):
        raise RuntimeError("Feature dropout requires at least 2 dimensions in the input")
    lead = 1 if unbatched else 2
    return tuple(x.shape[:lead]) + (1,) * (x.dim() - lead)


def _keyable(m: nn.Module) -> bool:
    """m is one of _RANDOM running torch.nn's own forward."""
    return any(isinstance(m, cls) and type(m).forward is cls.forward for cls in _RANDOM)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _skeleton(module: nn.Module) -> tuple[nn.Module, list[str]]:
    """A deep copy of module whose parameters and buffers are meta tensors (shapes, no data):
    apply hands functional_call every one of them, so the copies it runs hold no tensor memory.
    torch.nn's random modules in it become keyed (_Keyed); returns their paths too."""
    memo: dict[int, Any] = {}
    for t in [*module.parameters(), *module.buffers()]:
        meta = t.detach().to("meta")
        memo[id(t)] = nn.Parameter(meta, t.requires_grad) if isinstance(t, nn.Parameter) else meta
    skeleton = copy.deepcopy(module, memo)
    keyed = [(path, m) for path, m in skeleton.named_modules() if _keyable(m)]
    for _, m in keyed:
        _make_keyed(m)
    return skeleton, [path for path, _ in keyed]


@contextlib.contextmanager
def _seeded_fork(key: Tensor | None, device: torch.device):
    """torch's RNG forked for the call and seeded from key (from_module's fork_rng=True); a no-op
    without a key or with a meta one (check's shape runs). Eager only: the seed is read with a
    host sync."""
    if key is None or key.is_meta:
        yield
        return
    if torch.compiler.is_compiling() or torch._C._functorch.is_batchedtensor(key):
        raise ValueError(
            "from_module(..., fork_rng=True) networks seed torch's RNG from the key with a host "
            "sync, which torch.compile and vmap cannot do: train with fit(compile=False), not "
            "fit_ensemble."
        )
    seed = int(key) % (1 << 63)  # manual_seed takes a non-negative int64
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _in_training(net: Network):
    """net's apply as a plain function in training mode, with its fresh state and a key."""
    if not net.stateful:
        return net.apply

    def apply(params, x):
        state = net.init_state(dtype=x.dtype, device=x.device)
        key = _dropout.key(0, device=x.device)
        return net.apply(params, x, state=state, train=True, key=key)[0]

    return apply


class _UnkeyedRandom(ValueError):
    """A random op that nothing keys (raised by _RefuseTorchRandom)."""


def _refuse_unkeyed_random(apply, params, x) -> None:
    """Runs apply on meta copies under _RefuseTorchRandom: raises _UnkeyedRandom at an unkeyed
    random op. Any other failure means only that this run could not look (an op without a meta
    kernel, a training-only .item()): the eval run before it has checked the shapes."""
    try:
        with _RefuseTorchRandom():
            _meta_apply(apply, params, x)
    except _UnkeyedRandom:
        raise
    except Exception:  # see the docstring
        return


class _RefuseTorchRandom(TorchDispatchMode):
    """Raises at the first of torch's random ops (aten's nondeterministic_seeded tag) that draws:
    nothing can key it, so in fit it would read torch's global RNG. An op that draws only for a
    dropout probability (attention, rnn, dropout) counts when that is > 0 in training."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if torch.Tag.nondeterministic_seeded in func.tags and _draws(func, args, kwargs):
            raise _UnkeyedRandom(
                f"it calls torch's random op {func.overloadpacket.__name__} in training, which "
                "fit cannot key (it would draw from torch's global RNG): set that dropout to 0, "
                "draw with torch.nn's dropout modules or RReLU (from_module runs them keyed) or "
                "functional_nn.dropout's keyed functions, or pass from_module(module, "
                "fork_rng=True) to run it under a key-seeded fork of torch's RNG (eager fit only)."
            )
        return func(*args, **kwargs)


def _draws(func, args, kwargs) -> bool:
    values = {}
    for i, arg in enumerate(func._schema.arguments):
        default = arg.default_value if arg.has_default_value() else None
        values[arg.name] = args[i] if i < len(args) else kwargs.get(arg.name, default)
    if values.get("train") is False or values.get("training") is False:
        return False
    probability = next((values[n] for n in ("dropout_p", "dropout", "p") if n in values), None)
    return not (isinstance(probability, (int, float)) and probability == 0)


def _like(buffer: Tensor, dtype: torch.dtype | None, device: Any) -> Tensor:
    """A copy of a buffer on device, floating ones in dtype (integer counts keep theirs)."""
    dtype = dtype if dtype is not None and buffer.is_floating_point() else buffer.dtype
    return buffer.to(device=device, dtype=dtype, copy=True)


def to_module(
    module: nn.Module, params: dict[str, Tensor], model_state: dict[str, Tensor] | None = None
) -> nn.Module:
    """Copy `params` (and `model_state`, into the buffers) into `module` in place (keeping the
    Parameter objects, so a torch.optim optimizer built on them still holds them), as
    `load_state_dict` does, but atomically: every value is checked and converted to its
    parameter's (buffer's) device and dtype before any is copied, so on an error the module is
    unchanged.

    Args:
        module: the module to load into.
        params: `{name: tensor}` with exactly the names and shapes of `module.named_parameters()`,
            real floating tensors on any device, e.g. from `from_module`, a fit, or
            `mlp_to_state_dict`.
        model_state: None to leave the buffers, or `{name: tensor}` with exactly the names and
            shapes of `module.named_buffers()`, e.g. a fit's `model_state` of a from_module
            network.
    Returns:
        module itself.
    Raises:
        TypeError: params is not a dict, or a value is not a real floating tensor.
        ValueError: the names or a shape differ, or a value cannot be moved to the module's device.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}.")
    named = dict(module.named_parameters())
    owner = type(module).__name__
    _check_params(params, {name: tuple(p.shape) for name, p in named.items()}, owner)
    buffers = dict(module.named_buffers()) if model_state is not None else {}
    if model_state is not None:
        _check_params(
            model_state, {n: tuple(b.shape) for n, b in buffers.items()}, f"{owner} buffers"
        )
    # Convert every value before copying any: a value that cannot be loaded raises here, with the
    # module still whole (load_state_dict would leave it half overwritten).
    with torch.no_grad():
        staged = {name: _convert(params[name], p, name, owner) for name, p in named.items()}
        staged_buffers = {
            name: _convert(model_state[name], b, name, owner) for name, b in buffers.items()
        }
        for name, p in named.items():
            p.copy_(staged[name])
        for name, b in buffers.items():
            b.copy_(staged_buffers[name])
    return module


def _convert(value: Tensor, parameter: Tensor, name: str, owner: str) -> Tensor:
    """value on parameter's device and in its dtype (value itself when they already agree)."""
    if parameter.is_floating_point() and not value.is_floating_point():
        raise TypeError(
            f"{owner} parameter {name!r} must be loaded from a floating tensor (real, not complex), "
            f"got dtype {value.dtype}; convert it, e.g. params[{name!r}].to({parameter.dtype})."
        )
    try:
        return value.to(device=parameter.device, dtype=parameter.dtype)
    except (RuntimeError, NotImplementedError) as error:
        raise ValueError(
            f"{owner} parameter {name!r} cannot be moved from {value.device} to {parameter.device} "
            f"({error}); give a tensor with data, on a device this process can reach."
        ) from None


def mlp_to_state_dict(params: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """mlp params as the state dict of `nn.Sequential(nn.Linear, act, nn.Linear, ..., nn.Linear)`.

    Args:
        params: mlp params, one `{"weight": (out, in), "bias": (out,)}` per layer.
    Returns:
        `{"0.weight", "0.bias", "2.weight", ...}`: layer i's tensors (not copies) under index 2i.
    """
    if not isinstance(params, (list, tuple)) or not all(
        isinstance(layer, dict) for layer in params
    ):
        raise TypeError(
            f"params must be mlp params, a list of layer dicts, got {type(params).__name__}."
        )
    return {f"{2 * i}.{key}": t for i, layer in enumerate(params) for key, t in layer.items()}


def mlp_from_state_dict(state_dict: dict[str, Tensor]) -> list[dict[str, Tensor]]:
    """mlp params from the state dict of an `nn.Sequential` of `nn.Linear`s and activations.

    Args:
        state_dict: keys `"<index>.weight"` and `"<index>.bias"`, at any indices (so dropout or
            activation modules may sit between the linear layers), nothing else.
    Returns:
        One `{"weight": (out, in), "bias": (out,)}` per linear layer, in index order, copied.
    """
    layers: dict[int, dict[str, Tensor]] = {}
    for key, t in state_dict.items():
        match = re.fullmatch(r"(\d+)\.(weight|bias)", key)
        if match is None:
            raise ValueError(
                f"state_dict key {key!r} is not '<index>.weight' or '<index>.bias'; an mlp holds "
                "only linear layers: use from_module for other modules."
            )
        layers.setdefault(int(match[1]), {})[match[2]] = t.detach().clone()
    params = [layers[i] for i in sorted(layers)]
    _check_chain(params, [f"{i}." for i in sorted(layers)])
    return params


def _check_chain(params: list[dict[str, Tensor]], prefixes: list[str]) -> None:
    """Raise ValueError unless params are linear layers that feed each other, biased alike."""
    if not params:
        raise ValueError("state_dict holds no linear layer; an mlp needs at least one.")
    has_bias = "bias" in params[0]
    for i, (layer, prefix) in enumerate(zip(params, prefixes)):
        weight = layer.get("weight")
        if weight is None or weight.ndim != 2 or ("bias" in layer) != has_bias:
            raise ValueError(
                f"state_dict layer {prefix!r} must hold a 2-d weight, and a bias exactly when "
                f"the first layer does, got {sorted(layer)}."
            )
        if has_bias and layer["bias"].shape != weight.shape[:1]:
            raise ValueError(
                f"{prefix}bias has shape {tuple(layer['bias'].shape)}, expected ({weight.shape[0]},)."
            )
        if i and weight.shape[1] != params[i - 1]["weight"].shape[0]:
            raise ValueError(
                f"{prefixes[i - 1]}weight has {params[i - 1]['weight'].shape[0]} outputs, but "
                f"{prefix}weight takes {weight.shape[1]} inputs; these layers do not make one mlp."
            )


def _check_params(params: Any, shapes: dict[str, tuple[int, ...]], owner: str) -> None:
    """Raise TypeError unless params is a dict, ValueError unless it has exactly the names and
    shapes in `shapes` (TypeError for a value that is not a tensor)."""
    if not isinstance(params, dict):
        raise TypeError(
            f"params must be a dict {{name: tensor}} as from_module makes, got {type(params).__name__}."
        )
    if set(params) != set(shapes):
        raise ValueError(
            f"params do not match the parameters of {owner}: missing {sorted(set(shapes) - set(params))}, "
            f"unexpected {sorted(set(params) - set(shapes))}; expected the names of "
            "module.named_parameters()."
        )
    for name, shape in shapes.items():
        if not isinstance(params[name], Tensor):
            raise TypeError(
                f"{owner} parameter {name!r} must be a torch.Tensor, got {type(params[name]).__name__}."
            )
        given = tuple(params[name].shape)
        if given != shape:
            raise ValueError(f"{owner} parameter {name!r} has shape {given}, expected {shape}.")


def _reset_copy(module: nn.Module, seed_or_generator: int | torch.Generator) -> nn.Module:
    """A CPU copy of module with every parameter redrawn by its submodule's reset_parameters()."""
    uncovered = {name for name, _ in module.named_parameters()}
    for prefix, sub in module.named_modules():
        if callable(getattr(sub, "reset_parameters", None)):
            uncovered -= {
                f"{prefix}.{n}" if prefix else n for n, _ in sub.named_parameters(recurse=False)
            }
    if uncovered:
        raise ValueError(
            f"init cannot redraw the parameters {sorted(uncovered)} of {type(module).__name__}: "
            "their modules have no reset_parameters(); use the params from_module returned, or "
            "give those modules a reset_parameters method."
        )
    # An int seeds torch's default CPU generator itself, so seed s draws what torch.manual_seed(s)
    # would; a generator lends a seed. fork_rng puts the global CPU state back afterwards.
    generator = as_generator(seed_or_generator)
    seed = (
        generator.initial_seed()
        if isinstance(seed_or_generator, int)
        else int(torch.randint(0, 2**62, (), generator=generator))
    )
    clone = copy.deepcopy(module).to("cpu")
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        for sub in clone.modules():
            if callable(getattr(sub, "reset_parameters", None)):
                sub.reset_parameters()
    return clone
