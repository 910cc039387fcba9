"""Speed side by side: functional_nn's fit, the seeds' torch loops, numpy and the matmul floor.

One process, interleaved: each repeat runs every contender once, in an order rotated by one from
repeat to repeat, and a figure is the median over the repeats, so load from other work on the
machine falls on all contenders alike. Every run starts from the same weights and trains the same
steps; each contender runs once untimed first (warm-up), and only its training loop is timed.

    PYTHONPATH=. python scripts/bench.py [--quick] [--json PATH] [--device cpu|cuda]
        [--dtype float32|float64] [--steps S] [--repeats R] [--no-compile]
        [--only seed|sweep|ensembles|updates|fit16m ...]

Threads: torch and numpy's BLAS each start one thread per core, and on a machine shared with other
work those threads wait on each other, which made single matmuls here 10 to 40 times slower. Set
OMP_NUM_THREADS (both libraries read it at import) to measure with fewer: OMP_NUM_THREADS=1.

Four parts. The seed workload (N=64, 1000-100-10, no bias, summed squared error; SGD lr 1e-6 and
Adam lr 1e-4), every contender, as a ratio to the torch.optim loop and to the matmul floor. A
sweep of N and H with Adam: us per step and GFLOP/s. Ensembles of K models with Adam: fit_ensemble
against K fits one after another, per model-step. The optimizer update alone, on four tensors of
fixed grads summing to 100k, 1.6M and 16M params: functional_nn's pure update + apply_updates
against torch.optim's foreach and fused steps, with minor page faults per step and the peak RSS
above the RSS a run starts at. And fit16m: one 4000x4000 linear layer (16M params), Adam, fit
against the torch.optim loop, each run in a fresh process (bench_linear.py): steps/s, peak RSS
and minor page faults per step. `--only PART` runs some parts. The contenders are in
bench_cases.py.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
from collections.abc import Callable
from typing import NamedTuple

import bench_cases as cases
import bench_linear
import numpy as np
import torch
from bench_cases import SEED_SIZES, Prepared, Problem, Sizes, Unavailable


class Contender(NamedTuple):
    key: str  # the issue's letter
    name: str
    make: Callable[[Problem, int], Prepared]


CONTENDERS = [
    Contender("a", "fit", cases.fit_default),
    Contender("b", "fit(compile=True)", cases.fit_compiled),
    Contender("c", "torch.optim", cases.torch_optim()),
    Contender("c", "torch.optim foreach", cases.torch_optim(foreach=True)),
    Contender("c", "torch.optim fused", cases.torch_optim(fused=True)),
    Contender("d", "torch by hand", cases.torch_by_hand),
    Contender("e", "numpy oracle (float64)", cases.numpy_oracle),
    Contender("f", "matmul floor", cases.matmul_floor),
]
BASELINE, FLOOR = "torch.optim", "matmul floor"  # the two the ratios are to
SWEPT = ("fit", "fit(compile=True)", "torch.optim", "matmul floor")
# The update-alone table: (name, make(optimizer, size, steps, device, dtype) -> Prepared).
UPDATE_CONTENDERS = [
    ("functional_nn", cases.fnn_update),
    ("torch.optim foreach", cases.torch_update(foreach=True)),
    ("torch.optim fused", cases.torch_update(fused=True)),
]
UPDATE_BASELINES = ("torch.optim foreach", "torch.optim fused")
PARTS = ("seed", "sweep", "ensembles", "updates", "fit16m")


class Settings(NamedTuple):
    steps: int  # steps per run at the seed sizes; a sweep point with f times the flops runs 1/f
    repeats: int
    factors: tuple[tuple[int, int], ...]  # the sweep: (N factor, H factor)
    ks: tuple[int, ...]  # ensemble sizes
    ensemble_steps: int
    max_sequential: int | None  # time at most this many of the K sequential fits, per model
    update_sizes: tuple[int, ...]  # params in the update-alone table
    update_steps: int  # steps per run at the first of them; a size f times larger runs 1/f
    linear: tuple[int, int, int] = (4000, 64, 10)  # fit16m: (width, N, steps a run)


FULL = Settings(
    100,
    5,
    ((1, 1), (4, 1), (16, 1), (1, 4), (1, 16)),
    (1, 8, 32, 128),
    20,
    None,
    (100_000, 1_600_000, 16_000_000),
    160,
)
QUICK = Settings(20, 3, ((4, 1), (1, 4)), (1, 8, 32, 128), 5, 8, (1_000, 16_000), 4, (64, 8, 3))


def measure(prepared: dict[str, Prepared], repeats: int) -> dict:
    """The median over `repeats` rounds of each run's seconds (or of each figure, for runs that
    return a dict of them); every round runs each once."""
    for p in prepared.values():
        p.run()  # warm-up: allocations, lazy inits and caches stay out of the timings
    names = list(prepared)
    seconds = {name: [] for name in names}
    for i in range(repeats):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            seconds[name].append(prepared[name].run())
    return {name: _median(s) for name, s in seconds.items()}


def _median(samples: list):
    if not isinstance(samples[0], dict):
        return statistics.median(samples)
    figures = {key: [s[key] for s in samples] for key in samples[0]}
    return {key: None if None in v else statistics.median(v) for key, v in figures.items()}


def prepare(contenders, problem: Problem, steps: int) -> tuple[dict[str, Prepared], dict[str, str]]:
    """The runnable contenders, and why each of the others cannot run."""
    # Each group compiles its own steps (its shapes and optimizer objects are new); a fresh
    # dynamo keeps earlier groups' compilations from counting against its recompile limit,
    # past which a compiled function silently runs eager.
    torch._dynamo.reset()
    prepared, notes = {}, {}
    for c in contenders:
        try:
            prepared[c.name] = c.make(problem, steps)
        except Unavailable as why:
            notes[c.name] = str(why)
    return prepared, notes


def seed_rows(problem: Problem, s: Settings, contenders) -> list[dict]:
    """Every contender on the seed workload: us per step and the two ratios."""
    prepared, notes = prepare(contenders, problem, s.steps)
    us = {name: 1e6 * t / s.steps for name, t in measure(prepared, s.repeats).items()}
    rows = []
    for c in contenders:
        row = {"key": c.key, "contender": c.name, "us_per_step": us.get(c.name)}
        if c.name in us:
            row["vs_torch_optim"] = us[c.name] / us[BASELINE]
            row["vs_floor"] = us[c.name] / us[FLOOR]
            if prepared[c.name].compile_s is not None:
                row["compile_s"] = prepared[c.name].compile_s
        else:
            row["note"] = notes[c.name]
        rows.append(row)
    return rows


def sweep_rows(sizes: Sizes, device, dtype, s: Settings, contenders) -> list[dict]:
    """The SWEPT contenders with Adam at N and H scaled by each factor: us per step, GFLOP/s."""
    contenders = [c for c in contenders if c.name in SWEPT]
    rows = []
    for fn, fh in s.factors:
        point = sizes._replace(n=sizes.n * fn, h=sizes.h * fh)
        steps = max(2, s.steps // (fn * fh))
        problem = cases.make_problem(point, "adam", device, dtype)
        prepared, notes = prepare(contenders, problem, steps)
        us = {name: 1e6 * t / steps for name, t in measure(prepared, s.repeats).items()}
        gflop = point.flops() / 1e9
        rows.append(
            {
                "n": point.n,
                "h": point.h,
                "steps": steps,
                "gflop_per_step": gflop,
                "us_per_step": us,
                "gflops": {name: gflop / (t * 1e-6) for name, t in us.items()},
                "notes": notes,
                "compile_s": {
                    n: p.compile_s for n, p in prepared.items() if p.compile_s is not None
                },
            }
        )
    return rows


def ensemble_rows(sizes: Sizes, device, dtype, s: Settings, compile: bool = True) -> list[dict]:
    """fit_ensemble of K models against K fits and the floor, Adam: us per model-step, speed-up."""
    problem = cases.make_problem(sizes, "adam", device, dtype)
    rows = []
    for k in s.ks:
        sequential = min(k, s.max_sequential or k)
        runners = cases.ensemble_runners(problem, k, s.ensemble_steps, sequential, compile)
        us = {n: 1e6 * t / s.ensemble_steps for n, t in measure(runners, s.repeats).items()}
        rows.append(
            {
                "k": k,
                "steps": s.ensemble_steps,
                "sequential_timed": sequential,
                "us_per_model_step": us,
                "speedup": us["sequential fits"] / us["fit_ensemble"],
                "speedup_compiled": us["sequential fits"] / us["fit_ensemble compiled"]
                if "fit_ensemble compiled" in us
                else None,
            }
        )
    return rows


def update_rows(device, dtype, s: Settings, contenders=UPDATE_CONTENDERS) -> list[dict]:
    """Each optimizer's update alone at each size: us and minor page faults per step, peak RSS
    above the run's starting RSS (MB), and the ratios to torch.optim's foreach and fused steps."""
    rows = []
    for size in s.update_sizes:
        steps = max(2, s.update_steps * s.update_sizes[0] // size)
        for opt in cases.UPDATES:
            prepared, notes = {}, {}
            for name, make in contenders:
                try:
                    prepared[name] = make(opt, size, steps, device, dtype)
                except Unavailable as why:
                    notes[name] = str(why)
            figures = measure(prepared, s.repeats)
            us = {n: 1e6 * f["seconds"] / steps for n, f in figures.items()}
            rows.append(
                {
                    "size": size,
                    "optimizer": opt,
                    "steps": steps,
                    "us_per_step": us,
                    "vs": {
                        b: {n: t / us[b] for n, t in us.items()}
                        for b in UPDATE_BASELINES
                        if b in us
                    },
                    "faults_per_step": {n: f["faults"] / steps for n, f in figures.items()},
                    "peak_mb": {
                        n: None if f["peak_bytes"] is None else f["peak_bytes"] / 2**20
                        for n, f in figures.items()
                    },
                    "notes": notes,
                }
            )
            del prepared  # the next optimizer's tensors take their place, not theirs beside them
    return rows


def linear_rows(s: Settings) -> dict:
    """fit against the torch.optim loop on one wide linear layer, Adam, each run a fresh process,
    interleaved (the order alternates by repeat): medians of us per step, minor page faults per
    step and peak RSS above the timed run's start (MB); fit's steps/s as a ratio to the loop's."""
    width, n, steps = s.linear
    samples = {name: [] for name in bench_linear.SIDES}
    for i in range(s.repeats):
        order = bench_linear.SIDES if i % 2 == 0 else bench_linear.SIDES[::-1]
        for name in order:
            samples[name].append(bench_linear.in_subprocess(name, width, n, steps))
    figures = {name: _median(runs) for name, runs in samples.items()}
    us = {name: 1e6 * f["seconds_per_step"] for name, f in figures.items()}
    peak = {
        name: None if f["peak_bytes"] is None else f["peak_bytes"] / 2**20
        for name, f in figures.items()
    }
    return {
        "width": width,
        "n": n,
        "steps": steps,
        "params_mb": width * width * 4 / 2**20,  # float32
        "us_per_step": us,
        "steps_per_s_vs_loop": us["torch.optim"] / us["fit"],
        "faults_per_step": {name: f["faults_per_step"] for name, f in figures.items()},
        "peak_mb": peak,
    }


# ---- output -----------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str, width: int) -> str:
    return f"{'n/a':>{width}}" if value is None else f"{value:>{width}{spec}}"


def print_seed(rows: list[dict], header: str) -> None:
    print(
        f"\n{header}\n   {'contender':<26}{'us/step':>10}{'x torch.optim':>15}{'x floor':>9}  note"
    )
    for r in rows:
        note = r.get("note") or (f"compiled in {r['compile_s']:.1f} s" if "compile_s" in r else "")
        figures = (
            _fmt(r["us_per_step"], ".1f", 10)
            + _fmt(r.get("vs_torch_optim"), ".2f", 15)
            + _fmt(r.get("vs_floor"), ".2f", 9)
        )
        print(f"{r['key']}  {r['contender']:<26}{figures}  {note}")


def print_sweep(rows: list[dict], header: str) -> None:
    print(f"\n{header}\n{'N':>6}{'H':>6}{'steps':>6}" + "".join(f"{n:>24}" for n in SWEPT))
    print(" " * 18 + f"{'us/step  GFLOP/s':>24}" * len(SWEPT))
    for r in rows:
        cells = "".join(
            f"{_fmt(r['us_per_step'].get(n), '.0f', 15)}{_fmt(r['gflops'].get(n), '.1f', 9)}"
            for n in SWEPT
        )
        print(f"{r['n']:>6}{r['h']:>6}{r['steps']:>6}{cells}")
    for note in {note for r in rows for note in r["notes"].items()}:
        print(f"  n/a {note[0]}: {note[1]}")


def print_ensembles(rows: list[dict], header: str) -> None:
    print(
        f"\n{header}\n{'K':>5}{'fit_ensemble':>14}{'speed-up':>10}{'compiled':>10}{'speed-up':>10}"
        f"{'K fits':>10}{'floor':>10}  (us per model-step)"
    )
    for r in rows:
        us, timed = r["us_per_model_step"], r["sequential_timed"]
        scaled = "" if timed == r["k"] else f"  the K fits timed on {timed} models, per model"
        print(
            f"{r['k']:>5}{us['fit_ensemble']:>14.1f}{r['speedup']:>10.2f}"
            f"{_fmt(us.get('fit_ensemble compiled'), '.1f', 10)}{_fmt(r['speedup_compiled'], '.2f', 10)}"
            f"{us['sequential fits']:>10.1f}{us['matmul floor']:>10.1f}{scaled}"
        )


def print_updates(rows: list[dict], header: str) -> None:
    names = [n for n, _ in UPDATE_CONTENDERS]
    print(
        f"\n{header}\n{'params':>10} {'optimizer':<10}{'steps':>6}"
        + "".join(f"{n:>46}" for n in names)
    )
    print(" " * 27 + f"{'us/step  x foreach  x fused  faults  peak MB':>46}" * len(names))
    for r in rows:
        cells = "".join(
            _fmt(r["us_per_step"].get(n), ".0f", 11)
            + _fmt(r["vs"].get(UPDATE_BASELINES[0], {}).get(n), ".2f", 11)
            + _fmt(r["vs"].get(UPDATE_BASELINES[1], {}).get(n), ".2f", 9)
            + _fmt(r["faults_per_step"].get(n), ".0f", 8)
            + _fmt(r["peak_mb"].get(n), ".1f", 7)
            for n in names
        )
        print(f"{r['size']:>10} {r['optimizer']:<10}{r['steps']:>6}{cells}")
    for note in sorted({note for r in rows for note in r["notes"].items()}):
        print(f"  n/a {note[0]}: {note[1]}")


def print_linear(r: dict, header: str) -> None:
    print(f"\n{header}\n   {'contender':<14}{'us/step':>11}{'faults/step':>13}{'peak MB':>9}")
    for name in bench_linear.SIDES:
        figures = (
            _fmt(r["us_per_step"][name], ".0f", 11)
            + _fmt(r["faults_per_step"][name], ".0f", 13)
            + _fmt(r["peak_mb"][name], ".1f", 9)
        )
        print(f"   {name:<14}{figures}")
    print(f"   fit's steps/s: {r['steps_per_s_vs_loop']:.2f}x the loop's")


def machine(device: torch.device) -> dict:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "load_average": _load_average(),
    }


def _left_out(problem: Problem, steps: int) -> Prepared:
    raise Unavailable("left out by --no-compile")


def print_machine(info: dict) -> None:
    print(
        f"{info['cpu']} ({info['cores']} cores), {info['torch_threads']} torch threads "
        f"(OMP_NUM_THREADS={info['OMP_NUM_THREADS']}), device {info['device']}, torch "
        f"{info['torch']}, {info['date']}, load average {info['load_average']}"
    )
    load = info["load_average"]
    if load and load[0] >= info["cores"] > 1 < info["torch_threads"]:
        print(
            "warning: the machine is busy and torch runs several threads, which then wait on "
            "each other; the figures will be noise. Try OMP_NUM_THREADS=1 (see --help)."
        )


def _load_average() -> list[float] | None:
    """Runnable processes, averaged over 1, 5 and 15 minutes: how busy the machine was."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def parse_args(argv) -> argparse.Namespace:
    """The flags, checked before any work; bad ones exit 2 with a message saying how to fix them."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=next(p for p in __doc__.split("\n\n") if p.startswith("Threads:")),
    )
    parser.add_argument("--quick", action="store_true", help="fewer steps, repeats, sweep points")
    parser.add_argument("--json", metavar="PATH", help="write every figure and the machine here")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--steps", type=int, help="steps per timed run at the seed sizes (>= 1)")
    parser.add_argument("--repeats", type=int, help="timed runs per contender (>= 1)")
    parser.add_argument("--no-compile", action="store_true", help="leave out fit(compile=True)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="run only these parts (default: all)",
    )
    args = parser.parse_args(argv)
    for flag in ("steps", "repeats"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1, got {getattr(args, flag)}.")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(
            "--device cuda: no CUDA device is available to torch on this machine; "
            "use --device cpu, or install a CUDA build of torch on a GPU machine."
        )
    return args


def main(argv=None, sizes: Sizes = SEED_SIZES, settings: Settings | None = None) -> int:
    """Run the benchmark and print its tables; `sizes` and `settings` let tests shrink it."""
    args = parse_args(argv)
    s = settings or (QUICK if args.quick else FULL)
    s = s._replace(steps=args.steps or s.steps, repeats=args.repeats or s.repeats)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if device.type == "cuda":  # IEEE float32 matmuls, as everywhere else in the project
        torch.backends.cuda.matmul.allow_tf32 = False
    contenders = [
        c._replace(make=_left_out) if args.no_compile and c.key == "b" else c for c in CONTENDERS
    ]
    info = machine(device)
    print_machine(info)
    where = f"{args.dtype} on {args.device}, median of {s.repeats}"
    out = {"machine": info, "settings": s._asdict(), "dtype": args.dtype}
    n, d_in, h, d_out = sizes
    if "seed" in args.only:
        out["seed"] = {}
        for opt in cases.LR:
            out["seed"][opt] = seed_rows(
                cases.make_problem(sizes, opt, device, dtype), s, contenders
            )
            print_seed(
                out["seed"][opt],
                f"{opt} lr {cases.LR[opt]:g}: N={n}, {d_in}-{h}-{d_out}, "
                f"{s.steps} steps a run, {where}",
            )
    if "sweep" in args.only:
        out["sweep"] = sweep_rows(sizes, device, dtype, s, contenders)
        print_sweep(
            out["sweep"],
            f"sweep, adam: N and H scaled, {where}; GFLOP/s = {d_in}-H-{d_out} "
            "step's matmul flops (2*N*D_in*H*2 + 2*N*H*D_out*3) / time",
        )
    if "ensembles" in args.only:
        out["ensembles"] = ensemble_rows(sizes, device, dtype, s, not args.no_compile)
        print_ensembles(
            out["ensembles"],
            f"ensembles, adam: N={n}, {d_in}-{h}-{d_out}, {s.ensemble_steps} steps a run, {where}",
        )
    if "updates" in args.only:
        out["updates"] = update_rows(device, dtype, s)
        print_updates(
            out["updates"],
            f"the update alone (update + apply_updates; torch: step()), "
            f"lr {cases.UPDATE_LR:g}, four tensors, {where}; faults: minor page faults "
            "per step; peak MB: peak RSS above the run's start",
        )
    if "fit16m" in args.only and device.type == "cpu" and args.dtype == "float32":
        out["fit16m"] = linear_rows(s)
        width, n, steps = s.linear
        print_linear(
            out["fit16m"],
            f"fit16m, adam lr {bench_linear.LR:g}: one {width}x{width} linear layer, N={n}, "
            f"{steps} steps a run, a fresh process each, float32 on cpu, median of {s.repeats}; "
            f"params {out['fit16m']['params_mb']:.0f} MB; peak MB: peak RSS above the run's start",
        )
    elif "fit16m" in args.only:
        print("\nfit16m left out: it measures peak RSS, so it runs float32 on the cpu only")
    out["machine"]["load_average_end"] = _load_average()
    print(f"\nload average at the end {out['machine']['load_average_end']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
