"""Dropout and the other random layers (alpha dropout, rrelu), and the counter-based random keys
they draw from.

Randomness (DESIGN, "Model state and randomness"): a random layer takes a key, never torch's
global RNG nor a hidden generator. A key is a 0-d int64 tensor; `key(seed)` makes one and
`fold_in(key, data)` derives another, so a trainer derives the key of step t as
`fold_in(key(seed), t)` and passes it in: the same (seed, step) gives bitwise the same mask, on any
device, whatever ran before. Bits come from a counter-based hash: element i of a draw is
mix(gamma (key XOR i)), the (key XOR i)-th output of SplitMix64 seeded with 0 (Steele et al.
2014, "Fast splittable pseudorandom number generators"; its n-th output is mix(n gamma)), so one
draw reads distinct words of one stream. It is computed with plain int64 tensor ops (products wrap
mod 2^64). That is why keys and not a `torch.Generator`: a key is data, so the draw is a pure
function of it, and it composes with `torch.func.grad`, with `vmap` over a batch of keys (one
independent mask per model, as fit_ensemble needs) and with `torch.compile`; a generator is a
mutable object that vmap cannot batch.

Every input (seed, key, counter) meets an xor or a shift before any wrapping product. inductor
folds an add or multiply of an index (arange) or a constant into its index arithmetic, which does
not wrap: `arange(n) * gamma` compiled to wrong bits and a corrupted heap at sizes that are not a
multiple of the vector width (torch 2.13 and 2.14), and to an OverflowError for a constant key.
tests/test_norm_dropout.py checks the compiled bits against the eager ones at odd sizes, static
and dynamic, for input, constant, folded and vmapped keys, and the eager ones against SplitMix64
in Python ints.
"""

from __future__ import annotations

import torch
from torch import Tensor

# SplitMix64's constants, as two's-complement int64 (torch has no uint64 arithmetic).
_GAMMA = 0x9E3779B97F4A7C15 - (1 << 64)
_MUL1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MUL2 = 0x94D049BB133111EB - (1 << 64)
_BITS = 53  # uniform bits per element: a float64 mantissa's worth


def _shr(z: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic: it copies the sign bit)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _mix(z: Tensor) -> Tensor:
    """SplitMix64's finaliser, a bijection of 64-bit words; int64 products wrap mod 2^64."""
    z = (z ^ _shr(z, 30)) * _MUL1
    z = (z ^ _shr(z, 27)) * _MUL2
    return z ^ _shr(z, 31)


def key(seed: int, device=None) -> Tensor:
    """A random key from an int seed: a 0-d int64 tensor, mix(seed XOR gamma)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"key: seed must be an int, got {type(seed).__name__}: {seed!r}.")
    if not -(1 << 63) <= seed < 1 << 63:  # any int, as the int64 it is congruent to mod 2^64
        seed = (seed + (1 << 63)) % (1 << 64) - (1 << 63)
    return _mix(torch.tensor(seed, dtype=torch.long, device=device) ^ _GAMMA)


def fold_in(key: Tensor, data: int | Tensor) -> Tensor:
    """A new key from `key` and an int64 (e.g. the step), independent of `key`'s own draws."""
    data = torch.as_tensor(data, dtype=torch.long, device=key.device)
    return _mix(key ^ _mix(data ^ _MUL1))


def bits(key: Tensor, shape: tuple[int, ...], device=None) -> Tensor:
    """Uniform random integers in [0, 2^53), one per element of `shape`, from `key`."""
    count = torch.arange(int(torch.Size(shape).numel()), device=device or key.device)
    return _shr(_mix((key ^ count) * _GAMMA), 64 - _BITS).reshape(shape)


def dropout_mask(key: Tensor, shape: tuple[int, ...], p: float, device=None) -> Tensor:
    """A bool mask of `shape`, each element True (kept) with probability 1 - p exactly."""
    threshold = round((1.0 - p) * (1 << _BITS))  # P(bits < threshold) = threshold / 2^53
    return bits(key, shape, device) < threshold


def _noise(x: Tensor, noise_shape, name: str) -> tuple[int, ...]:
    """The mask's shape: x's, or noise_shape where it broadcasts to exactly x's."""
    if noise_shape is None:
        return tuple(x.shape)
    try:
        fits = torch.broadcast_shapes(tuple(noise_shape), x.shape) == x.shape
    except (RuntimeError, TypeError):
        fits = False
    if not fits:
        raise ValueError(
            f"{name}: noise_shape {tuple(noise_shape)!r} does not broadcast to x's shape "
            f"{tuple(x.shape)}: give x's shape with 1 where one draw spans a dim, e.g. "
            "(N, C, 1, 1) for whole channels."
        )
    return tuple(noise_shape)


def _check(name: str, key: Tensor, p: float | None = None) -> None:
    if p is not None and not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}: p must lie in [0, 1], got {p!r}.")
    if not isinstance(key, Tensor) or key.dtype != torch.long:
        raise TypeError(f"{name}: key must be an int64 tensor from dropout.key(seed), got {key!r}.")


def dropout(x: Tensor, p: float = 0.5, *, key: Tensor, train: bool, noise_shape=None) -> Tensor:
    """Inverted dropout (Srivastava et al. 2014): in training, each element is zeroed with
    probability p and the rest scaled by 1 / (1 - p), so the expectation is x; in eval, x itself.

    Args:
        x: any shape.
        p: the drop probability, in [0, 1]; p = 1 gives zeros, as torch.
        key: a key from `key`/`fold_in`; the same key gives the same mask.
        train: False returns x unchanged.
        noise_shape: the mask's shape, broadcast against x (default x's): `(N, C, 1, 1)` drops
            whole channels of an (N, C, H, W) input, as torch's Dropout2d.
    Returns:
        x's shape and dtype.
    """
    _check("dropout", key, p=p)
    if not train or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0  # as torch: zeros, NaN where x is not finite
    mask = dropout_mask(key, _noise(x, noise_shape, "dropout"), p, x.device)
    # torch's order: the mask divided by 1 - p in x's dtype, then x times it, so that the kept
    # values are bitwise torch's in float32 too (1 / (1 - p) rounded once differs at 23% of p)
    return x * (mask.to(x.dtype) / (1.0 - p))


# SELU's scale times its alpha (Klambauer et al. 2017): -_SELU_MIN is SELU's saturation value.
_SELU_MIN = 1.7580993408473766


def alpha_dropout(
    x: Tensor, p: float = 0.5, *, key: Tensor, train: bool, noise_shape=None
) -> Tensor:
    """Alpha dropout (Klambauer et al. 2017, "Self-normalizing neural networks"), as torch's:
    in training, dropped elements become SELU's saturation value and an affine map restores a
    standard input's mean and variance: with q = 1 - p, a = ((alpha^2 p + 1) q)^-1/2 and
    kept = the mask, the output is x a kept + alpha a (kept - 1 + p); p = 1 gives zeros.
    Arguments as `dropout`."""
    _check("alpha_dropout", key, p=p)
    if not train or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    mask = dropout_mask(key, _noise(x, noise_shape, "alpha_dropout"), p, x.device)
    kept = mask.to(x.dtype)
    a = 1.0 / ((_SELU_MIN**2 * p + 1.0) * (1.0 - p)) ** 0.5
    return x * (kept * a) + ((kept - 1.0) * (_SELU_MIN * a) + _SELU_MIN * a * p)


def rrelu(
    x: Tensor, lower: float = 1.0 / 8.0, upper: float = 1.0 / 3.0, *, key: Tensor, train: bool
) -> Tensor:
    """Randomized leaky ReLU (Xu et al. 2015), as torch's: x where x > 0, else a x, with a drawn
    uniformly from [lower, upper) per element in training and (lower + upper) / 2 in eval. At
    x = 0 the gradient is a, torch's choice at the tie."""
    _check("rrelu", key)
    if not lower <= upper:
        raise ValueError(f"rrelu: lower must be <= upper, got {lower!r} > {upper!r}.")
    if not train:
        return torch.where(x > 0, x, x * ((lower + upper) / 2.0))
    uniform = bits(key, x.shape, x.device).to(torch.float64) * 2.0**-_BITS
    slope = (lower + (upper - lower) * uniform).to(x.dtype)
    return torch.where(x > 0, x, x * slope)
