"""The batch-norm + dropout workload's three training programs, as scripts/stages.py's stages.

The net: h = x W1^T (no bias: batch norm would cancel it), batch_norm(h) with running statistics,
relu, dropout, y = d W2^T + b2; in functional_nn,
`serial(dense(in, H, bias=False), batch_norm(H), "relu", dropout(p), dense(H, out))`, whose params
are `[{"weight"}, {"weight", "bias"}, {}, {}, {"weight", "bias"}]` and whose model state is
`[{}, running statistics, {}, {}, {}]`. Every program trains on full batches with the same
dropout masks: step t's is `dropout_mask(fold_in(fold_in(key(seed), t), 3), (N, H), p)`, the mask
fit's keys give the dropout at layer 3 (networks.py's convention), so the torch loop applies them
as `a * mask / (1 - p)` (nn.Dropout would draw from torch's global RNG) and the oracle gets them
as numpy arrays. Each stage returns the running statistics too (StageResult.model_state).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

import functional_nn as fnn
import oracle.layers as ol
import oracle.norm
from functional_nn.dropout import dropout_mask, fold_in, key
from oracle.train import flat_params
from scripts.stages import LOSSES, OPTIMIZERS, Problem, StageResult, _data, _now, _tensors

DROPOUT_LAYER = 3  # the dropout's index in the serial net: its key is fold_in(step key, 3)


def network(d_in: int, h: int, d_out: int, p: float) -> fnn.Network:
    """The workload's net as functional_nn builds it (layers as in the module docstring)."""
    return fnn.serial(
        fnn.dense(d_in, h, bias=False, init="torch"),
        fnn.blocks.batch_norm(h),
        "relu",
        fnn.blocks.dropout(p),
        fnn.dense(h, d_out, init="torch"),
    )


def masks(problem: Problem, steps: int) -> np.ndarray:
    """(steps, N, H) bool: the kept elements of each step's dropout, as fit draws them."""
    p, seed = problem.dropout
    shape = (len(problem.x), problem.params[0]["weight"].shape[0])
    base = key(seed)
    return np.stack(
        [
            dropout_mask(fold_in(fold_in(base, t), DROPOUT_LAYER), shape, p).numpy()
            for t in range(steps)
        ]
    )


def _state(running: dict) -> dict[str, np.ndarray]:
    """Running mean and variance as float64 numpy (num_batches_tracked is checked by tests)."""
    return {k: np.asarray(running[k], dtype=np.float64) for k in ("running_mean", "running_var")}


def numpy_oracle(optimizer: str, problem: Problem, steps: int, device, dtype) -> StageResult:
    """oracle.norm and oracle.layers forward/backward, by hand, float64 on the CPU: the reference."""
    p, _ = problem.dropout
    opt = OPTIMIZERS[optimizer].oracle(lr=problem.lr[optimizer])
    params = [
        {k: np.array(v, dtype=np.float64) for k, v in layer.items()} for layer in problem.params
    ]
    bn, last = params[1], params[4]
    h = params[0]["weight"].shape[0]
    running = {"running_mean": np.zeros(h), "running_var": np.ones(h), "num_batches_tracked": 0}
    drop = masks(problem, steps).astype(np.float64)
    losses, start = np.empty(steps), time.perf_counter()
    for t in range(steps):
        z, linear1 = ol.linear_forward(problem.x, params[0]["weight"])
        normed, running, bn_cache = oracle.norm.batch_norm_forward(
            z, bn["weight"], bn["bias"], running, train=True
        )
        a, relu_cache = ol.relu_forward(normed)
        d, drop_cache = oracle.norm.dropout_forward(a, drop[t], p)
        pred, linear2 = ol.linear_forward(d, last["weight"], last["bias"])
        losses[t], dpred = LOSSES[problem.loss].oracle(pred, problem.y)
        dd, dw2, db2 = ol.linear_backward(dpred, linear2)
        dnormed = ol.relu_backward(oracle.norm.dropout_backward(dd, drop_cache), relu_cache)
        dz, dgamma, dbeta = oracle.norm.batch_norm_backward(dnormed, bn_cache)
        _, dw1, _ = ol.linear_backward(dz, linear1)
        grads = [
            {"weight": dw1},
            {"weight": dgamma, "bias": dbeta},
            {},
            {},
            {"weight": dw2, "bias": db2},
        ]
        opt.step(flat_params(params), flat_params(grads))
    return StageResult(losses, params, time.perf_counter() - start, _state(running))


def torch_optim(optimizer: str, problem: Problem, steps: int, device, dtype) -> StageResult:
    """The torch user's loop: nn.Linear, nn.BatchNorm1d in train mode, the masks, torch.optim."""
    p, _ = problem.dropout
    x, y = _data(problem, device, dtype)
    first, norm, _, _, last = _tensors(problem.params, device, dtype)
    (h, d_in), d_out = first["weight"].shape, last["weight"].shape[0]
    linear1 = nn.Linear(d_in, h, bias=False, device=device, dtype=dtype)
    batch_norm = nn.BatchNorm1d(h, device=device, dtype=dtype)
    linear2 = nn.Linear(h, d_out, device=device, dtype=dtype)
    for module, layer in ((linear1, first), (batch_norm, norm), (linear2, last)):
        module.load_state_dict(layer, strict=False)  # params only: fresh running statistics
    model = nn.ModuleList([linear1, batch_norm, linear2]).train()
    opt = OPTIMIZERS[optimizer].torch(model.parameters(), lr=problem.lr[optimizer])
    loss_fn = LOSSES[problem.loss].torch()
    drop = torch.tensor(masks(problem, steps), device=device).to(dtype) / (1 - p)
    losses, start = [], _now(device)
    for t in range(steps):
        loss = loss_fn(linear2(torch.relu(batch_norm(linear1(x))) * drop[t]), y)
        losses.append(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = _now(device) - start
    layers = [dict(m.named_parameters()) for m in (linear1, batch_norm)]
    trained = [*layers, {}, {}, dict(linear2.named_parameters())]
    return _result(torch.stack(losses), trained, dict(batch_norm.named_buffers()), seconds)


def functional(optimizer: str, problem: Problem, steps: int, device, dtype) -> StageResult:
    """functional_nn: fit(params, x, y, opt, model=network(...), loss=..., seed=the key seed)."""
    p, seed = problem.dropout
    x, y = _data(problem, device, dtype)
    params = _tensors(problem.params, device, dtype)
    (h, d_in), d_out = params[0]["weight"].shape, params[4]["weight"].shape[0]
    model, loss = network(d_in, h, d_out, p), LOSSES[problem.loss].functional
    opt = OPTIMIZERS[optimizer].functional(problem.lr[optimizer])
    start = _now(device)
    result = fnn.fit(params, x, y, opt, model=model, loss=loss, steps=steps, seed=seed)
    seconds = _now(device) - start
    return _result(result.losses, result.params, result.model_state[1], seconds)


def _result(losses, params, running, seconds) -> StageResult:
    curve = losses.detach().cpu().double().numpy()
    params = [{k: t.detach().cpu().double().numpy() for k, t in layer.items()} for layer in params]
    return StageResult(curve, params, seconds, _state({k: t.cpu() for k, t in running.items()}))
