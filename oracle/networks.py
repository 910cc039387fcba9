"""The mlp in numpy, forward and backward, for any depth and activation.

Params mirror functional_nn.mlp: a list of dicts `{"weight": (out, in), "bias": (out,)}`, the bias
optional. The activation sits between linear layers; `output_activation`, when given, after the
last. An activation is a name below (torch's default hyper-parameters) or a `(forward, backward)`
pair, e.g. `(partial(layers.leaky_relu_forward, negative_slope=0.2), layers.leaky_relu_backward)`.
"""

from __future__ import annotations

import numpy as np

from . import layers

ACTIVATIONS = {
    name: (getattr(layers, f"{name}_forward"), getattr(layers, f"{name}_backward"))
    for name in ("gelu", "identity", "leaky_relu", "relu", "sigmoid", "softplus", "tanh")
}


def get_activation(activation):
    """The (forward, backward) pair named `activation`, or `activation` itself when it is a pair."""
    if isinstance(activation, tuple):
        return activation
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"Unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}."
        )
    return ACTIVATIONS[activation]


def mlp_forward(params: list[dict], x: np.ndarray, activation="relu", output_activation=None):
    """out = out_act(linear_L(act(... act(linear_1(x))))).

    Args:
        params: one dict per layer; x: (N, in).
        activation, output_activation: names or (forward, backward) pairs; None is no activation.
    Returns:
        out: (N, out); cache for mlp_backward.
    """
    hidden = get_activation(activation)
    last = None if output_activation is None else get_activation(output_activation)
    caches = []
    for i, layer in enumerate(params):
        x, lin_cache = layers.linear_forward(x, layer["weight"], layer.get("bias"))
        act = hidden if i < len(params) - 1 else last
        act_cache = None
        if act is not None:
            x, act_cache = act[0](x)
        caches.append((lin_cache, act, act_cache))
    return x, caches


def mlp_backward(dout: np.ndarray, cache) -> list[dict]:
    """Gradients of mlp_forward w.r.t. every param.

    Args:
        dout: (N, out); cache: from mlp_forward.
    Returns:
        A list of dicts shaped like params.
    """
    grads = []
    for lin_cache, act, act_cache in reversed(cache):
        if act is not None:
            dout = act[1](dout, act_cache)
        dout, dw, db = layers.linear_backward(dout, lin_cache)
        grads.append({"weight": dw} if db is None else {"weight": dw, "bias": db})
    return grads[::-1]


def loss_and_grads(
    params: list[dict],
    x: np.ndarray,
    y: np.ndarray,
    loss,
    activation="relu",
    output_activation=None,
):
    """(loss value, grads) of `loss(mlp(params, x), y)`, e.g. with `oracle.losses.sse`.

    Args:
        params: one dict per layer; x: (N, in); y: whatever `loss` takes as its target.
        loss: `loss(pred, y) -> (value, dpred)`; a `functools.partial` carries its options.
        activation, output_activation: as in mlp_forward.
    Returns:
        (float, a list of dicts shaped like params).
    """
    pred, cache = mlp_forward(params, x, activation, output_activation)
    value, dpred = loss(pred, y)
    return value, mlp_backward(dpred, cache)
