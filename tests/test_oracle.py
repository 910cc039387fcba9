"""The oracle against central differences: every backward, loss gradient and the gradcheck itself.

Everything here is numpy in float64. With step h = 1e-6, central differences carry a truncation
error of order h^2 |f'''| and a rounding error of order eps |f| / h ~ 1e-10 |f|. On these small,
well-scaled problems the measured relative error (oracle.gradcheck.rel_error) lies between 6e-11
and 6e-10, so the bound GRAD_RTOL = 1e-8 leaves more than a decade of headroom while still
catching a gradient off by one part in a million (see test_gradcheck_catches_a_small_error).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from oracle import layers, losses, networks
from oracle.gradcheck import numerical_gradient, rel_error

H = 1e-6
GRAD_RTOL = 1e-8


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _away_from_zero(a: np.ndarray, margin: float = 0.1) -> np.ndarray:
    """a with every entry pushed at least `margin` from 0, so a step of H never crosses relu's kink."""
    return np.where(a >= 0, a + margin, a - margin)


def _numeric(forward, inputs: dict[str, np.ndarray], dout: np.ndarray) -> dict[str, np.ndarray]:
    """Central differences of sum(forward(**inputs)[0] * dout) w.r.t. each input (the chain rule's
    vector-Jacobian product, which is what a backward returns)."""

    def f():
        return float(np.sum(forward(**inputs)[0] * dout))

    return {name: numerical_gradient(f, value, H) for name, value in inputs.items()}


# ---------------------------------------------------------------------------- gradcheck itself


def test_rel_error_known_values():
    a = np.array([1.0, -2.0, 3.0])
    assert rel_error(a, a) == 0.0
    assert rel_error(np.zeros(3), np.zeros(3)) == 0.0
    assert rel_error(np.array([1.0]), np.array([3.0])) == 0.5  # |1 - 3| / (1 + 3)
    b = a + np.array([0.0, 0.0, 0.6])
    assert rel_error(a, b) == pytest.approx(0.6 / 6.6, rel=1e-15)
    assert rel_error(a, b) == rel_error(b, a)
    assert rel_error(1e-30 * a, 1e-30 * b) == pytest.approx(
        rel_error(a, b), rel=1e-12
    )  # scale-free


def test_numerical_gradient_of_a_cubic():
    """d/dx sum(x^3) = 3 x^2, known in closed form; x is restored afterwards."""
    x = _rng(0).standard_normal((4, 5))
    before = x.copy()
    numeric = numerical_gradient(lambda: float(np.sum(x**3)), x, H)
    assert np.array_equal(x, before)
    assert rel_error(numeric, 3 * x**2) <= GRAD_RTOL


def test_gradcheck_catches_a_small_error():
    """A gradient wrong in one entry by one part in 10^6 fails the bound the tests use (rel_error
    is then about 5e-7: half the perturbation, as the scale is |a| + |b|)."""
    x = _rng(1).standard_normal(20)
    numeric = numerical_gradient(lambda: float(np.sum(x**3)), x, H)
    wrong = 3 * x**2
    i = np.argmax(wrong)
    wrong[i] *= 1 + 1e-6
    assert rel_error(numeric, wrong) > 10 * GRAD_RTOL
    assert rel_error(numeric, 2 * x**2) > 0.1


# ---------------------------------------------------------------------------- layers


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_linear_forward_and_backward(bias):
    rng = _rng(2)
    x, w = rng.standard_normal((6, 4)), rng.standard_normal((3, 4))
    b = rng.standard_normal(3) if bias else None
    out, cache = layers.linear_forward(x, w, b)
    expected = np.einsum("ni,oi->no", x, w) + (b if bias else 0.0)
    assert out.shape == (6, 3)
    assert rel_error(out, expected) <= 1e-15

    dout = rng.standard_normal((6, 3))
    dx, dw, db = layers.linear_backward(dout, cache)
    inputs = {"x": x, "w": w, "b": b} if bias else {"x": x, "w": w}
    numeric = _numeric(layers.linear_forward, inputs, dout)
    assert rel_error(dx, numeric["x"]) <= GRAD_RTOL
    assert rel_error(dw, numeric["w"]) <= GRAD_RTOL
    if bias:
        assert rel_error(db, numeric["b"]) <= GRAD_RTOL
    else:
        assert db is None


def test_relu_forward_and_backward():
    rng = _rng(3)
    x = _away_from_zero(rng.standard_normal((5, 7)))
    out, cache = layers.relu_forward(x)
    assert np.array_equal(out, np.where(x > 0, x, 0.0))
    dout = rng.standard_normal((5, 7))
    dx = layers.relu_backward(dout, cache)
    assert rel_error(dx, _numeric(layers.relu_forward, {"x": x}, dout)["x"]) <= GRAD_RTOL


def test_relu_backward_is_zero_at_zero():
    """torch's convention: the gradient of relu at exactly 0 is 0."""
    dx = layers.relu_backward(np.ones(3), np.array([-1.0, 0.0, 1.0]))
    assert np.array_equal(dx, np.array([0.0, 0.0, 1.0]))


# ---------------------------------------------------------------------------- losses

LOSSES = {
    "sse": (losses.sse, lambda d: np.sum(d**2)),
    "mse": (losses.mse, lambda d: np.sum(d**2) / d.size),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_value_and_dpred(name):
    loss, formula = LOSSES[name]
    rng = _rng(4)
    pred, y = rng.standard_normal((8, 3)), rng.standard_normal((8, 3))
    value, dpred = loss(pred, y)
    assert value == pytest.approx(formula(pred - y), rel=1e-14)
    numeric = numerical_gradient(lambda: loss(pred, y)[0], pred, H)
    assert rel_error(dpred, numeric) <= GRAD_RTOL


# ---------------------------------------------------------------------------- mlp

# (in, hidden..., out) for depths 1 to 4.
MLP_SIZES = [(5, 3), (5, 7, 3), (5, 7, 6, 3), (5, 7, 6, 4, 3)]


def _mlp_params(sizes, bias: bool, rng) -> list[dict]:
    # 1/sqrt(fan_in) scaling keeps activations O(1) at every depth, so central differences stay
    # accurate (the error bound scales with |f| / |grad|).
    params = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        layer = {"weight": rng.standard_normal((fan_out, fan_in)) / np.sqrt(fan_in)}
        if bias:
            layer["bias"] = rng.standard_normal(fan_out)
        params.append(layer)
    return params


def test_mlp_forward_is_the_seeds_network():
    """Depth 2 written out as the seeds write it, with weights in torch.nn.Linear's (out, in) layout."""
    rng = _rng(5)
    params = _mlp_params((5, 7, 3), True, rng)
    x = rng.standard_normal((6, 5))
    (l1, l2) = params
    expected = np.maximum(x @ l1["weight"].T + l1["bias"], 0) @ l2["weight"].T + l2["bias"]
    out, _ = networks.mlp_forward(params, x)
    assert rel_error(out, expected) <= 1e-15


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("sizes", MLP_SIZES, ids=[f"depth{len(s) - 1}" for s in MLP_SIZES])
def test_mlp_backward(sizes, bias):
    rng = _rng(6 + len(sizes))
    params = _mlp_params(sizes, bias, rng)
    x = rng.standard_normal((8, sizes[0]))
    out, cache = networks.mlp_forward(params, x)
    dout = rng.standard_normal(out.shape)
    grads = networks.mlp_backward(dout, cache)

    assert [sorted(g) for g in grads] == [sorted(p) for p in params]

    def f():
        return float(np.sum(networks.mlp_forward(params, x)[0] * dout))

    for i, (layer, grad) in enumerate(zip(params, grads)):
        for key in layer:
            numeric = numerical_gradient(f, layer[key], H)
            err = rel_error(grad[key], numeric)
            assert err <= GRAD_RTOL, f"layer {i} {key}: relative error {err:.2e}"
