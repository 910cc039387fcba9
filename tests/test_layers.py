"""Activations: the oracle against central differences, functional_nn against the oracle."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from functional_nn import layers
from oracle.gradcheck import numerical_gradient, rel_error
from tests.helpers import assert_trees_close, to_numpy
from tests.tables import ACTIVATIONS, TORCH_ACTIVATIONS


def _inputs(seed: int, shape=(4, 6)) -> np.ndarray:
    """Draws spread over [-4, 4], where every activation has curvature and both softplus regions."""
    return 2.0 * np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize("fn, oracle", ACTIVATIONS)
def test_oracle_backward_matches_central_differences(fn, oracle):
    forward, backward = oracle
    x = _inputs(0)
    dout = np.random.default_rng(1).standard_normal(x.shape)
    out, cache = forward(x)
    dx = backward(dout, cache)
    numeric = numerical_gradient(lambda: float(np.sum(forward(x)[0] * dout)), x)
    assert out.shape == x.shape and dx.shape == x.shape
    # h = 1e-6 in float64: truncation ~1e-12, rounding ~1e-10 relative.
    assert rel_error(dx, numeric) <= 1e-7


@pytest.mark.parametrize("fn, oracle", ACTIVATIONS)
def test_activation_and_its_gradient_match_the_oracle(fn, oracle, device):
    forward, backward = oracle
    x = _inputs(2)
    x[0, :3] = (
        0.0  # kinks: torch's convention at 0 (relu' = 0, leaky_relu' = slope) is the oracle's
    )
    dout = np.random.default_rng(3).standard_normal(x.shape)
    out, cache = forward(x)
    xt = torch.tensor(x, device=device)
    dt = torch.tensor(dout, device=device)
    grad = torch.func.grad(lambda t: (fn(t) * dt).sum())(xt)
    assert_trees_close(fn(xt), out, rtol=1e-13, name="activation")
    assert_trees_close(grad, backward(dout, cache), rtol=1e-12, name="d activation")


@pytest.mark.parametrize("fn, oracle", ACTIVATIONS)
def test_float32_activation_matches_the_oracle(fn, oracle, device):
    x = _inputs(4)
    out = fn(torch.tensor(x, dtype=torch.float32, device=device))
    assert out.dtype == torch.float32
    # float32 rounds the input too: its error (~6e-8 relative) passes through slopes up to ~1.1.
    assert_trees_close(
        out, oracle[0](x.astype(np.float32).astype(np.float64))[0], rtol=1e-6, name="float32"
    )


@pytest.mark.parametrize("fn, oracle", ACTIVATIONS)
def test_activation_is_finite_at_extreme_inputs(fn, oracle, device):
    x = np.array([-1e4, -800.0, -40.0, 40.0, 800.0, 1e4])
    out, cache = oracle[0](x)
    dx = oracle[1](np.ones_like(x), cache)
    xt = torch.tensor(x, device=device)
    grad = torch.func.grad(lambda t: fn(t).sum())(xt)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(dx))
    assert_trees_close(fn(xt), out, rtol=1e-13, name="activation")
    assert_trees_close(grad, dx, rtol=1e-13, name="d activation")


def test_leaky_relu_slope_and_gelu_tanh_are_the_documented_formulas():
    x = torch.linspace(-3, 3, 13, dtype=torch.float64)
    assert torch.equal(layers.leaky_relu(x), torch.where(x > 0, x, 0.01 * x))
    k = (2 / torch.pi) ** 0.5
    expected = 0.5 * x * (1 + torch.tanh(k * (x + 0.044715 * x**3)))
    assert rel_error(to_numpy(layers.gelu(x, approximate="tanh")), to_numpy(expected)) <= 1e-15
    assert rel_error(to_numpy(layers.gelu(x)), to_numpy(layers.gelu(x, approximate="tanh"))) > 1e-5


def test_activations_compose_with_vmap():
    x = torch.tensor(_inputs(5))
    for fn in (
        layers.gelu,
        partial(layers.softplus, beta=2.0),
        partial(layers.leaky_relu, negative_slope=0.3),
    ):
        assert torch.equal(torch.func.vmap(fn)(x), fn(x))


def test_get_activation_resolves_names_and_callables():
    assert layers.get_activation("tanh") is layers.tanh
    slope = partial(layers.leaky_relu, negative_slope=0.2)
    assert layers.get_activation(slope) is slope
    assert sorted(layers.ACTIVATIONS) == sorted(
        TORCH_ACTIVATIONS.keys() & layers.ACTIVATIONS.keys()
    )
    assert {
        "elu",
        "hardswish",
        "log_softmax",
        "logsigmoid",
        "mish",
        "selu",
        "silu",
        "softmax",
    } <= set(layers.ACTIVATIONS)


@pytest.mark.parametrize("fn, oracle", ACTIVATIONS)
def test_activation_and_its_gradient_match_torch_functional(fn, oracle, request):
    reference = TORCH_ACTIVATIONS[request.node.callspec.id]
    x = torch.tensor(_inputs(6))
    dout = torch.tensor(np.random.default_rng(7).standard_normal(x.shape))
    grad = torch.func.grad(lambda t: (fn(t) * dout).sum())(x)
    ref_grad = torch.func.grad(lambda t: (reference(t) * dout).sum())(x)
    assert_trees_close(fn(x), reference(x), rtol=1e-14, name="activation vs torch")
    assert_trees_close(grad, ref_grad, rtol=1e-14, name="d activation vs torch")


@pytest.mark.parametrize("name", ["hardswish", "elu", "selu"])
def test_gradient_at_a_kink_is_the_documented_branch_and_torchs(name):
    """hardswish at -3 and 3, elu/selu (alpha = 2 for elu) at 0: the value each docstring names,
    which torch 2.13's and 2.14's kernels also give."""
    fn, reference, points, expected = {
        "hardswish": (layers.hardswish, F.hardswish, [-3.0, 3.0], [0.0, 1.0]),
        "elu": (partial(layers.elu, alpha=2.0), partial(F.elu, alpha=2.0), [0.0], [2.0]),
        "selu": (layers.selu, F.selu, [0.0], [layers.SELU_SCALE * layers.SELU_ALPHA]),
    }[name]
    x = torch.tensor(points, dtype=torch.float64)
    grad = torch.func.grad(lambda t: fn(t).sum())(x)
    ref = torch.func.grad(lambda t: reference(t).sum())(x)
    assert grad.tolist() == pytest.approx(expected, rel=1e-15)
    assert torch.equal(grad, ref)


@pytest.mark.parametrize(
    "call, error, message",
    [
        pytest.param(
            lambda: layers.get_activation("swish"),
            ValueError,
            r"Unknown activation 'swish'.*'gelu'.*'tanh'",
            id="unknown",
        ),
        pytest.param(
            lambda: layers.get_activation(3),
            TypeError,
            r"activation must be a name or a callable.*int",
            id="type",
        ),
        pytest.param(
            lambda: layers.gelu(torch.ones(2), approximate="erf"),
            ValueError,
            r"approximate must be 'none' or 'tanh', got 'erf'",
            id="gelu",
        ),
    ],
)
def test_bad_activation_input_is_rejected(call, error, message):
    with pytest.raises(error, match=message):
        call()
