"""mlp options, dense, serial and eval_shape: values and gradients against the oracle, and the
checks that name the layer and both shapes."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

import functional_nn as fnn
from functional_nn import layers
from functional_nn._pytree import tree_map
from oracle import layers as olayers
from oracle import losses as olosses
from oracle.networks import loss_and_grads, mlp_forward
from tests.helpers import assert_trees_close, to_numpy


def _x(n=5, d=3, seed=0, device="cpu"):
    return torch.tensor(np.random.default_rng(seed).standard_normal((n, d)), device=device)


@pytest.mark.parametrize(
    "activation, output_activation, oracle_act, oracle_out",
    [
        pytest.param("tanh", "sigmoid", "tanh", "sigmoid", id="tanh-sigmoid"),
        pytest.param(
            partial(layers.leaky_relu, negative_slope=0.3),
            "softplus",
            (partial(olayers.leaky_relu_forward, negative_slope=0.3), olayers.leaky_relu_backward),
            "softplus",
            id="leaky(0.3)-softplus",
        ),
        pytest.param("gelu", None, "gelu", None, id="gelu-none"),
    ],
)
@pytest.mark.parametrize("bias", [True, False])
def test_mlp_output_activation_and_bias_match_the_oracle(
    activation, output_activation, oracle_act, oracle_out, bias, device
):
    net = fnn.mlp([3, 6, 4, 2], activation, bias=bias, output_activation=output_activation)
    params = net.init(1, dtype=torch.float64, device=device)
    x, y = _x(device=device), _x(d=2, seed=1, device=device)
    grads, value = torch.func.grad_and_value(lambda p: fnn.mse(net(p, x), y))(params)
    out, _ = mlp_forward(to_numpy(params), x.cpu().numpy(), oracle_act, oracle_out)
    oracle_value, oracle_grads = loss_and_grads(
        to_numpy(params), x.cpu().numpy(), y.cpu().numpy(), olosses.mse, oracle_act, oracle_out
    )
    assert_trees_close(net(params, x), out, rtol=1e-13, name="mlp output")
    assert_trees_close(value, np.array(oracle_value), rtol=1e-13, name="loss")
    assert_trees_close(grads, oracle_grads, rtol=1e-10, name="grads")


def test_dense_is_one_linear_layer():
    net = fnn.dense(3, 4, init="torch")
    params = net.init(0, dtype=torch.float64)
    x = _x()
    assert sorted(params) == ["bias", "weight"] and params["weight"].shape == (4, 3)
    assert torch.equal(net(params, x), x @ params["weight"].T + params["bias"])
    assert list(fnn.dense(3, 4, bias=False).init(0)) == ["weight"]


def test_serial_of_dense_layers_is_the_mlp():
    """Same seed, same draws, same outputs and gradients: serial(dense, act, dense) is mlp."""
    chained = fnn.serial(fnn.dense(3, 5), "tanh", fnn.dense(5, 2))
    net = fnn.mlp([3, 5, 2], "tanh")
    p_chain, p_mlp = chained.init(4, dtype=torch.float64), net.init(4, dtype=torch.float64)
    assert p_chain[1] == {}
    assert_trees_close([p_chain[0], p_chain[2]], p_mlp, rtol=0.0, name="serial params")
    x, y = _x(), _x(d=2, seed=1)
    g_chain = torch.func.grad(lambda p: fnn.sse(chained(p, x), y))(p_chain)
    g_mlp = torch.func.grad(lambda p: fnn.sse(net(p, x), y))(p_mlp)
    assert torch.equal(chained(p_chain, x), net(p_mlp, x))
    assert g_chain[1] == {}
    assert_trees_close([g_chain[0], g_chain[2]], g_mlp, rtol=0.0, name="serial grads")


def test_serial_nests_networks_pairs_and_callables(device):
    scale = (
        lambda generator, **_: {"s": torch.full((2,), 3.0, dtype=torch.float64)},
        lambda p, x: p["s"] * x,
    )
    inner = fnn.mlp([3, 4, 2], "sigmoid")
    net = fnn.serial(inner, torch.tanh, scale, fnn.serial("relu"))
    params = net.init(2, dtype=torch.float64)
    params = tree_map(lambda t: t.to(device), params)
    x = _x(device=device)
    expected = torch.relu(3.0 * torch.tanh(inner(params[0], x)))
    assert_trees_close(net(params, x), expected, rtol=0.0, name="serial output")
    net.check(params, x)


def test_eval_shape_traces_without_arithmetic():
    net = fnn.serial(fnn.mlp([3, 4, 7]), "relu", fnn.dense(7, 2))
    params = net.init(0)
    x = torch.zeros(11, 3)
    assert fnn.eval_shape(net, params, x) == (11, 2) == net(params, x).shape
    meta_params = tree_map(lambda t: t.to("meta"), params)
    assert fnn.eval_shape(net.apply, meta_params, x.to("meta")) == (11, 2)


def _mlp_params():
    return fnn.mlp([3, 4, 2]).init(0)


def _bad_mlp_params(edit):
    params = _mlp_params()
    edit(params)
    return params


MLP_CHECKS = [
    pytest.param(
        _bad_mlp_params(lambda p: p.pop()),
        r"params must be a list of 2 layer dicts, got a list of 1",
        id="depth",
    ),
    pytest.param(
        _bad_mlp_params(lambda p: p[1].pop("bias")),
        r"layer 1: params\[1\] has keys \['weight'\], expected \['bias', 'weight'\]",
        id="keys",
    ),
    pytest.param(
        _bad_mlp_params(lambda p: p[1].update(weight=torch.zeros(2, 5))),
        r"layer 1: params\[1\]\['weight'\] has shape \(2, 5\), expected \(2, 4\)",
        id="shape",
    ),
]


@pytest.mark.parametrize("params, message", MLP_CHECKS)
def test_mlp_check_names_the_layer_and_both_shapes(params, message):
    with pytest.raises(ValueError, match=message):
        fnn.mlp([3, 4, 2]).check(params, torch.zeros(5, 3))


def _serial():
    return fnn.serial(fnn.dense(3, 4), "relu", fnn.mlp([4, 6, 2]))


SERIAL_CHECKS = [
    pytest.param(
        lambda p: p[:2],
        torch.zeros(5, 3),
        r"list of 3 entries, one per serial layer, got a list of 2",
        id="length",
    ),
    pytest.param(
        lambda p: [p[0], {"w": torch.ones(1)}, p[2]],
        torch.zeros(5, 3),
        r"serial layer 1: an activation layer has no params.*\{'w'",
        id="activation",
    ),
    pytest.param(
        lambda p: [p[0], p[1], [p[2][0]]],
        torch.zeros(5, 3),
        r"serial layer 2: params must be a list of 2 layer dicts",
        id="inner-mlp",
    ),
    pytest.param(
        lambda p: [{"weight": torch.zeros(5, 3), "bias": torch.zeros(5)}, p[1], p[2]],
        torch.zeros(5, 3),
        r"serial layer 0: params\['weight'\] has shape \(5, 3\), expected \(4, 3\)",
        id="dense-shape",
    ),
    pytest.param(
        lambda p: p,
        torch.zeros(5, 2),
        r"serial layer 0: x has shape \(5, 2\), but the first layer expects 3 features",
        id="x",
    ),
]


@pytest.mark.parametrize("edit, x, message", SERIAL_CHECKS)
def test_serial_check_names_the_layer(edit, x, message):
    net = _serial()
    with pytest.raises(ValueError, match=message):
        net.check(edit(net.init(0)), x)


def test_serial_check_finds_shape_mismatches_inside_layers_of_your_own():
    project = (lambda generator, **_: {"w": torch.zeros(5, 2)}, lambda p, x: x @ p["w"])
    net = fnn.serial(fnn.dense(3, 4), project)
    with pytest.raises(ValueError, match=r"serial layer 1: input of shape \(5, 4\) does not fit"):
        net.check(net.init(0), torch.zeros(5, 3))


@pytest.mark.parametrize(
    "call, error, message",
    [
        pytest.param(
            lambda: fnn.mlp([3, 4], activation="swish"),
            ValueError,
            r"Unknown activation 'swish'.*'gelu'",
            id="activation",
        ),
        pytest.param(
            lambda: fnn.mlp([3, 4], output_activation="soft"),
            ValueError,
            r"Unknown activation 'soft'",
            id="output_activation",
        ),
        pytest.param(
            lambda: fnn.mlp([3]),
            ValueError,
            r"sizes must be at least two positive ints.*\(3,\)",
            id="sizes",
        ),
        pytest.param(lambda: fnn.dense(3, 0), ValueError, r"positive ints.*\(3, 0\)", id="dense"),
        pytest.param(
            lambda: fnn.serial(), ValueError, r"serial needs at least one layer", id="empty"
        ),
        pytest.param(
            lambda: fnn.serial(fnn.dense(2, 2), 3.0),
            TypeError,
            r"serial layer 1 must be a Network.*float",
            id="type",
        ),
        pytest.param(
            lambda: fnn.serial(torch.nn.Linear(2, 2)),
            TypeError,
            r"serial layer 0 is a torch.nn.Module \(Linear\).*from_module",
            id="module",
        ),
    ],
)
def test_bad_network_arguments_are_rejected(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.slow
def test_new_layers_and_losses_compile_with_fullgraph():
    """One graph for grad of an mlp with non-default activations under both new losses: no
    Python branching on tensor values and no host syncs in the hot path."""
    net = fnn.mlp(
        [3, 8, 4], partial(layers.leaky_relu, negative_slope=0.2), output_activation="gelu"
    )
    params = net.init(0)
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    labels, soft = (
        torch.arange(16) % 4,
        torch.rand(16, 4, generator=torch.Generator().manual_seed(1)),
    )

    def loss(p):
        pred = net(p, x)
        return fnn.cross_entropy(pred, labels) + fnn.binary_cross_entropy_with_logits(pred, soft)

    step = torch.func.grad(loss)

    # float32 kernels fused differently round differently: a few ulps of the gradients' scale.
    assert_trees_close(
        torch.compile(step, fullgraph=True)(params), step(params), rtol=1e-5, name="compiled grads"
    )


def test_mlp_check_rejects_a_leaf_that_is_not_a_tensor():
    params = _bad_mlp_params(lambda p: p[0].update(weight=[[0.0] * 3] * 4))
    with pytest.raises(
        TypeError,
        match=r"layer 0: params\[0\]\['weight'\] must be a tensor of shape \(4, 3\), got list",
    ):
        fnn.mlp([3, 4, 2]).check(params, torch.zeros(5, 3))
