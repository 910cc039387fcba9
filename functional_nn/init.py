"""Initialisers: deterministic draws from a seed or a `torch.Generator`.

Convention: an initialiser is `f(generator, shape, fan_in, fan_out, dtype) -> Tensor`, drawn on the
CPU (so a seed gives the same numbers whatever the device the params end up on). A scheme names
one initialiser for a layer's weight and one for its bias.
"""

from __future__ import annotations

from typing import Callable

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
    """Standard normal draws, as the seeds' `randn` weights."""
    return torch.randn(shape, generator=generator, dtype=dtype)


def zeros(generator: torch.Generator, shape: tuple, fan_in: int, fan_out: int, dtype) -> Tensor:
    """All zeros; draws nothing from the generator."""
    return torch.zeros(shape, dtype=dtype)


SCHEMES: dict[str, tuple[Initializer, Initializer]] = {
    # name: (weight initialiser, bias initialiser)
    "normal": (normal, normal),
    "zeros": (zeros, zeros),
}


def get_scheme(init: str) -> tuple[Initializer, Initializer]:
    """The (weight, bias) initialisers of the scheme named `init`."""
    if init not in SCHEMES:
        raise ValueError(f"Unknown init {init!r}; expected one of {sorted(SCHEMES)}.")
    return SCHEMES[init]
