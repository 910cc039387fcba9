"""The mlp in numpy, forward and backward, for any depth.

Params mirror functional_nn.mlp: a list of dicts `{"weight": (out, in), "bias": (out,)}`, the bias
optional. The activation sits between linear layers, not after the last.
"""

from __future__ import annotations

import numpy as np

from . import layers

ACTIVATIONS = {"relu": (layers.relu_forward, layers.relu_backward)}


def mlp_forward(params: list[dict], x: np.ndarray, activation: str = "relu"):
    """out = linear_L(act(... act(linear_1(x)))).

    Args:
        params: one dict per layer; x: (N, in).
    Returns:
        out: (N, out); cache for mlp_backward.
    """
    act_forward, _ = ACTIVATIONS[activation]
    caches = []
    for i, layer in enumerate(params):
        x, lin_cache = layers.linear_forward(x, layer["weight"], layer.get("bias"))
        act_cache = None
        if i < len(params) - 1:
            x, act_cache = act_forward(x)
        caches.append((lin_cache, act_cache))
    return x, (caches, activation)


def mlp_backward(dout: np.ndarray, cache) -> list[dict]:
    """Gradients of mlp_forward w.r.t. every param.

    Args:
        dout: (N, out); cache: from mlp_forward.
    Returns:
        A list of dicts shaped like params.
    """
    caches, activation = cache
    _, act_backward = ACTIVATIONS[activation]
    grads = []
    for lin_cache, act_cache in reversed(caches):
        if act_cache is not None:
            dout = act_backward(dout, act_cache)
        dout, dw, db = layers.linear_backward(dout, lin_cache)
        grads.append({"weight": dw} if db is None else {"weight": dw, "bias": db})
    return grads[::-1]


def loss_and_grads(params: list[dict], x: np.ndarray, y: np.ndarray, loss, activation: str = "relu"):
    """(loss value, grads) of `loss(mlp(params, x), y)`, e.g. with `oracle.losses.sse`."""
    pred, cache = mlp_forward(params, x, activation)
    value, dpred = loss(pred, y)
    return value, mlp_backward(dpred, cache)
