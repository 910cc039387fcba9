"""The training programs that scripts/compare.py runs side by side: the seeds' stages and fit.

Every stage is `run(optimizer, problem, steps, device, dtype)`: it trains the seeds' two-layer ReLU
net on a Problem with the optimizer named "sgd" or "adam", in `dtype` on `device`, and returns a
StageResult: the (steps,) loss before each update, the final params in mlp layout
(`[{"weight": (out, in), "bias": (out,)}, ...]`) as float64 numpy on the CPU, and the seconds its
loop took. The net has biases exactly when the problem's initial params do, so one program serves
both the seeds' bias-free net and the b1, b2 that the seeds write in their formulas and leave out.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

import functional_nn as fnn
import oracle.losses
import oracle.optim
import oracle.train

Params = list[dict]  # mlp layout, float64 numpy


class Problem(NamedTuple):
    """What every stage of a workload trains: the same data, initial params, loss and lrs."""

    x: np.ndarray  # (N, in) float64
    y: np.ndarray  # (N, out) float64 targets, or (N,) int64 class labels
    params: Params  # the initial params, float64
    loss: str  # a key of LOSSES
    lr: dict[str, float]  # learning rate per optimizer name
    dropout: tuple[float, int] | None = None  # (p, key seed) of a net with dropout (stages_state)


class StageResult(NamedTuple):
    """What a stage returns."""

    losses: np.ndarray  # (steps,) float64
    params: Params  # the final params, float64
    seconds: float  # the training loop's wall time, device work included
    model_state: dict | None = None  # batch norm's final running_mean, running_var (float64)


class Implementations(NamedTuple):
    """One loss or optimizer in each of the three worlds."""

    oracle: Callable
    torch: Callable
    functional: Callable


# Each loss with the reduction its workload uses: sse sums (the seeds), cross_entropy averages over
# the examples (torch's default).
LOSSES = {
    "sse": Implementations(
        oracle.losses.sse, functools.partial(nn.MSELoss, reduction="sum"), fnn.sse
    ),
    "cross_entropy": Implementations(
        oracle.losses.cross_entropy, nn.CrossEntropyLoss, fnn.cross_entropy
    ),
}
OPTIMIZERS = {
    "sgd": Implementations(oracle.optim.SGD, torch.optim.SGD, fnn.sgd),
    "adam": Implementations(oracle.optim.Adam, torch.optim.Adam, fnn.adam),
}


# ---- helpers ----------------------------------------------------------------------------------


def _now(device: torch.device) -> float:
    """Wall time after the device's queued work is done, so loop timings include it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _data(problem: Problem, device, dtype) -> tuple[Tensor, Tensor]:
    """x in `dtype`; y in `dtype`, or int64 when it holds class labels."""
    y_dtype = dtype if np.issubdtype(problem.y.dtype, np.floating) else torch.int64
    x = torch.tensor(problem.x, dtype=dtype, device=device)
    return x, torch.tensor(problem.y, dtype=y_dtype, device=device)


def _tensors(params: Params, device, dtype) -> list[dict[str, Tensor]]:
    to_tensor = functools.partial(torch.tensor, dtype=dtype, device=device)
    return [{k: to_tensor(v) for k, v in layer.items()} for layer in params]


def _sizes(params: Params) -> list[int]:
    """[in, hidden..., out] of mlp params."""
    return [params[0]["weight"].shape[1], *(layer["weight"].shape[0] for layer in params)]


def _has_bias(params: Params) -> bool:
    return "bias" in params[0]


def _result(losses: Tensor, params: list[dict[str, Tensor]], seconds: float) -> StageResult:
    curve = losses.detach().cpu().double().numpy()
    params = [{k: t.detach().cpu().double().numpy() for k, t in layer.items()} for layer in params]
    return StageResult(curve, params, seconds)


def _check_sgd(stage: str, optimizer: str) -> None:
    if optimizer != "sgd":
        raise ValueError(f"{stage} updates the params by SGD by hand, got optimizer {optimizer!r}.")


def _check_sse(stage: str, problem: Problem) -> None:
    if problem.loss != "sse":
        raise ValueError(
            f"{stage}: its backward is derived for loss 'sse' only, got {problem.loss!r}."
        )


# ---- the seeds' numpy and torch programs by hand ----------------------------------------------


def numpy_oracle(optimizer: str, problem: Problem, steps: int, device, dtype) -> StageResult:
    """Seed stage 1 (oracle.train, hand-derived numpy), always float64 on the CPU: the reference."""
    opt = OPTIMIZERS[optimizer].oracle(lr=problem.lr[optimizer])
    start = time.perf_counter()
    params, losses = oracle.train.train(
        problem.params, problem.x, problem.y, opt, steps=steps, loss=LOSSES[problem.loss].oracle
    )
    return StageResult(losses, params, time.perf_counter() - start)


def _seed_params(problem: Problem, device, dtype) -> tuple[list[Tensor], list[Tensor | None]]:
    """([w1, w2], [b1, b2]) in the seeds' layout w = W^T (in, out), so x.mm(w1) reads as they
    write it; the biases are None when the problem has none."""
    layers = _tensors(problem.params, device, dtype)
    weights = [layer["weight"].t().contiguous() for layer in layers]
    return weights, [layer.get("bias") for layer in layers]


def _affine(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    return x.mm(w) if b is None else x.mm(w) + b


def _mlp_layout(weights: list[Tensor], biases: list[Tensor | None]) -> list[dict[str, Tensor]]:
    return [{"weight": w.t()} | ({} if b is None else {"bias": b}) for w, b in zip(weights, biases)]


def torch_by_hand(optimizer: str, problem: Problem, steps: int, device, dtype) -> StageResult:
    """Seed stage 2: explicit mm/clamp forward, hand-derived backward, manual SGD update; sse.

    h = x w1 + b1, a = max(h, 0), y_pred = a w2 + b2: the seeds leave b1, b2 out to keep the
    derivation short, and so does this stage when the problem has no biases.
    """
    _check_sgd("torch by hand", optimizer)
    _check_sse("torch by hand", problem)
    x, y = _data(problem, device, dtype)
    (w1, w2), (b1, b2) = _seed_params(problem, device, dtype)
    lr, losses = problem.lr["sgd"], []
    start = _now(device)
    for _ in range(steps):
        h = _affine(x, w1, b1)
        h_relu = h.clamp(min=0)
        y_pred = _affine(h_relu, w2, b2)
        losses.append((y_pred - y).pow(2).sum())
        grad_y_pred = 2.0 * (y_pred - y)
        grad_w2 = h_relu.t().mm(grad_y_pred)
        grad_h = grad_y_pred.mm(w2.t())
        grad_h[h < 0] = 0
        grad_w1 = x.t().mm(grad_h)
        w1 -= lr * grad_w1
        w2 -= lr * grad_w2
        if b1 is not None:  # a bias's gradient is its layer's output gradient summed over examples
            b1 -= lr * grad_h.sum(0)
            b2 -= lr * grad_y_pred.sum(0)
    return _result(torch.stack(losses), _mlp_layout([w1, w2], [b1, b2]), _now(device) - start)


def torch_autograd(optimizer: str, problem: Problem, steps: int, device, dtype) -> StageResult:
    """Seed stage 3: loss.backward(), manual SGD update under no_grad; sse."""
    _check_sgd("torch autograd", optimizer)
    _check_sse("torch autograd", problem)
    x, y = _data(problem, device, dtype)
    (w1, w2), (b1, b2) = _seed_params(problem, device, dtype)
    leaves = [t.requires_grad_() for t in (w1, w2, b1, b2) if t is not None]
    lr, losses = problem.lr["sgd"], []
    start = _now(device)
    for _ in range(steps):
        loss = (_affine(_affine(x, w1, b1).clamp(min=0), w2, b2) - y).pow(2).sum()
        losses.append(loss.detach())
        loss.backward()
        with torch.no_grad():
            for t in leaves:
                t -= lr * t.grad
                t.grad.zero_()
    return _result(torch.stack(losses), _mlp_layout([w1, w2], [b1, b2]), _now(device) - start)


# ---- the seeds' torch.nn stages -----------------------------------------------------------------


def _sequential(problem: Problem, device, dtype) -> nn.Sequential:
    """nn.Sequential(Linear, ReLU, Linear), loaded from the problem's params via its state dict."""
    (d_in, h, d_out), bias = _sizes(problem.params), _has_bias(problem.params)
    model = nn.Sequential(
        nn.Linear(d_in, h, bias=bias, device=device, dtype=dtype),
        nn.ReLU(),
        nn.Linear(h, d_out, bias=bias, device=device, dtype=dtype),
    )
    model.load_state_dict(fnn.mlp_to_state_dict(_tensors(problem.params, device, dtype)))
    return model


def _linear_params(model: nn.Module) -> list[dict[str, Tensor]]:
    """The params of the model's nn.Linear layers, in mlp layout."""
    return [dict(m.named_parameters()) for m in model.modules() if isinstance(m, nn.Linear)]


def torch_nn(optimizer: str, problem: Problem, steps: int, device, dtype) -> StageResult:
    """Seed stage 4: nn.Sequential and a torch.nn loss, manual SGD update."""
    _check_sgd("torch.nn", optimizer)
    x, y = _data(problem, device, dtype)
    model, loss_fn = _sequential(problem, device, dtype), LOSSES[problem.loss].torch()
    lr, losses = problem.lr["sgd"], []
    start = _now(device)
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        losses.append(loss.detach())
        model.zero_grad()
        loss.backward()
        with torch.no_grad():
            for param in model.parameters():
                param -= lr * param.grad
    return _result(torch.stack(losses), _linear_params(model), _now(device) - start)


class TwoLayerNet(nn.Module):
    """Seed stage 6's model: two linear layers with a ReLU (clamp) between them."""

    def __init__(self, d_in: int, h: int, d_out: int, bias: bool, device=None, dtype=None):
        super().__init__()
        self.linear1 = nn.Linear(d_in, h, bias=bias, device=device, dtype=dtype)
        self.linear2 = nn.Linear(h, d_out, bias=bias, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.linear1(x).clamp(min=0))


def _two_layer_net(problem: Problem, device, dtype) -> TwoLayerNet:
    """A TwoLayerNet loaded from the problem's params with functional_nn.to_module."""
    model = TwoLayerNet(*_sizes(problem.params), _has_bias(problem.params), device, dtype)
    layers = _tensors(problem.params, device, dtype)
    names = {f"linear{i + 1}.{k}": t for i, layer in enumerate(layers) for k, t in layer.items()}
    return fnn.to_module(model, names)


def _torch_optim_loop(model: nn.Module, optimizer: str, problem, steps, device, dtype):
    """Seed stages 5 and 6: torch.optim does the update."""
    x, y = _data(problem, device, dtype)
    opt = OPTIMIZERS[optimizer].torch(model.parameters(), lr=problem.lr[optimizer])
    loss_fn, losses = LOSSES[problem.loss].torch(), []
    start = _now(device)
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        losses.append(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = _now(device) - start
    return _result(torch.stack(losses), _linear_params(model), seconds)


def torch_optim(optimizer: str, problem: Problem, steps: int, device, dtype) -> StageResult:
    """Seed stage 5: nn.Sequential with a torch.optim optimizer."""
    model = _sequential(problem, device, dtype)
    return _torch_optim_loop(model, optimizer, problem, steps, device, dtype)


def nn_module(optimizer: str, problem: Problem, steps: int, device, dtype) -> StageResult:
    """Seed stage 6: a TwoLayerNet nn.Module with a torch.optim optimizer."""
    model = _two_layer_net(problem, device, dtype)
    return _torch_optim_loop(model, optimizer, problem, steps, device, dtype)


# ---- functional_nn ------------------------------------------------------------------------------


def functional(optimizer: str, problem: Problem, steps: int, device, dtype) -> StageResult:
    """functional_nn: fit(params, x, y, sgd or adam, model=mlp(sizes, "relu", bias), loss=...)."""
    x, y = _data(problem, device, dtype)
    params = _tensors(problem.params, device, dtype)
    model = fnn.mlp(_sizes(problem.params), "relu", bias=_has_bias(problem.params))
    loss = LOSSES[problem.loss].functional
    fnn.losses.check(loss, fnn.eval_shape(model, params, x), y)  # labels in range; one host sync
    opt = OPTIMIZERS[optimizer].functional(problem.lr[optimizer])
    start = _now(device)  # fit's own input checks and opt.init are included: microseconds
    result = fnn.fit(params, x, y, opt, model=model, loss=loss, steps=steps)
    seconds = _now(device) - start
    return _result(result.losses, result.params, seconds)
