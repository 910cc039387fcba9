"""torch.func.grad of functional_nn's losses against the oracle's hand-derived backward.

float64 throughout. The oracle is itself checked against central differences in test_oracle.py;
here torch.func.grad must agree with it to rounding (rel_error <= 1e-10; measured at most a few
times 1e-16), and on a small net all three (oracle, torch.func.grad, central differences) agree.
"""

from __future__ import annotations

import pytest
import torch

import functional_nn as fnn
from functional_nn._pytree import tree_leaves
from oracle import losses as oracle_losses
from oracle.gradcheck import numerical_gradient, rel_error
from oracle.networks import loss_and_grads
from tests.helpers import assert_trees_close, to_numpy, to_torch

GRAD_RTOL = 1e-10

# (in, hidden..., out) for depths 1 to 4.
MLP_SIZES = [(12, 5), (12, 16, 5), (12, 16, 9, 5), (12, 16, 9, 7, 5)]
LOSSES = {"sse": (fnn.sse, oracle_losses.sse), "mse": (fnn.mse, oracle_losses.mse)}


def _problem(sizes, bias: bool, seed: int, device):
    """An mlp, its float64 params (init="normal", as the seeds) and data (N = 10) on `device`."""
    net = fnn.mlp(sizes, bias=bias)
    params = net.init(seed, dtype=torch.float64, device=device)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(10, sizes[0], generator=g, dtype=torch.float64).to(device)
    y = torch.randn(10, sizes[-1], generator=g, dtype=torch.float64).to(device)
    return net, params, x, y


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("sizes", MLP_SIZES, ids=[f"depth{len(s) - 1}" for s in MLP_SIZES])
def test_grad_matches_oracle(sizes, bias, loss_name, device):
    loss, oracle_loss = LOSSES[loss_name]
    net, params, x, y = _problem(sizes, bias, seed=len(sizes), device=device)

    grads, value = torch.func.grad_and_value(lambda p: loss(net.apply(p, x), y))(params)
    expected_value, expected_grads = loss_and_grads(
        to_numpy(params), to_numpy(x), to_numpy(y), oracle_loss
    )

    assert all(g.device == x.device and g.dtype == torch.float64 for g in tree_leaves(grads))
    assert_trees_close(grads, expected_grads, rtol=GRAD_RTOL, name="torch.func.grad")
    assert rel_error(value.cpu().numpy(), expected_value) <= GRAD_RTOL


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_grad_three_ways(bias, device):
    """Oracle, torch.func.grad and central differences of functional_nn's own loss on a small net.

    Central differences (h = 1e-6) carry a relative error near 1e-10 here (see test_oracle.py),
    hence their looser bound.
    """
    net, params, x, y = _problem((4, 6, 3), bias, seed=11, device=device)
    grads = torch.func.grad(lambda p: fnn.sse(net.apply(p, x), y))(params)
    _, oracle_grads = loss_and_grads(to_numpy(params), to_numpy(x), to_numpy(y), oracle_losses.sse)

    params_np = to_numpy(params)

    def f():
        return fnn.sse(net.apply(to_torch(params_np, device=device), x), y).item()

    numeric = [{k: numerical_gradient(f, v, 1e-6) for k, v in layer.items()} for layer in params_np]

    assert_trees_close(grads, oracle_grads, rtol=GRAD_RTOL, name="torch.func.grad vs oracle")
    assert_trees_close(grads, numeric, rtol=1e-8, name="torch.func.grad vs central differences")
    assert_trees_close(oracle_grads, numeric, rtol=1e-8, name="oracle vs central differences")


def test_grad_of_a_wrong_network_fails():
    """The comparison discriminates: dropping the relu changes the gradient far beyond the bound."""
    _net, params, x, y = _problem((12, 16, 5), True, seed=3, device="cpu")
    linear_net = fnn.mlp((12, 16, 5), activation="identity")
    grads = torch.func.grad(lambda p: fnn.sse(linear_net.apply(p, x), y))(params)
    _, expected = loss_and_grads(to_numpy(params), x.numpy(), y.numpy(), oracle_losses.sse)
    with pytest.raises(AssertionError, match="relative error"):
        assert_trees_close(grads, expected, rtol=GRAD_RTOL)
