"""Initialisers: torch.nn.init's numbers to the bit, the moments and bounds of its formulas, and
determinism from a seed or a generator."""

from __future__ import annotations

import itertools
import math
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from functional_nn import init, mlp

FAN_IN, FAN_OUT = 250, 400

# (our initialiser, the torch.nn.init call that fills a tensor in place, given a generator)
AGAINST_TORCH = [
    pytest.param(
        init.kaiming_uniform,
        lambda w, g: nn.init.kaiming_uniform_(w, generator=g),
        id="kaiming_uniform",
    ),
    pytest.param(
        partial(init.kaiming_uniform, a=math.sqrt(5)),
        lambda w, g: nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=g),
        id="kaiming_uniform(sqrt5)",
    ),
    pytest.param(
        init.kaiming_normal,
        lambda w, g: nn.init.kaiming_normal_(w, generator=g),
        id="kaiming_normal",
    ),
    pytest.param(
        init.xavier_uniform,
        lambda w, g: nn.init.xavier_uniform_(w, generator=g),
        id="xavier_uniform",
    ),
    pytest.param(
        init.xavier_normal, lambda w, g: nn.init.xavier_normal_(w, generator=g), id="xavier_normal"
    ),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ours, theirs", AGAINST_TORCH)
def test_weight_initialisers_draw_torch_nn_inits_numbers(ours, theirs, dtype):
    shape = (7, 5)  # (out, in): torch reads fan_in = 5, fan_out = 7 from it
    got = ours(torch.Generator().manual_seed(11), shape, 5, 7, dtype)
    expected = theirs(torch.empty(shape, dtype=dtype), torch.Generator().manual_seed(11))
    assert got.dtype == dtype and torch.equal(got, expected)


@pytest.mark.parametrize("bias", [True, False])
def test_torch_scheme_is_nn_linear_to_the_bit(bias):
    sizes = [6, 5, 3]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        layers = [nn.Linear(i, o, bias=bias) for i, o in itertools.pairwise(sizes)]
    params = mlp(sizes, bias=bias, init="torch").init(3)
    for layer, ours in zip(layers, params):
        assert torch.equal(ours["weight"], layer.weight.detach())
        assert bias == ("bias" in ours) and (
            not bias or torch.equal(ours["bias"], layer.bias.detach())
        )


def _kurtosis(kind: str) -> float:
    return 3.0 if kind == "normal" else 1.8  # E[z^4] / E[z^2]^2 of a normal and of a uniform


# (initialiser, shape distribution, the variance torch.nn.init's docs give, the uniform bound)
b_torch = 1 / math.sqrt(FAN_IN)
b_xavier = math.sqrt(6 / (FAN_IN + FAN_OUT))
MOMENTS = [
    pytest.param(init.normal, "normal", 1.0, None, id="normal"),
    pytest.param(init.kaiming_normal, "normal", 2 / FAN_IN, None, id="kaiming_normal"),
    pytest.param(
        init.kaiming_uniform, "uniform", 2 / FAN_IN, math.sqrt(6 / FAN_IN), id="kaiming_uniform"
    ),
    pytest.param(
        partial(init.kaiming_uniform, a=math.sqrt(5)),
        "uniform",
        b_torch**2 / 3,
        b_torch,
        id="torch_weight",
    ),
    pytest.param(init.uniform_fan_in, "uniform", b_torch**2 / 3, b_torch, id="torch_bias"),
    pytest.param(init.xavier_normal, "normal", 2 / (FAN_IN + FAN_OUT), None, id="xavier_normal"),
    pytest.param(init.xavier_uniform, "uniform", b_xavier**2 / 3, b_xavier, id="xavier_uniform"),
]


@pytest.mark.parametrize("fn, kind, variance, bound", MOMENTS)
def test_draws_have_the_moments_and_bounds_of_torch_nn_init(fn, kind, variance, bound):
    n = FAN_IN * FAN_OUT
    w = (
        fn(torch.Generator().manual_seed(5), (FAN_OUT, FAN_IN), FAN_IN, FAN_OUT, torch.float64)
        .numpy()
        .ravel()
    )
    kurt = _kurtosis(kind)
    # Standard errors of the sample mean, variance and kurtosis of n iid draws; 5 of them bound a
    # fluctuation with probability ~1 - 6e-7, so a variance off by 3% or more fails.
    mean_se = math.sqrt(variance / n)
    var_se = variance * math.sqrt((kurt - 1) / n)
    assert abs(w.mean()) <= 5 * mean_se
    assert abs(w.var() - variance) <= 5 * var_se
    assert abs(np.mean(w**4) / w.var() ** 2 - kurt) <= 5 * math.sqrt(24 / n)
    if bound is not None:
        # P(max |w| < b (1 - 1e-3)) = (1 - 1e-3)^n ~ e^-100: the bound is reached, and never passed.
        assert np.max(np.abs(w)) <= bound and np.max(np.abs(w)) >= bound * (1 - 1e-3)


@pytest.mark.parametrize("scheme", sorted(init.SCHEMES))
def test_schemes_are_deterministic_and_draw_on_the_cpu(scheme, device):
    net = mlp([4, 6, 3], init=scheme)
    a = net.init(9, dtype=torch.float64, device=device)
    b = net.init(torch.Generator().manual_seed(9), dtype=torch.float64)
    for la, lb in zip(a, b):
        assert la["weight"].device.type == device.type
        assert torch.equal(la["weight"].cpu(), lb["weight"]) and torch.equal(
            la["bias"].cpu(), lb["bias"]
        )


@pytest.mark.parametrize("scheme", sorted(set(init.SCHEMES) - {"zeros"}))
def test_seeds_and_generator_state_change_the_draws(scheme):
    net = mlp([4, 6, 3], init=scheme)
    generator = torch.Generator().manual_seed(9)
    first, second, other = net.init(generator), net.init(generator), net.init(10)
    assert not torch.equal(first[0]["weight"], second[0]["weight"])
    assert not torch.equal(first[0]["weight"], other[0]["weight"])


def test_zero_biases_and_zeros_scheme_draw_nothing():
    generator = torch.Generator().manual_seed(2)
    state = generator.get_state()
    z = init.zeros(generator, (3, 4), 4, 3, torch.float32)
    assert torch.equal(generator.get_state(), state) and torch.equal(z, torch.zeros(3, 4))
    for scheme in ("kaiming_normal", "kaiming_uniform", "xavier_normal", "xavier_uniform"):
        assert torch.equal(mlp([4, 3], init=scheme).init(0)[0]["bias"], torch.zeros(3))


@pytest.mark.parametrize(
    "call, error, message",
    [
        pytest.param(
            lambda: init.get_scheme("he"),
            ValueError,
            r"Unknown init 'he'.*'kaiming_normal'.*'zeros'",
            id="unknown",
        ),
        pytest.param(
            lambda: mlp([3, 2], init="glorot"),
            ValueError,
            r"Unknown init 'glorot'.*'xavier_uniform'",
            id="mlp",
        ),
        pytest.param(
            lambda: init.as_generator(1.5),
            TypeError,
            r"seed must be an int or a torch.Generator, got float",
            id="seed-float",
        ),
        pytest.param(
            lambda: mlp([3, 2]).init(True),
            TypeError,
            r"seed must be an int.*got bool",
            id="seed-bool",
        ),
    ],
)
def test_bad_init_input_is_rejected(call, error, message):
    with pytest.raises(error, match=message):
        call()
