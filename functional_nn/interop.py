"""Moving between torch.nn and functional_nn.

- `from_module(module) -> (net, params)`: any `torch.nn.Module` as a Network, its params a dict
  keyed as `module.named_parameters()`; `to_module(module, params)` loads them back, all or
  nothing: a bad value raises before any parameter is overwritten.
- `mlp_to_state_dict` / `mlp_from_state_dict`: mlp params as the state dict of the equivalent
  `nn.Sequential(nn.Linear, activation, nn.Linear, ...)`, and back.

Buffers (batch-norm running statistics, ...) are not params: nothing differentiates or optimizes
them. A module with buffers or with random submodules (dropout) becomes a stateful Network (see
networks.py): its buffers are the model state, `apply(params, x, *, state, train, key) ->
(y, new_state)` runs `torch.func.functional_call` on clones of the state's tensors (so the
module's in-place updates, e.g. BatchNorm's running statistics in train mode, land on tensors that
only the new state holds: neither the caller's module nor the state passed in ever changes), and
train/eval is that argument: apply runs a private copy of the module set to that mode (one per
mode, with meta tensors in place of its parameters and buffers, so they cost no tensor memory),
so the module's own `.training` flag is neither read nor changed.
"""

from __future__ import annotations

import contextlib
import copy
import re
from typing import Any

import torch
from torch import Tensor, nn

from . import _provenance
from .init import as_generator
from .networks import Network, _meta_apply, eval_view


def from_module(module: nn.Module) -> tuple[Network, dict[str, Tensor]]:
    """A Network that runs `module` functionally, and a copy of its params.

    Without buffers or random submodules, `apply(params, x)` is
    `torch.func.functional_call(module, params, (x,))`: the module's code with these params. With
    them, the network is stateful (see the module docstring): `init_state(dtype=, device=)`
    gives copies of the buffers (floating ones in dtype), and in `apply(params, x, *, state,
    train, key)` torch's random ops draw from an RNG scoped to the call (`torch.random.fork_rng`)
    and seeded from `key`, so the same key gives the same dropout mask and torch's global RNG is
    left as it was. That works eagerly (fit). The seed is read from the key with a host sync,
    which vmap and torch.compile cannot do: there (fit_ensemble, fit(compile=...)) no fork
    happens, so a random op raises under vmap (its randomness="error") and draws from torch's
    own RNG when compiled; use `blocks.dropout`, whose keyed masks work everywhere.
    `init(seed)` draws fresh params by calling each submodule's `reset_parameters()` on a CPU
    copy, in the module's dtype, with torch's CPU generator seeded from `seed`: seed s gives what
    building the module after `torch.manual_seed(s)` gives.

    Args:
        module: any `torch.nn.Module`; left unchanged.
    Returns:
        (Network, params): params is `{name: tensor}` for each of `module.named_parameters()`,
        detached copies.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}.")
    params = {name: p.detach().clone() for name, p in module.named_parameters()}
    buffers = {name: b.detach().clone() for name, b in module.named_buffers()}
    shapes = {name: tuple(p.shape) for name, p in params.items()}
    random = any(isinstance(m, _RANDOM) for m in module.modules())

    def init(seed_or_generator, *, dtype: torch.dtype | None = None, device: Any = None):
        drawn = _reset_copy(module, seed_or_generator).named_parameters()
        return {name: p.detach().to(dtype=dtype or p.dtype, device=device) for name, p in drawn}

    def check(params, x):
        _check_params(params, shapes, type(module).__name__)
        try:
            _meta_apply(eval_view(net).apply, params, x)
        except ValueError as error:
            raise ValueError(f"{type(module).__name__}: {error}") from None

    name = f"from_module: {type(module).__name__}"
    if not buffers and not random:
        apply = lambda params, x: torch.func.functional_call(module, params, (x,))
        net = Network(init=init, apply=apply, check=check, name=name)
        return net, _provenance.record(params, net)
    skeleton = _skeleton(module)
    modes = {mode: copy.deepcopy(skeleton).train(mode) for mode in (True, False)}

    def init_state(*, dtype: torch.dtype | None = None, device: Any = None):
        return {name: _like(b, dtype, device) for name, b in buffers.items()}

    def apply(params, x, *, state, train: bool, key=None):
        fresh = {name: t.clone() for name, t in state.items()}  # the module updates these in place
        with _scoped_rng(key, x.device):
            y = torch.func.functional_call(modes[bool(train)], (params, fresh), (x,))
        return y, fresh

    net = Network(init=init, apply=apply, check=check, name=name, init_state=init_state)
    return net, _provenance.record(params, net)


# torch.nn's modules that draw random numbers in training.
_RANDOM = (nn.modules.dropout._DropoutNd, nn.RReLU)


def _skeleton(module: nn.Module) -> nn.Module:
    """A deep copy of module whose parameters and buffers are meta tensors (shapes, no data):
    apply hands functional_call every one of them, so the copies it runs hold no tensor memory."""
    memo: dict[int, Any] = {}
    for t in [*module.parameters(), *module.buffers()]:
        meta = t.detach().to("meta")
        memo[id(t)] = nn.Parameter(meta, t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(module, memo)


def _like(buffer: Tensor, dtype: torch.dtype | None, device: Any) -> Tensor:
    """A copy of a buffer on device, floating ones in dtype (integer counts keep theirs)."""
    dtype = dtype if dtype is not None and buffer.is_floating_point() else buffer.dtype
    return buffer.to(device=device, dtype=dtype, copy=True)


@contextlib.contextmanager
def _scoped_rng(key: Tensor | None, device: torch.device):
    """torch's RNG forked for the call and seeded from key: eager only (see from_module)."""
    seed = None
    if key is not None and not torch.compiler.is_compiling():
        try:
            seed = int(key) % (1 << 63)  # manual_seed takes a non-negative int64
        except RuntimeError:  # a batched key (vmap) has no single value to read
            seed = None
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


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
