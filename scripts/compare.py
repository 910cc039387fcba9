"""The seeds' six stages side by side with functional_nn, checked against the numpy oracle.

Every stage trains the seeds' two-layer ReLU net (no bias, summed squared error) from the same data
and the same standard-normal initial weights, so every loss curve can be compared step by step with
the oracle's curve for the same optimizer. The seeds' optim and nn.Module stages start from torch's
default init instead; here they start from the standard-normal weights too, so they are comparable.

    PYTHONPATH=. python scripts/compare.py [--steps 500] [--device cpu|cuda]
        [--dtype float64|float32] [--json PATH] [--plot PATH]

Exits 1 when a functional_nn row disagrees with the oracle beyond TOLERANCES[dtype]: a check, not
a printout. Exits 2 on bad arguments (including --device cuda without a GPU, --plot without
matplotlib).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from typing import Callable, NamedTuple

import numpy as np
import torch

import functional_nn as fnn
import oracle.optim
import oracle.train
from oracle.gradcheck import rel_error

N, D_IN, H, D_OUT = 64, 1000, 100, 10
LR = {"sgd": 1e-6, "adam": 1e-4}  # the seeds' learning rates
MODEL = fnn.mlp([D_IN, H, D_OUT], bias=False)
# Agreement with the oracle: oracle.gradcheck.rel_error, max|a - b| / max(|a| + |b|), of the loss
# curve and of each final weight, both <= TOLERANCES[dtype]. Not the per-step |l_t - r_t| / |r_t|:
# SGD drives the loss from 2.6e7 to 1e-8, and so small a sum of squared residuals is ill-conditioned
# (numpy and torch evaluating the SAME float64 weights differ by 4e-9 relative at step 499); float32
# stops at its rounding floor near 1e-5. The final weights are well conditioned and carry any bug.
# Measured over seeds 0-4 on the CPU, 500 steps, all stages: float64 worst 1.6e-15 (weights), so
# 1e-9 leaves six decades and still fails any wrong formula; float32 worst 2.0e-4 (Adam's weights:
# each step moves a weight by up to lr whatever its gradient, so rounding in near-zero gradients
# shows) and 9.3e-7 (curves), so 1e-3; a wrong update rule is off by >= 1e-2.
TOLERANCES = {"float64": 1e-9, "float32": 1e-3}

Data = tuple[np.ndarray, np.ndarray]  # x (N, D_IN), y (N, D_OUT), float64
Weights = list[dict]  # mlp layout: [{"weight": (H, D_IN)}, {"weight": (D_OUT, H)}], float64
StageResult = tuple[np.ndarray, Weights, float]  # (steps,) losses, final weights, loop seconds


class Stage(NamedTuple):
    """One row of the table: a training program and the optimizer it uses."""

    name: str
    optimizer: str
    run: Callable[[Data, Weights, int, torch.device, torch.dtype], StageResult]
    gates: bool  # whether disagreement with the oracle fails the script


# ---- helpers ----------------------------------------------------------------------------------


def _now(device: torch.device) -> float:
    """Wall time after the device's queued work is done, so loop timings include it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _xy(data: Data, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(torch.tensor(a, dtype=dtype, device=device) for a in data)


def _seed_weights(w0: Weights, device, dtype) -> list[torch.Tensor]:
    """The weights in the seeds' (in, out) layout, w1 = W1^T, so their x.mm(w1) reads as written."""
    return [torch.tensor(layer["weight"].T, dtype=dtype, device=device) for layer in w0]


def _result(losses: torch.Tensor, weights, seconds: float) -> StageResult:
    """The (steps,) losses and the (out, in) weights as float64 numpy on the CPU."""
    curve = losses.detach().cpu().double().numpy()
    weights = [{"weight": w.detach().cpu().double().numpy()} for w in weights]
    return curve, weights, seconds


def _load_linears(linears, w0: Weights) -> None:
    with torch.no_grad():
        for linear, layer in zip(linears, w0):
            linear.weight.copy_(torch.from_numpy(layer["weight"]))


# ---- the stages: (data, w0, steps, device, dtype) -> (losses, final weights, seconds) ----------


def numpy_oracle(optimizer: str, data: Data, w0: Weights, steps, device, dtype) -> StageResult:
    """The seeds' numpy program (oracle.train), always float64 on the CPU: the reference."""
    opt = {"sgd": oracle.optim.SGD, "adam": oracle.optim.Adam}[optimizer](lr=LR[optimizer])
    start = time.perf_counter()
    weights, losses = oracle.train.train(w0, *data, opt, steps=steps)
    return losses, weights, time.perf_counter() - start


def torch_by_hand(data: Data, w0: Weights, steps, device, dtype) -> StageResult:
    """Seed stage 2: explicit mm/clamp forward, hand-written backward, manual SGD update."""
    (x, y), (w1, w2) = _xy(data, device, dtype), _seed_weights(w0, device, dtype)
    lr, losses = LR["sgd"], []
    start = _now(device)
    for _ in range(steps):
        h = x.mm(w1)
        h_relu = h.clamp(min=0)
        y_pred = h_relu.mm(w2)
        losses.append((y_pred - y).pow(2).sum())
        grad_y_pred = 2.0 * (y_pred - y)
        grad_w2 = h_relu.t().mm(grad_y_pred)
        grad_h = grad_y_pred.mm(w2.t())
        grad_h[h < 0] = 0
        grad_w1 = x.t().mm(grad_h)
        w1 -= lr * grad_w1
        w2 -= lr * grad_w2
    return _result(torch.stack(losses), (w1.t(), w2.t()), _now(device) - start)


def torch_autograd(data: Data, w0: Weights, steps, device, dtype) -> StageResult:
    """Seed stage 3: loss.backward(), manual SGD update under no_grad."""
    (x, y), (w1, w2) = _xy(data, device, dtype), _seed_weights(w0, device, dtype)
    w1.requires_grad_(), w2.requires_grad_()
    lr, losses = LR["sgd"], []
    start = _now(device)
    for _ in range(steps):
        loss = (x.mm(w1).clamp(min=0).mm(w2) - y).pow(2).sum()
        losses.append(loss.detach())
        loss.backward()
        with torch.no_grad():
            for w in (w1, w2):
                w -= lr * w.grad
                w.grad.zero_()
    return _result(torch.stack(losses), (w1.t(), w2.t()), _now(device) - start)


def _sequential(w0: Weights, device, dtype) -> torch.nn.Sequential:
    model = torch.nn.Sequential(
        torch.nn.Linear(D_IN, H, bias=False, device=device, dtype=dtype),
        torch.nn.ReLU(),
        torch.nn.Linear(H, D_OUT, bias=False, device=device, dtype=dtype),
    )
    _load_linears((model[0], model[2]), w0)
    return model


def torch_nn(data: Data, w0: Weights, steps, device, dtype) -> StageResult:
    """Seed stage 4: nn.Sequential and MSELoss(reduction='sum'), manual SGD update."""
    x, y = _xy(data, device, dtype)
    model, loss_fn = _sequential(w0, device, dtype), torch.nn.MSELoss(reduction="sum")
    lr, losses = LR["sgd"], []
    start = _now(device)
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        losses.append(loss.detach())
        model.zero_grad()
        loss.backward()
        with torch.no_grad():
            for param in model.parameters():
                param -= lr * param.grad
    return _result(torch.stack(losses), (model[0].weight, model[2].weight), _now(device) - start)


class TwoLayerNet(torch.nn.Module):
    """Seed stage 6's model: two bias-free linear layers with a ReLU (clamp) between them."""

    def __init__(self, d_in: int, h: int, d_out: int, device=None, dtype=None):
        super().__init__()
        self.linear1 = torch.nn.Linear(d_in, h, bias=False, device=device, dtype=dtype)
        self.linear2 = torch.nn.Linear(h, d_out, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.linear1(x).clamp(min=0))


def _torch_optim_loop(model, optimizer: str, data, steps, device, dtype) -> StageResult:
    """Seed stages 5 and 6: torch.optim does the update."""
    x, y = _xy(data, device, dtype)
    opt_class = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[optimizer]
    opt = opt_class(model.parameters(), lr=LR[optimizer])
    loss_fn, losses = torch.nn.MSELoss(reduction="sum"), []
    start = _now(device)
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        losses.append(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = _now(device) - start
    return _result(torch.stack(losses), list(model.parameters()), seconds)


def torch_optim(optimizer: str, data: Data, w0: Weights, steps, device, dtype) -> StageResult:
    """Seed stage 5: nn.Sequential with a torch.optim optimizer."""
    return _torch_optim_loop(_sequential(w0, device, dtype), optimizer, data, steps, device, dtype)


def nn_module(optimizer: str, data: Data, w0: Weights, steps, device, dtype) -> StageResult:
    """Seed stage 6: a TwoLayerNet nn.Module with a torch.optim optimizer."""
    model = TwoLayerNet(D_IN, H, D_OUT, device=device, dtype=dtype)
    _load_linears((model.linear1, model.linear2), w0)
    return _torch_optim_loop(model, optimizer, data, steps, device, dtype)


def functional(optimizer: str, data: Data, w0: Weights, steps, device, dtype) -> StageResult:
    """functional_nn: fit(params, x, y, sgd/adam, model=mlp([D_IN, H, D_OUT], bias=False))."""
    x, y = _xy(data, device, dtype)
    params = [{"weight": torch.tensor(layer["weight"], dtype=dtype, device=device)} for layer in w0]
    opt = {"sgd": fnn.sgd, "adam": fnn.adam}[optimizer](LR[optimizer])
    start = _now(device)  # fit's own input checks and opt.init are included: microseconds
    result = fnn.fit(params, x, y, opt, model=MODEL, steps=steps)
    seconds = _now(device) - start
    return _result(result.losses, [p["weight"] for p in result.params], seconds)


# Only functional_nn gates the exit code: it is what this project promises. The seeds' torch
# programs are reported against the same oracle (they agree too), but a change in torch's own
# kernels or torch.optim is not a functional_nn failure.
STAGES = [
    Stage("numpy by hand (oracle)", "sgd", functools.partial(numpy_oracle, "sgd"), False),
    Stage("torch by hand", "sgd", torch_by_hand, False),
    Stage("torch autograd", "sgd", torch_autograd, False),
    Stage("torch.nn", "sgd", torch_nn, False),
    Stage("torch.optim", "sgd", functools.partial(torch_optim, "sgd"), False),
    Stage("functional_nn", "sgd", functools.partial(functional, "sgd"), True),
    Stage("numpy by hand (oracle)", "adam", functools.partial(numpy_oracle, "adam"), False),
    Stage("torch.optim", "adam", functools.partial(torch_optim, "adam"), False),
    Stage("nn.Module", "adam", functools.partial(nn_module, "adam"), False),
    Stage("functional_nn", "adam", functools.partial(functional, "adam"), True),
]


# ---- the comparison ---------------------------------------------------------------------------


def make_problem(seed: int) -> tuple[Data, Weights]:
    """The seeds' standard-normal data and weights, float64, all drawn from one seed."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D_IN, generator=generator, dtype=torch.float64)
    y = torch.randn(N, D_OUT, generator=generator, dtype=torch.float64)
    params = MODEL.init(generator, dtype=torch.float64)
    return (x.numpy(), y.numpy()), [{"weight": layer["weight"].numpy()} for layer in params]


def difference(actual: np.ndarray, reference: np.ndarray) -> float:
    """rel_error(actual, reference) (see TOLERANCES); inf when `actual` is not all finite."""
    return rel_error(actual, reference) if np.all(np.isfinite(actual)) else float("inf")


def run_stages(stages, data: Data, w0: Weights, steps: int, device, dtype) -> list[dict]:
    """Run every stage and compare it with the oracle of its optimizer: one dict per row."""
    tolerance = TOLERANCES[str(dtype).removeprefix("torch.")]
    optimizers = dict.fromkeys(stage.optimizer for stage in stages)
    references = {opt: numpy_oracle(opt, data, w0, steps, device, dtype) for opt in optimizers}
    rows = []
    for stage in stages:
        stage.run(data, w0, 1, device, dtype)  # warm-up, so one-time costs stay out of timings
        losses, weights, seconds = stage.run(data, w0, steps, device, dtype)
        ref_losses, ref_weights, _ = references[stage.optimizer]
        curve_diff = difference(losses, ref_losses)
        weights_diff = max(
            difference(w["weight"], r["weight"]) for w, r in zip(weights, ref_weights)
        )
        rows.append({
            "stage": stage.name,
            "optimizer": stage.optimizer,
            "gates": stage.gates,
            "first_loss": float(losses[0]),
            "final_loss": float(losses[-1]),
            "curve_rel_diff": curve_diff,
            "weights_rel_diff": weights_diff,
            "us_per_step": 1e6 * seconds / steps,
            "agrees": curve_diff <= tolerance and weights_diff <= tolerance,
            "losses": losses.tolist(),
        })
    return rows


def print_table(rows: list[dict], header: str) -> None:
    """One line per stage; '*' marks the rows that gate the exit code."""
    print(header)
    columns = f"{'stage':<25}{'opt':<6}{'first loss':>12}{'final loss':>12}{'curve diff':>12}"
    print(f"{columns}{'weight diff':>12}{'us/step':>10}  vs oracle")
    for r in rows:
        name = r["stage"] + (" *" if r["gates"] else "")
        print(
            f"{name:<25}{r['optimizer']:<6}{r['first_loss']:>12.4e}{r['final_loss']:>12.4e}"
            f"{r['curve_rel_diff']:>12.1e}{r['weights_rel_diff']:>12.1e}{r['us_per_step']:>10.1f}"
            f"  {'agrees' if r['agrees'] else 'DIFFERS'}"
        )
    print("* gates the exit code. diff: rel_error max|a - b| / max(|a| + |b|) against the numpy "
          "oracle (float64) of the same optimizer.")


def save_plot(rows: list[dict], path: str) -> None:
    """Loss curves on a log scale, one panel per optimizer."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    optimizers = list(dict.fromkeys(r["optimizer"] for r in rows))
    fig, axes = plt.subplots(1, len(optimizers), figsize=(6 * len(optimizers), 4), squeeze=False)
    for ax, opt in zip(axes[0], optimizers):
        for r in (r for r in rows if r["optimizer"] == opt):
            ax.semilogy(r["losses"], label=r["stage"], linestyle="--" if r["gates"] else "-")
        ax.set(title=f"{opt}, lr {LR[opt]:g}", xlabel="step", ylabel="summed squared error")
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def parse_args(argv) -> argparse.Namespace:
    """The flags, checked before any work; bad ones exit 2 with a message saying how to fix them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=500, help="training steps per stage (>= 1)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=sorted(TOLERANCES), default="float64")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and initial weights")
    parser.add_argument("--json", metavar="PATH", help="write every figure and curve here")
    parser.add_argument("--plot", metavar="PATH", help="save the loss curves (needs matplotlib)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}.")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available to torch on this machine; "
                     "use --device cpu, or install a CUDA build of torch on a GPU machine.")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib, which is not installed; install the extra "
                         "with `pip install -e '.[plot]'`, or leave out --plot.")
    return args


def main(argv=None, stages=STAGES) -> int:
    """Run the comparison; 0 when every gating row agrees with the oracle, 1 otherwise."""
    args = parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if device.type == "cuda":  # IEEE float32 matmuls, as the oracle computes
        torch.backends.cuda.matmul.allow_tf32 = False
    data, w0 = make_problem(args.seed)
    rows = run_stages(stages, data, w0, args.steps, device, dtype)
    tolerance = TOLERANCES[args.dtype]
    print_table(rows, (
        f"N={N}, sizes {D_IN}-{H}-{D_OUT}, no bias, sse, {args.steps} steps, seed {args.seed}; "
        f"torch stages in {args.dtype} on {args.device}, tolerance {tolerance:.0e}.\n"
        "Every stage starts from the same standard-normal weights (the seeds' optim and nn.Module "
        "stages use torch's default init; here they do not, so that all curves are comparable)."
    ))
    failed = [f"{r['stage']} ({r['optimizer']})" for r in rows if r["gates"] and not r["agrees"]]
    if args.json:
        config = {k: getattr(args, k) for k in ("steps", "device", "dtype", "seed")}
        config.update(N=N, sizes=[D_IN, H, D_OUT], lr=LR, tolerance=tolerance,
                      init="standard normal, the same for every stage")
        with open(args.json, "w") as f:
            json.dump({"config": config, "ok": not failed, "rows": rows}, f, indent=1)
    if args.plot:
        save_plot(rows, args.plot)
    if failed:
        print(f"FAIL: {', '.join(failed)} differ from the oracle by more than {tolerance:.0e}.")
        return 1
    print("OK: every functional_nn row agrees with the oracle.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
