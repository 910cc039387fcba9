"""Moving between torch.nn and functional_nn.

- `from_module(module) -> (net, params)`: any `torch.nn.Module` as a Network, its params a dict
  keyed as `module.named_parameters()`; `to_module(module, params)` loads them back, all or
  nothing: a bad value raises before any parameter is overwritten.
- `mlp_to_state_dict` / `mlp_from_state_dict`: mlp params as the state dict of the equivalent
  `nn.Sequential(nn.Linear, activation, nn.Linear, ...)`, and back.

Buffers (batch-norm running statistics, ...) are not params: nothing differentiates or optimizes
them. `from_module` copies them once and closes over the copy, as the torch.func recipes pass
buffers beside params to `functional_call`; each call of `apply` hands the module fresh copies on
x's device (floating ones in x's dtype), so a module in training mode cannot carry an in-place
buffer update from one call into the next.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import torch
from torch import Tensor, nn

from .init import as_generator
from .networks import Network, _meta_apply


def from_module(module: nn.Module) -> tuple[Network, dict[str, Tensor]]:
    """A Network that runs `module` functionally, and a copy of its params.

    `apply(params, x)` is `torch.func.functional_call(module, (params, buffers), (x,))`: the
    module's code with these params, whatever its own hold now. Its mode (`module.train()` /
    `module.eval()`) at call time still decides what dropout or batch-norm do, so call
    `module.eval()` first for a deterministic apply, and before `vmap` over a batch-norm.
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

    def apply(params, x):
        fresh = {
            name: b.to(
                device=x.device, dtype=x.dtype if b.is_floating_point() else b.dtype, copy=True
            )
            for name, b in buffers.items()
        }
        return torch.func.functional_call(module, (params, fresh), (x,))

    def init(seed_or_generator, *, dtype: torch.dtype | None = None, device: Any = None):
        drawn = _reset_copy(module, seed_or_generator).named_parameters()
        return {name: p.detach().to(dtype=dtype or p.dtype, device=device) for name, p in drawn}

    def check(params, x):
        _check_params(params, shapes, type(module).__name__)
        try:
            _meta_apply(apply, params, x)
        except ValueError as error:
            raise ValueError(f"{type(module).__name__}: {error}") from None

    name = f"from_module: {type(module).__name__}"
    return Network(init=init, apply=apply, check=check, name=name), params


def to_module(module: nn.Module, params: dict[str, Tensor]) -> nn.Module:
    """Copy `params` into `module`'s parameters in place (keeping the Parameter objects, so a
    torch.optim optimizer built on them still holds them), as `load_state_dict` does, but
    atomically: every value is checked and converted to its parameter's device and dtype before
    any is copied, so on an error the module is unchanged.

    Args:
        module: the module to load into.
        params: `{name: tensor}` with exactly the names and shapes of `module.named_parameters()`,
            real floating tensors on any device, e.g. from `from_module`, a fit, or
            `mlp_to_state_dict`.
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
    # Convert every value before copying any: a value that cannot be loaded raises here, with the
    # module still whole (load_state_dict would leave it half overwritten).
    with torch.no_grad():
        staged = {name: _convert(params[name], p, name, owner) for name, p in named.items()}
        for name, p in named.items():
            p.copy_(staged[name])
    return module


def _convert(value: Tensor, parameter: Tensor, name: str, owner: str) -> Tensor:
    """value on parameter's device and in its dtype (value itself when they already agree)."""
    if not value.is_floating_point():
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
