"""per_example_grads: vmap(grad) against the oracle, one example at a time."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

import functional_nn as fnn
from functional_nn._pytree import tree_map
from oracle import losses as olosses
from oracle.networks import loss_and_grads
from tests.helpers import assert_trees_close, to_numpy
from tests.tables import make_target, target_to_torch

N, SIZES = 5, [3, 4, 3]

CASES = [
    pytest.param("tanh", fnn.sse, olosses.sse, "regression", id="tanh-sse"),
    pytest.param("gelu", fnn.mse, olosses.mse, "regression", id="gelu-mse"),
    pytest.param(
        "softplus",
        partial(fnn.huber, delta=0.5),
        partial(olosses.huber, delta=0.5),
        "regression",
        id="softplus-huber",
    ),
    pytest.param("relu", fnn.cross_entropy, olosses.cross_entropy, "labels", id="relu-ce-labels"),
    pytest.param(
        "sigmoid", fnn.cross_entropy, olosses.cross_entropy, "probs", id="sigmoid-ce-probs"
    ),
    pytest.param(
        "leaky_relu",
        fnn.binary_cross_entropy_with_logits,
        olosses.binary_cross_entropy_with_logits,
        "binary",
        id="leaky-bce",
    ),
]


def _problem(kind, device):
    rng = np.random.default_rng(0)
    params = fnn.mlp(SIZES).init(0, dtype=torch.float64, device=device)
    x_np, y_np = rng.standard_normal((N, SIZES[0])), make_target(kind, (N, SIZES[-1]), rng)
    return params, x_np, y_np


@pytest.mark.parametrize("activation, loss, oracle_loss, kind", CASES)
def test_per_example_grads_match_the_oracle_example_by_example(
    activation, loss, oracle_loss, kind, device
):
    params, x_np, y_np = _problem(kind, device)
    net = fnn.mlp(SIZES, activation)
    x, y = torch.tensor(x_np, device=device), target_to_torch(y_np, device)
    grads = fnn.per_example_grads(params, x, y, model=net, loss=loss)
    for i in range(N):
        _, expected = loss_and_grads(
            to_numpy(params), x_np[i : i + 1], y_np[i : i + 1], oracle_loss, activation
        )
        assert_trees_close(
            tree_map(lambda g, i=i: g[i], grads), expected, rtol=1e-9, name=f"example {i}"
        )


@pytest.mark.parametrize("loss, kind", [(fnn.mse, "regression"), (fnn.cross_entropy, "labels")])
def test_mean_of_per_example_grads_is_the_batch_gradient(loss, kind, device):
    params, x_np, y_np = _problem(kind, device)
    net = fnn.mlp(SIZES, "tanh")
    x, y = torch.tensor(x_np, device=device), target_to_torch(y_np, device)
    per_example = fnn.per_example_grads(params, x, y, model=net, loss=loss)
    batch = torch.func.grad(lambda p: loss(net(p, x), y))(params)
    assert_trees_close(
        tree_map(lambda g: g.mean(0), per_example), batch, rtol=1e-13, name="mean of per-example"
    )


def test_per_example_grads_of_a_module_match_autograd_one_example_at_a_time(device):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 2)).double().to(device)
    net, params = fnn.from_module(module)
    x = torch.randn(N, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(
        device
    )
    y = torch.tensor([0, 1, 1, 0, 1], device=device)
    grads = fnn.per_example_grads(params, x, y, model=net.apply, loss=fnn.cross_entropy)
    for i in range(N):
        module.zero_grad()
        torch.nn.functional.cross_entropy(module(x[i : i + 1]), y[i : i + 1]).backward()
        expected = {name: p.grad for name, p in module.named_parameters()}
        assert_trees_close(
            tree_map(lambda g, i=i: g[i], grads), expected, rtol=1e-14, name=f"example {i}"
        )


def test_model_must_be_a_network_or_a_callable():
    with pytest.raises(
        TypeError, match=r"model must be a Network or a callable apply\(params, x\), got int"
    ):
        fnn.per_example_grads([], torch.zeros(2, 3), torch.zeros(2, 3), model=3)


@pytest.mark.parametrize(
    "x, y, loss, error, message",
    [
        pytest.param(
            torch.zeros(5, 3),
            torch.zeros(4, 3),
            fnn.sse,
            ValueError,
            r"same number of rows.*\(5, 3\).*\(4, 3\)",
            id="rows",
        ),
        pytest.param(
            np.zeros((5, 3)),
            torch.zeros(5, 3),
            fnn.sse,
            TypeError,
            r"x must be a torch.Tensor, got ndarray",
            id="x-type",
        ),
        pytest.param(
            torch.zeros(5, 2),
            torch.zeros(5, 3),
            fnn.sse,
            ValueError,
            r"x has shape \(5, 2\), but the first layer expects 3",
            id="x-width",
        ),
        pytest.param(
            torch.zeros(5, 3),
            torch.tensor([0, 1, 2, 3, 0]),
            fnn.cross_entropy,
            ValueError,
            r"class labels for 3 classes must lie in \[0, 2\], got values from 0 to 3",
            id="labels",
        ),
        pytest.param(
            torch.zeros(5, 3),
            torch.zeros(5, 1),
            fnn.mse,
            ValueError,
            r"mse: target has shape \(5, 1\), but pred has shape \(5, 3\)",
            id="target-shape",
        ),
    ],
)
def test_bad_input_is_rejected_before_any_work(x, y, loss, error, message):
    net, real_calls = fnn.mlp(SIZES), []

    def spy(params, x):  # shape tracing runs on meta tensors; real work does not
        real_calls.append(x.device.type != "meta")
        return net.apply(params, x)

    model = fnn.Network(init=net.init, apply=spy, check=net.check)
    with pytest.raises(error, match=message):
        fnn.per_example_grads(net.init(0), x, y, model=model, loss=loss)
    assert not any(real_calls)
