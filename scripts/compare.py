"""The seeds' six stages side by side with functional_nn, checked against the numpy oracle.

One table per workload (scripts/workloads.py: the seeds' regression, the same with biases, a
cross-entropy classification, whose table adds the final training accuracy, and a batch-norm +
dropout net, whose table adds the running statistics' difference); within one, every stage
(scripts/stages.py, scripts/stages_state.py) trains the same net from the same data, initial params
and dropout masks, so every loss curve can be compared step by step with the oracle's curve for the
same optimizer.

    python scripts/compare.py [--steps 500] [--device cpu|cuda]
        [--dtype float64|float32] [--seed 0] [--json PATH] [--plot PATH]

Exits 1 when a functional_nn row disagrees with the oracle beyond its workload's tolerance for the
dtype (workloads.TOLERANCES): a check, not a printout. Exits 2 on bad arguments
(including --device cuda without a GPU, --plot without matplotlib).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

# Run as a file, only scripts/ is on sys.path: put this checkout's root first, so that its
# oracle and scripts modules are the ones imported (what PYTHONPATH=. does).
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oracle.gradcheck import rel_error
from oracle.networks import mlp_forward
from oracle.train import flat_params
from scripts.stages import Problem, StageResult
from scripts.workloads import D_IN, D_OUT, ORACLE, TOLERANCES, WORKLOADS, H, N, Stage, Workload

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


def _row(
    workload: str,
    stage: Stage,
    result: StageResult,
    reference: StageResult,
    problem: Problem,
    tolerance: float,
) -> dict:
    """A stage's figures and its differences from the oracle's run: one row of the table."""
    curve_diff = difference(result.losses, reference.losses)
    pairs = zip(flat_params(result.params), flat_params(reference.params), strict=True)
    params_diff = max(difference(p, r) for p, r in pairs)
    state_diff = None  # batch norm's running statistics, for a workload whose net has them
    if reference.model_state is not None:
        names = sorted(reference.model_state)
        state_diff = max(difference(result.model_state[k], reference.model_state[k]) for k in names)
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
        "state_rel_diff": state_diff,
        "accuracy": accuracy(result.params, problem),
        "us_per_step": 1e6 * result.seconds / len(result.losses),
        "tolerance": tolerance,
        "agrees": max(curve_diff, params_diff, state_diff or 0.0) <= tolerance,
        "losses": result.losses.tolist(),
    }


def run_workload(workload: Workload, seed: int, steps: int, device, dtype) -> list[dict]:
    """Every stage beside the oracle of its optimizer: one dict per row, the oracle's first."""
    problem = workload.problem(seed)
    tolerance = workload.tolerances[str(dtype).removeprefix("torch.")]
    rows = []
    for optimizer in dict.fromkeys(stage.optimizer for stage in workload.stages):
        reference = workload.oracle(optimizer, problem, steps, device, dtype)
        rows.append(
            _row(
                workload.name,
                Stage(ORACLE, optimizer, workload.oracle, False),
                reference,
                reference,
                problem,
                tolerance,
            )
        )
        for stage in (s for s in workload.stages if s.optimizer == optimizer):
            stage.run(optimizer, problem, 1, device, dtype)  # warm-up: one-time costs untimed
            result = stage.run(optimizer, problem, steps, device, dtype)
            rows.append(_row(workload.name, stage, result, reference, problem, tolerance))
    return rows


def print_table(workload: Workload, rows: list[dict]) -> None:
    """One line per stage, with a training-accuracy column where the workload classifies and a
    running-statistics column where its net has them; '*' marks the rows that gate the exit code."""
    with_accuracy = any(r["accuracy"] is not None for r in rows)
    with_state = any(r["state_rel_diff"] is not None for r in rows)
    print(f"\n{workload.name}: {workload.about}; tolerance {rows[0]['tolerance']:.0e}.")
    columns = f"{'stage':<25}{'opt, lr':<12}{'first loss':>12}{'final loss':>12}{'curve diff':>12}"
    accuracy_column = f"{'train acc':>10}" if with_accuracy else ""
    state_column = f"{'state diff':>12}" if with_state else ""
    print(f"{columns}{'param diff':>12}{state_column}{accuracy_column}{'us/step':>10}  vs oracle")
    for r in rows:
        name, opt = r["stage"] + (" *" if r["gates"] else ""), f"{r['optimizer']} {r['lr']:.0e}"
        acc = f"{r['accuracy']:>10.3f}" if with_accuracy else ""
        state = f"{r['state_rel_diff']:>12.1e}" if with_state else ""
        print(
            f"{name:<25}{opt:<12}{r['first_loss']:>12.4e}{r['final_loss']:>12.4e}"
            f"{r['curve_rel_diff']:>12.1e}{r['params_rel_diff']:>12.1e}{state}{acc}"
            f"{r['us_per_step']:>10.1f}  {'agrees' if r['agrees'] else 'DIFFERS'}"
        )


def save_plot(rows: list[dict], path: str) -> None:
    """One column per (workload, optimizer) that has stages: the loss curves above, and below each
    stage's difference from the oracle's curve, step by step, against the tolerance (log scales)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((r["workload"], r["optimizer"]) for r in rows))
    fig, axes = plt.subplots(
        2, len(panels), squeeze=False, sharex="col", figsize=(6 * len(panels), 8)
    )
    for (loss_ax, diff_ax), key in zip(axes.T, panels):
        panel = [r for r in rows if (r["workload"], r["optimizer"]) == key]
        oracle = np.asarray(next(r["losses"] for r in panel if r["stage"] == ORACLE))
        for r in panel:
            style = "--" if r["gates"] else "-"
            loss_ax.semilogy(r["losses"], label=r["stage"], linestyle=style)
            if r["stage"] != ORACLE:
                _plot_difference(diff_ax, np.asarray(r["losses"]), oracle, r["stage"], style)
        diff_ax.axhline(panel[0]["tolerance"], color="black", linewidth=0.8, label="tolerance")
        loss_ax.set(title=f"{key[0]}: {key[1]}, lr {panel[0]['lr']:g}", ylabel=panel[0]["loss"])
        diff_ax.set(yscale="log", xlabel="step", ylabel="|loss - oracle's| / (|loss| + |oracle's|)")
        loss_ax.legend(fontsize="small")
        diff_ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_difference(ax, losses: np.ndarray, oracle: np.ndarray, stage: str, style: str) -> None:
    """A stage's relative difference from the oracle at each step; steps where the two are equal
    have no point on a log scale, so the legend says how many there are."""
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = np.abs(losses - oracle) / (np.abs(losses) + np.abs(oracle))
    equal = int(np.sum(diff == 0))
    note = f" (equal at {equal}/{len(diff)} steps)" if equal else ""
    ax.plot(
        np.where(diff > 0, diff, np.nan), ".", label=stage + note, linestyle=style, markersize=3
    )


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
        parser.error(
            "--device cuda: no CUDA device is available to torch on this machine; "
            "use --device cpu, or install a CUDA build of torch on a GPU machine."
        )
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error(
                "--plot needs matplotlib, which is not installed; install the extra "
                "with `pip install -e '.[plot]'`, or leave out --plot."
            )
    return args


def main(argv=None, workloads=WORKLOADS) -> int:
    """Run the comparison; 0 when every gating row agrees with the oracle, 1 otherwise."""
    args = parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if device.type == "cuda":  # IEEE float32 matmuls, as the oracle computes
        torch.backends.cuda.matmul.allow_tf32 = False
    print(
        f"N={N}, sizes {D_IN}-{H}-{D_OUT}, {args.steps} steps, seed {args.seed}; torch stages in "
        f"{args.dtype} on {args.device}. diff: rel_error max|a - b| / max(|a| + |b|) against the "
        "numpy oracle (float64) of the same optimizer; * gates the exit code."
    )
    rows = []
    for workload in workloads:
        rows += (workload_rows := run_workload(workload, args.seed, args.steps, device, dtype))
        print_table(workload, workload_rows)
    failed = [
        f"{r['stage']} ({r['optimizer']}, {r['workload']})"
        for r in rows
        if r["gates"] and not r["agrees"]
    ]
    if args.json:
        config = {k: getattr(args, k) for k in ("steps", "device", "dtype", "seed")}
        config.update(
            N=N,
            sizes=[D_IN, H, D_OUT],
            workloads={
                w.name: {"about": w.about, "tolerance": w.tolerances[args.dtype]} for w in workloads
            },
        )
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
