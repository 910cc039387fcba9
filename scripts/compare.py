"""The seeds' six stages side by side with functional_nn, checked against the numpy oracle.

Three workloads, each with its own table; within one, every stage trains the same two-layer ReLU
net from the same data and initial params, so every loss curve can be compared step by step with
the oracle's curve for the same optimizer:
- regression: the seeds' net (no bias, summed squared error, standard-normal weights), all six
  stages. The seeds' optim and nn.Module stages start from torch's default init; here they start
  from the standard-normal weights too, so that they are comparable.
- regression + bias: h = W1 x + b1, y = W2 a + b2, as the seeds write the model before dropping
  the biases; the same data and weights plus standard-normal b1, b2; five of the stages.
- classification: cross-entropy on 10 class labels with biases and Adam; oracle, torch.optim and
  functional_nn, with the final training accuracy.

    python scripts/compare.py [--steps 500] [--device cpu|cuda]
        [--dtype float64|float32] [--seed 0] [--json PATH] [--plot PATH]

Exits 1 when a functional_nn row disagrees with the oracle beyond its workload's tolerance for the
dtype (TOLERANCES, CLASSIFICATION_TOLERANCES): a check, not a printout. Exits 2 on bad arguments
(including --device cuda without a GPU, --plot without matplotlib).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

# Run as a file, only scripts/ is on sys.path: put this checkout's root first, so that its
# functional_nn, oracle and scripts.stages are the ones imported (what PYTHONPATH=. does).
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import functional_nn as fnn
from oracle.gradcheck import rel_error
from oracle.networks import mlp_forward
from oracle.train import flat_params
from scripts import stages
from scripts.stages import Problem, StageResult

N, D_IN, H, D_OUT = 64, 1000, 100, 10  # D_OUT is also the number of classes
SEED_LR = {"sgd": 1e-6, "adam": 1e-4}  # the seeds' learning rates
# Adam at the seeds' lr takes the classifier from chance (loss ln 10) to 1.1e-2 and all training
# labels right in 500 steps, the curve moving throughout; at lr 1e-3 it is at 1.7e-3 by step 50
# and creeps after. Measured at seed 0.
CLASSIFIER_LR = {"adam": 1e-4}
ORACLE = "numpy by hand (oracle)"
# Agreement with the oracle: oracle.gradcheck.rel_error, max|a - b| / max(|a| + |b|), of the loss
# curve and of each final param, both <= the workload's tolerances[dtype]. Not the per-step
# |l_t - r_t| / |r_t|: SGD drives the loss from 2.6e7 to 1e-8, and so small a sum of squared
# residuals is ill-conditioned (numpy and torch evaluating the SAME float64 weights differ by 4e-9
# relative at step 499); float32 stops at its rounding floor near 1e-5. The final params are well
# conditioned and carry any bug. Measured on the CPU, 500 steps, every stage, seeds 0-4 in float64
# and 0-9 in float32. Regression (with or without biases): float64 worst 1.6e-15 (params), so 1e-9
# leaves six decades and still fails any wrong formula; float32 worst 2.4e-4 (Adam's weights: each
# step moves a weight by up to lr whatever its gradient, so rounding in near-zero gradients shows)
# and 1.9e-6 (curves), so 1e-3; a wrong update rule is off by >= 1e-2.
TOLERANCES = {"float64": 1e-9, "float32": 1e-3}
# Classification: float64 worst 8.2e-14. float32 worst 4.9e-3 (torch.optim as far as functional_nn):
# its torch-init weights (|w| < 0.06) move by up to lr = 1e-4 a step, and once a hidden unit's ReLU
# flips for an example in float32 and not in float64, that unit's steps part ways. So 2e-2, which
# an lr 1% off (2.1e-2 in the first weight), an Adam beta off by 0.01 or no bias correction
# (>= 3e-2) still exceed; float64's 1e-9 catches far smaller errors.
CLASSIFICATION_TOLERANCES = {"float64": 1e-9, "float32": 2e-2}


class Stage(NamedTuple):
    """One row of a table: a training program and the optimizer it uses."""

    name: str
    optimizer: str
    run: Callable[[str, Problem, int, torch.device, torch.dtype], StageResult]  # see stages.py
    gates: bool  # whether disagreement with the oracle fails the script


class Workload(NamedTuple):
    """One table: a problem drawn from the seed, and the stages that train on it. Each optimizer's
    oracle row comes first without being listed: it is the reference the others are checked with."""

    name: str
    about: str
    problem: Callable[[int], Problem]
    stages: list[Stage]
    tolerances: dict[str, float] = TOLERANCES  # the agreement bound per dtype


def _float64_numpy(params: list[dict]) -> list[dict]:
    return [{k: t.double().numpy() for k, t in layer.items()} for layer in params]


def regression(seed: int, bias: bool = False) -> Problem:
    """The seeds' standard-normal x, y and weights, float64, from one seed; with `bias`, standard-
    normal b1, b2 drawn after them, so that x, y and the weights are the bias-free problem's."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D_IN, generator=generator, dtype=torch.float64)
    y = torch.randn(N, D_OUT, generator=generator, dtype=torch.float64)
    params = fnn.mlp([D_IN, H, D_OUT], bias=False).init(generator, dtype=torch.float64)
    if bias:
        for layer in params:
            out_features = len(layer["weight"])
            layer["bias"] = torch.randn(out_features, generator=generator, dtype=torch.float64)
    return Problem(x.numpy(), y.numpy(), _float64_numpy(params), "sse", SEED_LR)


def classification(seed: int) -> Problem:
    """x as regression's; labels argmax(x T) for a standard-normal teacher T (D_IN, D_OUT), a
    linear rule the net can learn; params drawn as torch.nn.Linear draws them (init="torch"), whose
    logits start near 0, at chance. Standard-normal weights start them hundreds apart instead, the
    softmax saturated (loss 325): 500 steps at lr 1e-4 then reach only 87% training accuracy."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D_IN, generator=generator, dtype=torch.float64)
    labels = (x @ torch.randn(D_IN, D_OUT, generator=generator, dtype=torch.float64)).argmax(1)
    params = fnn.mlp([D_IN, H, D_OUT], init="torch").init(generator, dtype=torch.float64)
    return Problem(
        x.numpy(), labels.numpy(), _float64_numpy(params), "cross_entropy", CLASSIFIER_LR
    )


def _table(*rows: tuple[str, str, Callable]) -> list[Stage]:
    """Stages from (name, optimizer, run) rows; functional_nn's alone gate the exit code: it is
    what this project promises. The seeds' torch programs are reported against the same oracle
    (they agree too), but a change in torch's own kernels or torch.optim is not a functional_nn
    failure."""
    return [Stage(name, opt, run, gates=name == "functional_nn") for name, opt, run in rows]


WORKLOADS = [
    Workload(
        "regression", "the seeds' net: no bias, summed squared error, standard-normal weights",
        regression,
        _table(
            ("torch by hand", "sgd", stages.torch_by_hand),
            ("torch autograd", "sgd", stages.torch_autograd),
            ("torch.nn", "sgd", stages.torch_nn),
            ("torch.optim", "sgd", stages.torch_optim),
            ("functional_nn", "sgd", stages.functional),
            ("torch.optim", "adam", stages.torch_optim),
            ("nn.Module", "adam", stages.nn_module),
            ("functional_nn", "adam", stages.functional),
        ),
    ),
    Workload(
        "regression + bias", "h = W1 x + b1, y = W2 a + b2 as the seeds write it; the same data "
        "and weights as above, standard-normal b1, b2", functools.partial(regression, bias=True),
        _table(
            ("torch by hand", "sgd", stages.torch_by_hand),
            ("torch.nn", "sgd", stages.torch_nn),
            ("functional_nn", "sgd", stages.functional),
            ("torch.optim", "adam", stages.torch_optim),
            ("functional_nn", "adam", stages.functional),
        ),
    ),
    Workload(
        "classification", f"{D_OUT} classes, labels argmax(x T) for a fixed random T; biases, "
        "mean cross-entropy, torch.nn.Linear's init", classification,
        _table(
            ("torch.optim", "adam", stages.torch_optim),
            ("functional_nn", "adam", stages.functional),
        ),
        CLASSIFICATION_TOLERANCES,
    ),
]


# ---- the comparison ---------------------------------------------------------------------------


def difference(actual: np.ndarray, reference: np.ndarray) -> float:
    """rel_error(actual, reference) (see TOLERANCES); inf when `actual` is not all finite."""
    return rel_error(actual, reference) if np.all(np.isfinite(actual)) else float("inf")


def accuracy(params: list[dict], problem: Problem) -> float | None:
    """The fraction of training labels the params' largest logit names; None for regression."""
    if not np.issubdtype(problem.y.dtype, np.integer):
        return None
    logits, _ = mlp_forward(params, problem.x)
    return float(np.mean(logits.argmax(axis=1) == problem.y))


def _row(workload: str, stage: Stage, result: StageResult, reference: StageResult,
         problem: Problem, tolerance: float) -> dict:
    """A stage's figures and its differences from the oracle's run: one row of the table."""
    curve_diff = difference(result.losses, reference.losses)
    pairs = zip(flat_params(result.params), flat_params(reference.params), strict=True)
    params_diff = max(difference(p, r) for p, r in pairs)
    return {
        "workload": workload,
        "stage": stage.name,
        "optimizer": stage.optimizer,
        "lr": problem.lr[stage.optimizer],
        "loss": problem.loss,
        "gates": stage.gates,
        "first_loss": float(result.losses[0]),
        "final_loss": float(result.losses[-1]),
        "curve_rel_diff": curve_diff,
        "params_rel_diff": params_diff,
        "accuracy": accuracy(result.params, problem),
        "us_per_step": 1e6 * result.seconds / len(result.losses),
        "tolerance": tolerance,
        "agrees": curve_diff <= tolerance and params_diff <= tolerance,
        "losses": result.losses.tolist(),
    }


def run_workload(workload: Workload, seed: int, steps: int, device, dtype) -> list[dict]:
    """Every stage beside the oracle of its optimizer: one dict per row, the oracle's first."""
    problem = workload.problem(seed)
    tolerance = workload.tolerances[str(dtype).removeprefix("torch.")]
    rows = []
    for optimizer in dict.fromkeys(stage.optimizer for stage in workload.stages):
        reference = stages.numpy_oracle(optimizer, problem, steps, device, dtype)
        rows.append(_row(workload.name, Stage(ORACLE, optimizer, stages.numpy_oracle, False),
                         reference, reference, problem, tolerance))
        for stage in (s for s in workload.stages if s.optimizer == optimizer):
            stage.run(optimizer, problem, 1, device, dtype)  # warm-up: one-time costs untimed
            result = stage.run(optimizer, problem, steps, device, dtype)
            rows.append(_row(workload.name, stage, result, reference, problem, tolerance))
    return rows


def print_table(workload: Workload, rows: list[dict]) -> None:
    """One line per stage, with a training-accuracy column where the workload classifies; '*'
    marks the rows that gate the exit code."""
    with_accuracy = any(r["accuracy"] is not None for r in rows)
    print(f"\n{workload.name}: {workload.about}; tolerance {rows[0]['tolerance']:.0e}.")
    columns = f"{'stage':<25}{'opt, lr':<12}{'first loss':>12}{'final loss':>12}{'curve diff':>12}"
    accuracy_column = f"{'train acc':>10}" if with_accuracy else ""
    print(f"{columns}{'param diff':>12}{accuracy_column}{'us/step':>10}  vs oracle")
    for r in rows:
        name, opt = r["stage"] + (" *" if r["gates"] else ""), f"{r['optimizer']} {r['lr']:.0e}"
        acc = f"{r['accuracy']:>10.3f}" if with_accuracy else ""
        print(
            f"{name:<25}{opt:<12}{r['first_loss']:>12.4e}{r['final_loss']:>12.4e}"
            f"{r['curve_rel_diff']:>12.1e}{r['params_rel_diff']:>12.1e}{acc}"
            f"{r['us_per_step']:>10.1f}  {'agrees' if r['agrees'] else 'DIFFERS'}"
        )


def save_plot(rows: list[dict], path: str) -> None:
    """Loss curves on a log scale: one row of panels per workload, one column per optimizer."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    optimizers = list(dict.fromkeys(r["optimizer"] for r in rows))
    fig, axes = plt.subplots(len(workloads), len(optimizers), squeeze=False,
                             figsize=(6 * len(optimizers), 4 * len(workloads)))
    for ax_row, workload in zip(axes, workloads):
        for ax, opt in zip(ax_row, optimizers):
            panel = [r for r in rows if (r["workload"], r["optimizer"]) == (workload, opt)]
            if not panel:
                ax.set_axis_off()
                continue
            for r in panel:
                ax.semilogy(r["losses"], label=r["stage"], linestyle="--" if r["gates"] else "-")
            ax.set(title=f"{workload}: {opt}, lr {panel[0]['lr']:g}", xlabel="step",
                   ylabel=panel[0]["loss"])
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
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and initial params")
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


def main(argv=None, workloads=WORKLOADS) -> int:
    """Run the comparison; 0 when every gating row agrees with the oracle, 1 otherwise."""
    args = parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if device.type == "cuda":  # IEEE float32 matmuls, as the oracle computes
        torch.backends.cuda.matmul.allow_tf32 = False
    print(f"N={N}, sizes {D_IN}-{H}-{D_OUT}, {args.steps} steps, seed {args.seed}; torch stages in "
          f"{args.dtype} on {args.device}. diff: rel_error max|a - b| / max(|a| + |b|) against the "
          "numpy oracle (float64) of the same optimizer; * gates the exit code.")
    rows = []
    for workload in workloads:
        rows += (workload_rows := run_workload(workload, args.seed, args.steps, device, dtype))
        print_table(workload, workload_rows)
    failed = [f"{r['stage']} ({r['optimizer']}, {r['workload']})"
              for r in rows if r["gates"] and not r["agrees"]]
    if args.json:
        config = {k: getattr(args, k) for k in ("steps", "device", "dtype", "seed")}
        config.update(N=N, sizes=[D_IN, H, D_OUT], workloads={
            w.name: {"about": w.about, "tolerance": w.tolerances[args.dtype]} for w in workloads
        })
        with open(args.json, "w") as f:
            json.dump({"config": config, "ok": not failed, "rows": rows}, f, indent=1)
    if args.plot:
        save_plot(rows, args.plot)
    if failed:
        print(f"FAIL: {', '.join(failed)} differ from the oracle by more than the tolerance.")
        return 1
    print("OK: every functional_nn row agrees with the oracle.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
