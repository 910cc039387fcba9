"""The contenders of scripts/bench.py: one training workload, many programs that run its steps.

A contender is `make(problem, steps) -> Prepared`: it does its setup (untimed) and returns `run`,
which trains `steps` steps from the problem's initial weights, the same start every call, and
returns the seconds the steps took, read after the device has finished them. A contender that
cannot run a problem raises Unavailable with the reason, which the tables print. The update-alone
contenders (the end of the file) time an optimizer step without a model, and return the seconds
with the step's minor page faults and peak RSS.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

import functional_nn as fnn
import oracle.optim
import oracle.train

LR = {"sgd": 1e-6, "adam": 1e-4}  # the seeds' learning rates


class Sizes(NamedTuple):
    """A two-layer bias-free ReLU net d_in-h-d_out trained full batch on n examples."""

    n: int
    d_in: int
    h: int
    d_out: int

    def flops(self) -> int:
        """Flops of one step's five matrix products (forward x W1^T, h W2^T; backward dW2, dh, dW1),
        2 per multiply-add: 2 n d_in h for each of the two (n, d_in, h) products, 2 n h d_out for
        each of the three (n, h, d_out) ones. The elementwise work is left out: it is O(n h)."""
        n, d_in, h, d_out = self
        return 2 * n * d_in * h * 2 + 2 * n * h * d_out * 3


SEED_SIZES = Sizes(64, 1000, 100, 10)


class Problem(NamedTuple):
    """Data and initial weights, drawn once; every run of every contender starts from them."""

    sizes: Sizes
    optimizer: str  # "sgd" or "adam"
    x: Tensor  # (n, d_in) on the device, in the dtype
    y: Tensor  # (n, d_out)
    w0: tuple[Tensor, Tensor]  # (h, d_in), (d_out, h): nn.Linear's layout

    @property
    def device(self) -> torch.device:
        return self.x.device

    @property
    def model(self) -> fnn.Network:
        return fnn.mlp([self.sizes.d_in, self.sizes.h, self.sizes.d_out], bias=False)


def make_problem(sizes: Sizes, optimizer: str, device, dtype, seed: int = 0) -> Problem:
    """Standard-normal data and weights, as the seeds draw them, from one seed."""
    generator = torch.Generator().manual_seed(seed)
    draw = lambda *shape: torch.randn(*shape, generator=generator).to(device, dtype)
    n, d_in, h, d_out = sizes
    return Problem(sizes, optimizer, draw(n, d_in), draw(n, d_out), (draw(h, d_in), draw(d_out, h)))


class Prepared(NamedTuple):
    run: Callable[[], float]  # trains from the initial weights; returns the seconds the steps took
    compile_s: float | None = None  # seconds of the first, compiling call, for compiled contenders


class Unavailable(Exception):
    """This contender cannot run this problem; the message says why."""


def now(device: torch.device) -> float:
    """The clock, read after the device's queued work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# ---- (a), (b): functional_nn's fit ------------------------------------------------------------


def fit_runner(p: Problem, steps: int, **options) -> Callable[[], fnn.FitResult]:
    """fit on the problem, with the same model, loss and opt objects every call (so a compiled
    step is reused)."""
    model, opt = p.model, {"sgd": fnn.sgd, "adam": fnn.adam}[p.optimizer](LR[p.optimizer])
    params = [{"weight": w} for w in p.w0]
    return lambda: fnn.fit(params, p.x, p.y, opt, model=model, steps=steps, **options)


def fit_default(p: Problem, steps: int) -> Prepared:
    # FitResult.wall_time times the loop alone (not fit's input checks); the loop ends with a
    # host sync, as it reads the finite flags.
    fit = fit_runner(p, steps)
    return Prepared(lambda: fit().wall_time)


def fit_compiled(p: Problem, steps: int) -> Prepared:
    fit = fit_runner(p, steps, compile=True)
    first = fit()  # compiles; the timed calls reuse the compiled step
    return Prepared(lambda: fit().wall_time, compile_s=first.compile_time)


# ---- (c), (d): the seeds' torch programs ------------------------------------------------------


def torch_optim(**options) -> Callable[[Problem, int], Prepared]:
    """The seeds' torch.nn + torch.optim loop; options go to the optimizer (foreach, fused)."""

    def make(p: Problem, steps: int) -> Prepared:
        _n, d_in, h, d_out = p.sizes
        like = {"device": p.device, "dtype": p.x.dtype}
        model = torch.nn.Sequential(
            torch.nn.Linear(d_in, h, bias=False, **like),
            torch.nn.ReLU(),
            torch.nn.Linear(h, d_out, bias=False, **like),
        )
        opt_class = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[p.optimizer]
        try:
            opt_class(model.parameters(), lr=LR[p.optimizer], **options)
        except RuntimeError as error:
            raise Unavailable(f"torch refuses {options}: {error}") from error
        loss_fn = torch.nn.MSELoss(reduction="sum")

        def run() -> float:
            with torch.no_grad():
                model[0].weight.copy_(p.w0[0]), model[2].weight.copy_(p.w0[1])
            opt = opt_class(model.parameters(), lr=LR[p.optimizer], **options)  # fresh state
            losses = []
            start = now(p.device)
            for _ in range(steps):
                loss = loss_fn(model(p.x), p.y)
                losses.append(loss.detach())  # as fit records them: on the device, no .item()
                opt.zero_grad()
                loss.backward()
                opt.step()
            torch.stack(losses)
            return now(p.device) - start

        return Prepared(run)

    return make


def torch_by_hand(p: Problem, steps: int) -> Prepared:
    """The seeds' second program: mm/clamp forward, hand-written backward, in-place SGD.

    The same loop as scripts/stages.py's torch_by_hand, without its bias terms and its numpy
    problem: here it runs on the bench's tensors, so every contender times the same data."""
    if p.optimizer != "sgd":
        raise Unavailable("the seeds write this loop for SGD only")
    lr, x, y = LR["sgd"], p.x, p.y

    def run() -> float:
        w1, w2 = (w.t().contiguous() for w in p.w0)  # the seeds' (in, out) layout
        losses = []
        start = now(p.device)
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
        torch.stack(losses)
        return now(p.device) - start

    return Prepared(run)


# ---- (e), (f): the numpy oracle and the matmul floor ------------------------------------------


def numpy_oracle(p: Problem, steps: int) -> Prepared:
    """oracle.train: the seeds' numpy program, float64 on the CPU whatever the problem's dtype
    (its copy of the initial weights, about 1 µs a step here, is timed with it)."""
    x, y = (t.cpu().double().numpy() for t in (p.x, p.y))
    w0 = [{"weight": w.cpu().double().numpy()} for w in p.w0]
    opt_class = {"sgd": oracle.optim.SGD, "adam": oracle.optim.Adam}[p.optimizer]

    def run() -> float:
        opt = opt_class(lr=LR[p.optimizer])
        start = time.perf_counter()
        oracle.train.train(w0, x, y, opt, steps=steps)
        return time.perf_counter() - start

    return Prepared(run)


def matmul_floor(p: Problem, steps: int) -> Prepared:
    """The five matrix products of a step (see Sizes.flops) into preallocated outputs: a bound no
    training loop can beat with these kernels, whatever the optimizer."""
    (w1, w2), x = p.w0, p.x
    dout = torch.ones_like(p.y)
    empty = lambda *shape: torch.empty(*shape, device=p.device, dtype=x.dtype)
    n, d_in, h, d_out = p.sizes
    hidden, out, dh = empty(n, h), empty(n, d_out), empty(n, h)
    dw1, dw2 = empty(h, d_in), empty(d_out, h)

    def run() -> float:
        start = now(p.device)
        for _ in range(steps):
            torch.mm(x, w1.t(), out=hidden)
            torch.mm(hidden, w2.t(), out=out)
            torch.mm(dout.t(), hidden, out=dw2)
            torch.mm(dout, w2, out=dh)
            torch.mm(dh.t(), x, out=dw1)
        return now(p.device) - start

    return Prepared(run)


# ---- ensembles: fit_ensemble against one fit after another -------------------------------------


def ensemble_runners(
    p: Problem, k: int, steps: int, sequential: int, compile: bool = True
) -> dict[str, Prepared]:
    """fit_ensemble of k models (model i from model.init(i)), `sequential` fits of the same models
    one after another, and one model's matmul floor; each returns its seconds per model."""
    model, opt = p.model, {"sgd": fnn.sgd, "adam": fnn.adam}[p.optimizer](LR[p.optimizer])
    trees = [model.init(i, dtype=p.x.dtype, device=p.device) for i in range(k)]

    def together(**options) -> float:
        return (
            fnn.fit_ensemble(trees, p.x, p.y, opt, model=model, steps=steps, **options).wall_time
            / k
        )

    compiled = {}
    if compile:
        first = fnn.fit_ensemble(trees, p.x, p.y, opt, model=model, steps=steps, compile=True)
        compiled["fit_ensemble compiled"] = Prepared(
            lambda: together(compile=True), compile_s=first.compile_time
        )

    def one_by_one() -> float:
        fits = [fnn.fit(t, p.x, p.y, opt, model=model, steps=steps) for t in trees[:sequential]]
        return sum(r.wall_time for r in fits) / sequential

    return {
        "fit_ensemble": Prepared(together),
        **compiled,
        "sequential fits": Prepared(one_by_one),
        "matmul floor": matmul_floor(p, steps),
    }


# ---- the optimizer update alone: one step on fixed grads, no model ------------------------------

# name -> (functional_nn and torch.optim's optimizer, its options); lr 1e-3 for all.
UPDATES = {
    "sgd": ("sgd", {}),
    "momentum": ("sgd", {"momentum": 0.9}),
    "rmsprop": ("rmsprop", {}),
    "adam": ("adam", {}),
    "adamw": ("adamw", {}),
    "adagrad": ("adagrad", {}),
    "adamax": ("adamax", {}),
    "nadam": ("nadam", {}),
    "radam": ("radam", {}),
}
UPDATE_LR = 1e-3
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


def update_leaves(size: int, device, dtype, seed: int = 0) -> tuple[list[Tensor], list[Tensor]]:
    """Params and grads: four standard-normal tensors of 1/2, 1/4, 1/8 and the rest of `size`."""
    generator = torch.Generator().manual_seed(seed)
    parts = [size // 2, size // 4, size // 8]
    parts.append(size - sum(parts))
    draw = lambda: [torch.randn(k, generator=generator).to(device, dtype) for k in parts]
    return draw(), draw()


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _status_bytes(key: str) -> int | None:
    """A size from /proc/self/status (VmRSS, VmHWM), in bytes; None where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: "5" to /proc/self/clear_refs); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def timed_steps(
    step: Callable[[], None], steps: int, device: torch.device
) -> dict[str, float | None]:
    """Seconds, minor page faults and peak RSS above the starting RSS (bytes) of `steps` steps."""
    can_peak = _reset_peak_rss()
    rss = _status_bytes("VmRSS")
    faults = _minor_faults()
    start = now(device)
    for _ in range(steps):
        step()
    seconds = now(device) - start
    faults = _minor_faults() - faults
    peak = _status_bytes("VmHWM") if can_peak else None
    # the kernel folds its per-thread RSS counters into VmHWM lazily, so VmHWM can read a little
    # below the VmRSS read before the steps (seen: -0.13 MB): the peak is at least that RSS
    return {
        "seconds": seconds,
        "faults": faults,
        "peak_bytes": None if peak is None or rss is None else max(peak, rss) - rss,
    }


def fnn_update(name: str, size: int, steps: int, device, dtype) -> Prepared:
    """functional_nn's pure update and apply_updates, as a hand-written loop runs them; each run
    goes on from the params and state where the last one stopped."""
    factory, options = UPDATES[name]
    opt = getattr(fnn.optim, factory)(UPDATE_LR, **options)
    params, grads = update_leaves(size, device, dtype)
    carry = [params, opt.init(params)]

    def step():
        updates, carry[1] = opt.update(grads, carry[1], carry[0])
        carry[0] = fnn.apply_updates(carry[0], updates)

    return Prepared(lambda: timed_steps(step, steps, device))


def torch_update(**options) -> Callable[[str, int, int, torch.device, torch.dtype], Prepared]:
    """torch.optim's step() on the same params and grads; options: foreach=True or fused=True."""

    def make(name: str, size: int, steps: int, device, dtype) -> Prepared:
        factory, kwargs = UPDATES[name]
        params, grads = update_leaves(size, device, dtype)
        for p, g in zip(params, grads):
            p.requires_grad_(True)
            p.grad = g
        try:
            opt = TORCH_OPTIMIZERS[factory](params, UPDATE_LR, **kwargs, **options)
        except (RuntimeError, TypeError) as error:
            raise Unavailable(
                f"torch.optim.{TORCH_OPTIMIZERS[factory].__name__} has no {options}"
            ) from error
        return Prepared(lambda: timed_steps(opt.step, steps, device))

    return make
