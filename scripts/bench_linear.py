"""bench.py's fit16m part: one wide linear layer (4000x4000 = 16M params), Adam, fit against the
torch.nn + torch.optim loop, each run in a fresh process so that its peak RSS is its own.

A run (`side(...)`, or `python scripts/bench_linear.py SIDE WIDTH N STEPS THREADS`, which prints
its figures as JSON) draws the data and weights, trains one untimed step (imports, lazy inits),
resets the peak RSS (Linux: "5" to /proc/self/clear_refs), then trains `steps` steps from the
initial weights with a fresh optimizer state and reports seconds, minor page faults and the peak
RSS above the RSS the timed run started at (the timed run allocates the optimizer state, as a
first call of either does).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import bench_cases as cases
import torch

import functional_nn as fnn

SIDES = ("fit", "torch.optim")
LR = 1e-4
_ROOT = Path(__file__).resolve().parents[1]


def _problem(width: int, n: int):
    generator = torch.Generator().manual_seed(0)
    draw = lambda *shape: torch.randn(*shape, generator=generator)
    return draw(n, width), draw(n, width), draw(width, width)


def _fit(width: int, n: int, w0):
    model, opt = fnn.mlp([width, width], bias=False), fnn.adam(LR)
    params = [{"weight": w0}]
    return lambda x, y, steps: fnn.fit(params, x, y, opt, model=model, steps=steps)


def _torch_loop(width: int, w0):
    layer = torch.nn.Linear(width, width, bias=False)
    loss_fn = torch.nn.MSELoss(reduction="sum")

    def run(x, y, steps):
        with torch.no_grad():
            layer.weight.copy_(w0)
        layer.weight.grad = None
        opt = torch.optim.Adam(layer.parameters(), lr=LR)  # fresh state, as fit makes one
        losses = []
        for _ in range(steps):
            loss = loss_fn(layer(x), y)
            losses.append(loss.detach())
            opt.zero_grad()
            loss.backward()
            opt.step()
        return torch.stack(losses)

    return run


def side(name: str, width: int, n: int, steps: int) -> dict:
    """One run of `name` (fit or torch.optim) in this process: seconds, faults, peak bytes."""
    x, y, w0 = _problem(width, n)
    run = _fit(width, n, w0) if name == "fit" else _torch_loop(width, w0)
    run(x, y, 1)  # warm-up
    figures = {}

    def timed():
        figures["out"] = run(x, y, steps)

    measured = cases.timed_steps(timed, 1, torch.device("cpu"))
    measured["faults_per_step"] = measured.pop("faults") / steps
    measured["seconds_per_step"] = measured.pop("seconds") / steps
    return measured


def in_subprocess(name: str, width: int, n: int, steps: int) -> dict:
    """`side` in a fresh Python process (its peak RSS its own), with this one's thread count."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(_ROOT), str(_ROOT / "scripts"), env.get("PYTHONPATH", "")]
    )
    argv = [sys.executable, str(Path(__file__)), name, str(width), str(n), str(steps)]
    argv.append(str(torch.get_num_threads()))
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"bench_linear {name} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    which, *sizes = sys.argv[1:]
    torch.set_num_threads(int(sizes[3]))
    print(json.dumps(side(which, int(sizes[0]), int(sizes[1]), int(sizes[2]))))
