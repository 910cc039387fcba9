"""Initialisers: deterministic draws from a seed or a `torch.Generator`.

Convention: an initialiser is `f(generator, shape, fan_in, fan_out, dtype) -> Tensor`, drawn on the
CPU (so a seed gives the same numbers whatever the device the params end up on). A scheme names
one initialiser for a layer's weight and one for its bias.

Each draw computes its bound or standard deviation as `torch.nn.init` does and fills a fresh
tensor with the same sampler, so a generator in the same state gives torch's numbers to the bit:
`mlp(sizes, init="torch")` seeded with s equals `torch.manual_seed(s)` followed by building the
equivalent `nn.Sequential` of `nn.Linear`s.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor

Initializer = Callable[[torch.Generator, tuple, int, int, torch.dtype], Tensor]


def as_generator(seed_or_generator: int | torch.Generator) -> torch.Generator:
    """A CPU `torch.Generator`: seeded from an int, or the given generator itself."""
    if isinstance(seed_or_generator, torch.Generator):
        return seed_or_generator
    if isinstance(seed_or_generator, bool) or not isinstance(seed_or_generator, int):
        raise TypeError(
            f"seed must be an int or a torch.Generator, got {type(seed_or_generator).__name__}: "
            f"{seed_or_generator!r}."
        )
    return torch.Generator().manual_seed(seed_or_generator)


def normal(generator: torch.Generator, shape: tuple, fan_in: int, fan_out: int, dtype) -> Tensor:
    """Standard normal draws: the `randn` weights of the PyTorch tutorial's two-layer network."""
    return torch.randn(shape, generator=generator, dtype=dtype)


def zeros(generator: torch.Generator, shape: tuple, fan_in: int, fan_out: int, dtype) -> Tensor:
    """All zeros; draws nothing from the generator."""
    return torch.zeros(shape, dtype=dtype)


def _uniform(generator: torch.Generator, shape: tuple, bound: float, dtype) -> Tensor:
    return torch.empty(shape, dtype=dtype).uniform_(-bound, bound, generator=generator)


def _normal(generator: torch.Generator, shape: tuple, std: float, dtype) -> Tensor:
    return torch.empty(shape, dtype=dtype).normal_(0.0, std, generator=generator)


def _leaky_relu_gain(a: float) -> float:
    # torch.nn.init.calculate_gain("leaky_relu", a): kaiming's default nonlinearity.
    return math.sqrt(2.0 / (1 + a**2))


def kaiming_uniform(generator, shape, fan_in, fan_out, dtype, a: float = 0.0) -> Tensor:
    """U(-b, b), b = sqrt(3) gain / sqrt(fan_in), gain = sqrt(2 / (1 + a^2)), as
    `torch.nn.init.kaiming_uniform_(w, a)`; a = sqrt(5) gives nn.Linear's b = 1 / sqrt(fan_in)."""
    return _uniform(
        generator, shape, math.sqrt(3.0) * (_leaky_relu_gain(a) / math.sqrt(fan_in)), dtype
    )


def kaiming_normal(generator, shape, fan_in, fan_out, dtype, a: float = 0.0) -> Tensor:
    """N(0, std^2), std = gain / sqrt(fan_in), gain = sqrt(2 / (1 + a^2)), as
    `torch.nn.init.kaiming_normal_(w, a)`."""
    return _normal(generator, shape, _leaky_relu_gain(a) / math.sqrt(fan_in), dtype)


def xavier_uniform(generator, shape, fan_in, fan_out, dtype) -> Tensor:
    """U(-b, b), b = sqrt(3) sqrt(2 / (fan_in + fan_out)), as `torch.nn.init.xavier_uniform_`."""
    return _uniform(
        generator, shape, math.sqrt(3.0) * math.sqrt(2.0 / float(fan_in + fan_out)), dtype
    )


def xavier_normal(generator, shape, fan_in, fan_out, dtype) -> Tensor:
    """N(0, std^2), std = sqrt(2 / (fan_in + fan_out)), as `torch.nn.init.xavier_normal_`."""
    return _normal(generator, shape, math.sqrt(2.0 / float(fan_in + fan_out)), dtype)


def uniform_fan_in(generator, shape, fan_in, fan_out, dtype) -> Tensor:
    """U(-b, b), b = 1 / sqrt(fan_in): `torch.nn.Linear`'s bias."""
    return _uniform(generator, shape, 1 / math.sqrt(fan_in), dtype)


SCHEMES: dict[str, tuple[Initializer, Initializer]] = {
    # name: (weight initialiser, bias initialiser). Biases start at zero in the xavier and
    # kaiming schemes: torch.nn.init has no rule for them, and zero is the usual choice.
    "kaiming_normal": (kaiming_normal, zeros),
    "kaiming_uniform": (kaiming_uniform, zeros),
    "normal": (normal, normal),
    "torch": (functools.partial(kaiming_uniform, a=math.sqrt(5)), uniform_fan_in),
    "xavier_normal": (xavier_normal, zeros),
    "xavier_uniform": (xavier_uniform, zeros),
    "zeros": (zeros, zeros),
}


def get_scheme(init: str) -> tuple[Initializer, Initializer]:
    """The (weight, bias) initialisers of the scheme named `init`."""
    if init not in SCHEMES:
        raise ValueError(f"Unknown init {init!r}; expected one of {sorted(SCHEMES)}.")
    return SCHEMES[init]
