"""Every activation x every loss: an mlp's gradient three ways, in float64.

For each pair the oracle's hand-derived backward is first checked against central differences of
the oracle's own forward; then functional_nn's `torch.func.grad` is checked against the oracle and,
independently, against central differences of functional_nn's own loss.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import functional_nn as fnn
from oracle.gradcheck import numerical_gradient
from oracle.networks import loss_and_grads
from tests.helpers import assert_trees_close, to_numpy, to_torch
from tests.tables import ACTIVATIONS, LOSSES, make_target, target_to_torch

SIZES = [3, 5, 4, 3]
N = 6


def _problem(kind: str, device):
    """Params, x and a target for `kind`, the same numbers on every device."""
    rng = np.random.default_rng(0)
    params = fnn.mlp(SIZES).init(0, dtype=torch.float64, device=device)
    x = rng.standard_normal((N, SIZES[0]))
    target = make_target(kind, (N, SIZES[-1]), rng)
    return params, x, target


def _central_differences(value, params_np):
    """d value / d params by central differences, leaf by leaf (value reads params_np)."""
    return [
        {k: numerical_gradient(value, leaf) for k, leaf in layer.items()} for layer in params_np
    ]


def gradient_errors(act, oracle_act, loss, oracle_loss, kind, device) -> dict[str, float]:
    """The worst relative errors of one activation x loss pair; asserts the bounds as it goes."""
    params, x_np, target_np = _problem(kind, device)
    net = fnn.mlp(SIZES, activation=act)
    x, target = torch.tensor(x_np, device=device), target_to_torch(target_np, device)

    grads, value = torch.func.grad_and_value(lambda p: loss(net(p, x), target))(params)
    oracle_value, oracle_grads = loss_and_grads(
        to_numpy(params), x_np, target_np, oracle_loss, oracle_act
    )

    p_np = to_numpy(params)
    oracle_fd = _central_differences(
        lambda: loss_and_grads(p_np, x_np, target_np, oracle_loss, oracle_act)[0], p_np
    )
    q_np = to_numpy(params)
    ours_fd = _central_differences(
        lambda: float(loss(net(to_torch(q_np, device=device), x), target)), q_np
    )

    return {
        "value": assert_trees_close(
            value, np.array(oracle_value), rtol=1e-12, name="loss vs oracle"
        ),
        "oracle vs fd": assert_trees_close(
            oracle_grads, oracle_fd, rtol=1e-6, name="oracle vs central differences"
        ),
        "grad vs oracle": assert_trees_close(
            grads, oracle_grads, rtol=1e-9, name="torch.func.grad vs oracle"
        ),
        "grad vs fd": assert_trees_close(
            grads, ours_fd, rtol=1e-6, name="torch.func.grad vs central differences"
        ),
    }


# softmax over dim 0 mixes the batch, and a bias shifts a whole column, which that softmax does not
# see: the bias gradient is exactly 0, where a relative error is meaningless. Its dim is checked
# element-wise in test_layers.py.
MLP_ACTIVATIONS = [a for a in ACTIVATIONS if a.id != "softmax(dim=0)"]


@pytest.mark.parametrize("loss, oracle_loss, reference, kind", LOSSES)
@pytest.mark.parametrize("act, oracle_act", MLP_ACTIVATIONS)
def test_mlp_gradient_three_ways(act, oracle_act, loss, oracle_loss, reference, kind, device):
    gradient_errors(act, oracle_act, loss, oracle_loss, kind, device)
