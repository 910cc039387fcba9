"""The tables the tests cross: each activation and loss entry pairs a functional_nn function with
its oracle and, for losses, torch.nn.functional's counterpart and the kind of target it takes; the
optimizers with their stateful options on, and the params tree the optimizer tests step."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from functional_nn import layers, losses, optim
from oracle import activations as oacts
from oracle import layers as olayers
from oracle import losses as olosses

# (functional_nn activation, oracle (forward, backward)): torch's defaults, then other settings.
ACTIVATIONS = [
    pytest.param(layers.relu, (olayers.relu_forward, olayers.relu_backward), id="relu"),
    pytest.param(
        layers.leaky_relu,
        (olayers.leaky_relu_forward, olayers.leaky_relu_backward),
        id="leaky_relu",
    ),
    pytest.param(
        partial(layers.leaky_relu, negative_slope=0.2),
        (partial(olayers.leaky_relu_forward, negative_slope=0.2), olayers.leaky_relu_backward),
        id="leaky_relu(0.2)",
    ),
    pytest.param(layers.tanh, (olayers.tanh_forward, olayers.tanh_backward), id="tanh"),
    pytest.param(layers.sigmoid, (olayers.sigmoid_forward, olayers.sigmoid_backward), id="sigmoid"),
    pytest.param(layers.gelu, (olayers.gelu_forward, olayers.gelu_backward), id="gelu"),
    pytest.param(
        partial(layers.gelu, approximate="tanh"),
        (partial(olayers.gelu_forward, approximate="tanh"), olayers.gelu_backward),
        id="gelu(tanh)",
    ),
    pytest.param(
        layers.softplus, (olayers.softplus_forward, olayers.softplus_backward), id="softplus"
    ),
    # threshold 1 puts much of the input in the linear region, so both branches are checked.
    pytest.param(
        partial(layers.softplus, beta=2.0, threshold=1.0),
        (partial(olayers.softplus_forward, beta=2.0, threshold=1.0), olayers.softplus_backward),
        id="softplus(2,1)",
    ),
    pytest.param(
        layers.identity, (olayers.identity_forward, olayers.identity_backward), id="identity"
    ),
    pytest.param(layers.silu, (oacts.silu_forward, oacts.silu_backward), id="silu"),
    pytest.param(layers.mish, (oacts.mish_forward, oacts.mish_backward), id="mish"),
    pytest.param(layers.elu, (oacts.elu_forward, oacts.elu_backward), id="elu"),
    pytest.param(
        partial(layers.elu, alpha=2.0),
        (partial(oacts.elu_forward, alpha=2.0), oacts.elu_backward),
        id="elu(2)",
    ),
    pytest.param(layers.selu, (oacts.selu_forward, oacts.selu_backward), id="selu"),
    pytest.param(
        layers.hardswish, (oacts.hardswish_forward, oacts.hardswish_backward), id="hardswish"
    ),
    pytest.param(
        layers.logsigmoid, (oacts.logsigmoid_forward, oacts.logsigmoid_backward), id="logsigmoid"
    ),
    pytest.param(layers.softmax, (oacts.softmax_forward, oacts.softmax_backward), id="softmax"),
    pytest.param(
        partial(layers.softmax, dim=0),
        (partial(oacts.softmax_forward, dim=0), oacts.softmax_backward),
        id="softmax(dim=0)",
    ),
    pytest.param(
        layers.log_softmax,
        (oacts.log_softmax_forward, oacts.log_softmax_backward),
        id="log_softmax",
    ),
]

# torch.nn.functional's counterpart of each activation id above (the third way).
TORCH_ACTIVATIONS = {
    "relu": F.relu,
    "leaky_relu": F.leaky_relu,
    "leaky_relu(0.2)": partial(F.leaky_relu, negative_slope=0.2),
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "gelu": F.gelu,
    "gelu(tanh)": partial(F.gelu, approximate="tanh"),
    "softplus": F.softplus,
    "softplus(2,1)": partial(F.softplus, beta=2.0, threshold=1.0),
    "identity": lambda x: x,
    "silu": F.silu,
    "mish": F.mish,
    "elu": F.elu,
    "elu(2)": partial(F.elu, alpha=2.0),
    "selu": F.selu,
    "hardswish": F.hardswish,
    "logsigmoid": F.logsigmoid,
    "softmax": partial(F.softmax, dim=-1),
    "softmax(dim=0)": partial(F.softmax, dim=0),
    "log_softmax": partial(F.log_softmax, dim=-1),
}

# (functional_nn loss, oracle loss, torch.nn.functional reference, target kind).
LOSSES = [
    pytest.param(
        losses.sse, olosses.sse, partial(F.mse_loss, reduction="sum"), "regression", id="sse"
    ),
    pytest.param(losses.mse, olosses.mse, F.mse_loss, "regression", id="mse"),
    pytest.param(losses.l1, olosses.l1, F.l1_loss, "regression", id="l1"),
    pytest.param(
        partial(losses.huber, delta=0.5),
        partial(olosses.huber, delta=0.5),
        partial(F.huber_loss, delta=0.5),
        "regression",
        id="huber(0.5)",
    ),
    pytest.param(
        losses.cross_entropy,
        olosses.cross_entropy,
        F.cross_entropy,
        "labels",
        id="cross_entropy(labels)",
    ),
    pytest.param(
        losses.cross_entropy,
        olosses.cross_entropy,
        F.cross_entropy,
        "probs",
        id="cross_entropy(probs)",
    ),
    pytest.param(
        losses.binary_cross_entropy_with_logits,
        olosses.binary_cross_entropy_with_logits,
        F.binary_cross_entropy_with_logits,
        "binary",
        id="bce_with_logits",
    ),
    pytest.param(
        partial(losses.smooth_l1, beta=0.5),
        partial(olosses.smooth_l1, beta=0.5),
        partial(F.smooth_l1_loss, beta=0.5),
        "regression",
        id="smooth_l1(0.5)",
    ),
    pytest.param(losses.nll, olosses.nll, F.nll_loss, "labels", id="nll"),
    pytest.param(
        partial(losses.kl_div, reduction="batchmean"),
        partial(olosses.kl_div, reduction="batchmean"),
        partial(F.kl_div, reduction="batchmean"),
        "probs",
        id="kl_div(batchmean)",
    ),
    pytest.param(
        losses.poisson_nll, olosses.poisson_nll, F.poisson_nll_loss, "regression", id="poisson_nll"
    ),
]

SUM_LOSSES = [  # the same losses with reduction="sum", where torch has the option
    pytest.param(
        partial(fn, reduction="sum"),
        partial(ofn, reduction="sum"),
        partial(ref, reduction="sum"),
        kind,
        id=f"{case.id}-sum",
    )
    for case in LOSSES[1:]
    if case.id != "kl_div(batchmean)"
    for fn, ofn, ref, kind in [case.values]
]


def make_target(kind: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A target of `kind` for predictions of `shape` (N, C): float64, or int64 class labels."""
    n, c = shape
    if kind == "regression":
        return rng.standard_normal(shape)
    if kind == "labels":
        return rng.integers(0, c, size=n)
    if kind == "probs":
        e = np.exp(rng.standard_normal(shape))
        return e / e.sum(axis=1, keepdims=True)
    if kind == "binary":
        return rng.uniform(0.0, 1.0, size=shape)
    raise ValueError(kind)


def target_to_torch(target: np.ndarray, device, dtype=torch.float64) -> torch.Tensor:
    """The target as a tensor on `device`: int64 labels stay integers, the rest take `dtype`."""
    if np.issubdtype(target.dtype, np.integer):
        return torch.tensor(target, dtype=torch.int64, device=device)
    return torch.tensor(target, dtype=dtype, device=device)


SHAPES = [(5, 4), (5,), (3, 5), (3,)]  # the leaves of a 4 -> 5 -> 3 mlp's params


def mlp_tree(leaves):
    """The mlp params tree (a list of layer dicts) holding `leaves` in order."""
    return [{"weight": leaves[0], "bias": leaves[1]}, {"weight": leaves[2], "bias": leaves[3]}]


# Each takes lr (a number, a 0-d tensor or a schedule) and turns on every option that keeps state.
OPTIMIZERS = {
    "sgd": lambda lr: optim.sgd(lr, momentum=0.9, dampening=0.1, weight_decay=0.1),
    "sgd-nesterov": lambda lr: optim.sgd(lr, momentum=0.9, nesterov=True, maximize=True),
    "rmsprop": lambda lr: optim.rmsprop(lr, centered=True, momentum=0.5, weight_decay=0.1),
    "adam": lambda lr: optim.adam(lr, amsgrad=True, weight_decay=0.1),
    "adamw": lambda lr: optim.adamw(lr, amsgrad=True),
    "adagrad": lambda lr: optim.adagrad(lr, lr_decay=0.01, initial_accumulator_value=0.1),
    "adamax": lambda lr: optim.adamax(lr, weight_decay=0.1),
    "nadam": lambda lr: optim.nadam(lr, weight_decay=0.1, decoupled_weight_decay=True),
    "radam": lambda lr: optim.radam(lr, weight_decay=0.1),
    "clipped-adam": lambda lr: optim.chain(
        optim.clip_by_global_norm(1.0), optim.clip_by_value(0.5), optim.adam(lr)
    ),
}

# The aliases that mirror a torch.optim class with the same arguments, and that class.
TORCH_OPTIMIZERS = {
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adagrad": torch.optim.Adagrad,
    "adamax": torch.optim.Adamax,
    "nadam": torch.optim.NAdam,
    "radam": torch.optim.RAdam,
}
