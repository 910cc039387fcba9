"""conv2d, max_pool2d, flatten, embedding three ways, float64: the naive numpy oracle against
central differences, functional_nn (torch.func.grad) against the oracle and torch.nn.functional."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from functional_nn import layers
from oracle import conv as oconv
from oracle.gradcheck import numerical_gradient, rel_error
from tests.helpers import assert_trees_close

# (C_in, C_out, kernel, stride, padding, dilation, groups, bias)
CONVS = [
    pytest.param(2, 3, (3, 3), 1, 0, 1, 1, True, id="plain"),
    pytest.param(2, 4, (3, 2), (2, 1), (1, 2), 1, 1, False, id="stride-pad-nobias"),
    pytest.param(2, 2, (2, 3), 1, 1, (2, 1), 1, True, id="dilation"),
    pytest.param(4, 6, (3, 3), 2, 1, 1, 2, True, id="groups"),
    pytest.param(3, 3, (3, 3), 1, 1, 1, 3, True, id="depthwise"),
]


def _conv_case(c_in, c_out, kernel, groups, bias, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, c_in, 7, 6))
    w = rng.standard_normal((c_out, c_in // groups, *kernel))
    b = rng.standard_normal(c_out) if bias else None
    return x, w, b


@pytest.mark.parametrize("c_in, c_out, kernel, stride, padding, dilation, groups, bias", CONVS)
def test_conv2d_oracle_matches_central_differences(
    c_in, c_out, kernel, stride, padding, dilation, groups, bias
):
    x, w, b = _conv_case(c_in, c_out, kernel, groups, bias, 0)
    opts = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    out, cache = oconv.conv2d_forward(x, w, b, **opts)
    dout = np.random.default_rng(1).standard_normal(out.shape)
    dx, dw, db = oconv.conv2d_backward(dout, cache)

    def value():
        return float(np.sum(oconv.conv2d_forward(x, w, b, **opts)[0] * dout))

    # central differences with h = 1e-6 on a bilinear function: rounding only, ~1e-9 relative.
    assert rel_error(dx, numerical_gradient(value, x)) <= 1e-8
    assert rel_error(dw, numerical_gradient(value, w)) <= 1e-8
    if bias:
        assert rel_error(db, numerical_gradient(value, b)) <= 1e-8


@pytest.mark.parametrize("c_in, c_out, kernel, stride, padding, dilation, groups, bias", CONVS)
def test_conv2d_and_its_gradients_match_the_oracle_and_torch(
    c_in, c_out, kernel, stride, padding, dilation, groups, bias, device
):
    x, w, b = _conv_case(c_in, c_out, kernel, groups, bias, 2)
    opts = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    out, cache = oconv.conv2d_forward(x, w, b, **opts)
    dout = np.random.default_rng(3).standard_normal(out.shape)
    expected = oconv.conv2d_backward(dout, cache)
    params = {"weight": torch.tensor(w, device=device)}
    if bias:
        params["bias"] = torch.tensor(b, device=device)
    xt, dt = torch.tensor(x, device=device), torch.tensor(dout, device=device)

    def loss(p, x_):
        return (layers.conv2d(p, x_, **opts) * dt).sum()

    def ref_loss(p, x_):
        return (F.conv2d(x_, p["weight"], p.get("bias"), **opts) * dt).sum()

    grads = torch.func.grad(loss, argnums=(0, 1))(params, xt)
    ref_grads = torch.func.grad(ref_loss, argnums=(0, 1))(params, xt)
    ours = [grads[1], grads[0]["weight"]] + ([grads[0]["bias"]] if bias else [])
    oracle = [expected[0], expected[1]] + ([expected[2]] if bias else [])
    assert_trees_close(layers.conv2d(params, xt, **opts), out, rtol=1e-13, name="conv2d")
    assert_trees_close(ours, oracle, rtol=1e-12, name="d conv2d vs oracle")
    assert_trees_close(grads, ref_grads, rtol=1e-13, name="d conv2d vs torch")


# (kernel, stride, padding, dilation)
POOLS = [
    pytest.param(2, None, 0, 1, id="2x2"),
    pytest.param((3, 2), (2, 1), (1, 1), 1, id="overlap-pad"),
    pytest.param(2, 1, 0, 2, id="dilation"),
]


@pytest.mark.parametrize("kernel, stride, padding, dilation", POOLS)
def test_max_pool2d_three_ways(kernel, stride, padding, dilation, device):
    # a permutation: no two inputs are equal, so no window has a tie.
    x = np.random.default_rng(4).permutation(2 * 3 * 7 * 6).reshape(2, 3, 7, 6) / 10.0
    opts = dict(stride=stride, padding=padding, dilation=dilation)
    out, cache = oconv.max_pool2d_forward(x, kernel, **opts)
    dout = np.random.default_rng(5).standard_normal(out.shape)
    dx = oconv.max_pool2d_backward(dout, cache)
    numeric = numerical_gradient(
        lambda: float(np.sum(oconv.max_pool2d_forward(x, kernel, **opts)[0] * dout)), x
    )
    assert rel_error(dx, numeric) <= 1e-8  # piecewise linear, inputs 0.1 apart: h = 1e-6 is safe
    xt, dt = torch.tensor(x, device=device), torch.tensor(dout, device=device)
    grad = torch.func.grad(lambda t: (layers.max_pool2d(t, kernel, **opts) * dt).sum())(xt)
    ref = torch.func.grad(lambda t: (F.max_pool2d(t, kernel, **opts) * dt).sum())(xt)
    assert_trees_close(layers.max_pool2d(xt, kernel, **opts), out, rtol=0.0, name="max_pool2d")
    assert_trees_close(F.max_pool2d(xt, kernel, **opts), out, rtol=0.0, name="torch max_pool2d")
    # overlapping windows add their gradients in another order: one rounding.
    assert_trees_close(grad, dx, rtol=1e-15, name="d max_pool2d vs oracle")
    assert_trees_close(grad, ref, rtol=1e-15, name="d max_pool2d vs torch")


def test_max_pool2d_sends_a_tie_to_the_first_maximum_in_row_major_order():
    x = torch.tensor([[[[1.0, 2.0], [2.0, 2.0]]]], dtype=torch.float64)
    grad = torch.func.grad(lambda t: layers.max_pool2d(t, 2).sum())(x)
    _, cache = oconv.max_pool2d_forward(x.numpy(), 2)
    assert grad.tolist() == [[[[0.0, 1.0], [0.0, 0.0]]]]
    assert grad.numpy().tolist() == oconv.max_pool2d_backward(np.ones((1, 1, 1, 1)), cache).tolist()


def test_flatten_three_ways():
    x = np.random.default_rng(6).standard_normal((2, 3, 4, 5))
    out, cache = oconv.flatten_forward(x)
    dout = np.random.default_rng(7).standard_normal(out.shape)
    xt = torch.tensor(x)
    grad = torch.func.grad(lambda t: (layers.flatten(t) * torch.tensor(dout)).sum())(xt)
    assert layers.flatten(xt).shape == (2, 60)
    assert torch.equal(layers.flatten(xt), torch.flatten(xt, 1))
    assert_trees_close(layers.flatten(xt), out, rtol=0.0, name="flatten")
    assert_trees_close(grad, oconv.flatten_backward(dout, cache), rtol=0.0, name="d flatten")


@pytest.mark.parametrize("padding_idx", [None, 2, -1])
def test_embedding_three_ways(padding_idx, device):
    rng = np.random.default_rng(8)
    w = rng.standard_normal((5, 3))
    idx = np.array([[0, 2, 4, 2], [1, 4, 4, 0]])
    pad = None if padding_idx is None else padding_idx % 5
    out, cache = oconv.embedding_forward(w, idx, pad)
    dout = rng.standard_normal(out.shape)
    dw = oconv.embedding_backward(dout, cache)
    numeric = numerical_gradient(
        lambda: float(np.sum(oconv.embedding_forward(w, idx)[0] * dout)), w
    )
    if pad is not None:
        numeric[pad] = 0.0  # the padding row's gradient is 0 by definition, not by calculus
    assert rel_error(dw, numeric) <= 1e-9
    wt, it, dt = (torch.tensor(a, device=device) for a in (w, idx, dout))
    grad = torch.func.grad(lambda p: (layers.embedding(p, it, padding_idx=padding_idx) * dt).sum())(
        {"weight": wt}
    )
    ref = torch.func.grad(lambda t: (F.embedding(it, t, padding_idx=pad) * dt).sum())(wt)
    assert_trees_close(layers.embedding({"weight": wt}, it, padding_idx), out, rtol=0.0)
    assert_trees_close(grad["weight"], dw, rtol=1e-15, name="d embedding vs oracle")
    assert_trees_close(grad["weight"], ref, rtol=1e-15, name="d embedding vs torch")


@pytest.mark.parametrize(
    "call, message",
    [
        pytest.param(
            lambda: layers.max_pool2d(torch.ones(1, 1, 4, 4), 2, padding=2),
            "padding must be at most half",
            id="pool-pad",
        ),
        pytest.param(
            lambda: layers.max_pool2d(torch.ones(4, 4), 2),
            r"x must be \(N, C, H, W\)",
            id="pool-ndim",
        ),
        pytest.param(
            lambda: layers.max_pool2d(torch.ones(1, 1, 4, 4), (2, 2, 2)),
            "kernel_size must be an int or a pair",
            id="pool-pair",
        ),
        pytest.param(
            lambda: layers.embedding(
                {"weight": torch.ones(3, 2)}, torch.tensor([0]), padding_idx=3
            ),
            r"padding_idx must lie in \[-3, 3\)",
            id="emb-pad",
        ),
    ],
)
def test_bad_layer_options_are_rejected(call, message):
    with pytest.raises(ValueError, match=message):
        call()
