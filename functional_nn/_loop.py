"""The training loop shared by fit and fit_ensemble: steps run in segments between host syncs.

A step is a pure function `step(params, state, xb, yb) -> (params, state, loss, finite)` (see
train.make_step). The loop feeds it batches and keeps every loss and finite flag on the device. It
syncs with the host only at the end of a segment: every CHECK_EVERY steps to look for a non-finite
loss or gradient (at the very end with on_nonfinite="ignore"), and where the caller asked for output
(log_every, callbacks). Steps are counted from 0 over the whole run, so step t takes the params from
t updates to t + 1; a resumed run (start > 0) counts on from where the last one stopped.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Iterator

import attrs
import torch
from torch import Tensor

from ._pytree import PyTree

# Steps between two looks at the finite flags: one host sync per segment, and at most this many
# wasted steps after a divergence.
CHECK_EVERY = 100


@attrs.frozen
class FitResult:
    """What fit and fit_ensemble return; for an ensemble of K models each per-model value has a
    trailing axis of K and params and opt_state a leading one.

    Attributes:
        params: the trained params (new tensors; the caller's are untouched).
        opt_state: the optimizer state after the last step; pass it back to go on.
        losses: (n,) the training loss of each step this call ran, before that step's update (as
            the seeds print it); on x's device. (n, K) for an ensemble.
        steps: the steps done since the start of training, this call's included: pass it back as
            start_step (with params and opt_state) to resume with the same batches.
        val_losses: (m,) the loss on val at each evaluation, or None without val. (m, K) for K models.
        val_steps: the step count at each evaluation (every eval_every steps, and the last step).
        wall_time: seconds this call took.
        stop_reason: "done" (ran all steps), "callback" (a callback stopped it) or "nonfinite"
            (on_nonfinite="stop" met a non-finite loss or gradient).
        nonfinite_step: the first step whose loss or gradients were not finite, or None.
    """

    params: PyTree
    opt_state: PyTree
    losses: Tensor
    steps: int
    val_losses: Tensor | None = None
    val_steps: tuple[int, ...] = ()
    wall_time: float = 0.0
    stop_reason: str = "done"
    nonfinite_step: int | None = None


@attrs.frozen
class Plan:
    """When the loop runs, looks and reports. eval_every None: no evaluation points at all."""

    start: int
    end: int
    eval_every: int | None
    log_every: int
    on_nonfinite: str
    callbacks: tuple[Callable, ...] = ()


def run(
    step: Callable,
    evaluate: Callable[[PyTree], Tensor] | None,
    params: PyTree,
    state: PyTree,
    data: Iterator[tuple[Tensor, Tensor]],
    plan: Plan,
) -> FitResult:
    """Steps plan.start..plan.end on the batches of `data`; see the module docstring."""
    return _Loop(step, evaluate, data, plan).run(params, state)


class _Loop:
    """The bookkeeping of one run: histories on the device, the clock of the progress lines."""

    def __init__(self, step, evaluate, data, plan: Plan):
        self.step, self.evaluate, self.data, self.plan = step, evaluate, data, plan
        self.losses: list[Tensor] = []
        self.flags: list[Tensor] = []
        self.val_losses: list[Tensor] = []
        self.val_steps: list[int] = []
        self.last_eval = self.last_log = plan.start
        self.log_clock = time.perf_counter()

    def run(self, params, state) -> FitResult:
        started, plan = time.perf_counter(), self.plan
        s, reason, bad = plan.start, "done", None
        with torch.no_grad():  # torch.func.grad ignores an outer no_grad; this keeps updates graph-free
            while s < plan.end:
                stop = self._boundary(s)
                batches = [next(self.data) for _ in range(s, stop)]
                new_params, new_state = self._steps(params, state, batches)
                bad = self._first_bad(s, stop) if plan.on_nonfinite != "ignore" else None
                if bad is not None:
                    params, state = self._stop(bad, s, params, state, batches)
                    s, reason = bad[0], "nonfinite"
                    break
                params, state, s = new_params, new_state, stop
                if self._report(s, params):
                    reason = "callback"
                    break
            if plan.on_nonfinite == "ignore":
                bad = self._first_bad(plan.start, s)
        return FitResult(
            params=params,
            opt_state=state,
            losses=torch.stack(self.losses)[: s - plan.start],
            steps=s,
            val_losses=torch.stack(self.val_losses) if self.val_losses else None,
            val_steps=tuple(self.val_steps),
            wall_time=time.perf_counter() - started,
            stop_reason=reason,
            nonfinite_step=None if bad is None else bad[0],
        )

    def _boundary(self, s: int) -> int:
        """The next step count at which the loop must look at the host: a check, report or the end."""
        p = self.plan
        every = [n for n in (CHECK_EVERY, p.log_every, p.eval_every) if n]
        return min([p.end] + [(s // n + 1) * n for n in every])

    def _steps(self, params, state, batches):
        for xb, yb in batches:
            params, state, loss, finite = self.step(params, state, xb, yb)
            self.losses.append(loss)
            self.flags.append(finite)
        return params, state

    def _first_bad(self, lo: int, hi: int) -> tuple[int, int | None] | None:
        """(step, model or None) of the first non-finite loss or gradient in steps lo..hi-1; syncs."""
        if hi == lo:
            return None
        flags = torch.stack(self.flags[lo - self.plan.start : hi - self.plan.start])
        if bool(flags.all()):
            return None
        bad = ~flags.reshape(flags.shape[0], -1)
        row = int(bad.any(1).nonzero()[0])
        model = int(bad[row].nonzero()[0]) if flags.ndim > 1 else None
        return lo + row, model

    def _stop(self, bad, s: int, params, state, batches):
        """Raise, or give back the params and state from before the bad step (replayed, bitwise)."""
        step, model = bad
        loss = self.losses[step - self.plan.start]
        loss = loss if model is None else loss[model]
        if self.plan.on_nonfinite == "raise":
            raise FloatingPointError(_diverged(step, model, float(loss)))
        for xb, yb in batches[: step - s]:
            params, state, _, _ = self.step(params, state, xb, yb)
        return params, state

    def _report(self, s: int, params) -> bool:
        """Evaluate, log and call the callbacks that fall on step count s; True to stop."""
        p = self.plan
        evaluating = p.eval_every is not None and (s % p.eval_every == 0 or s == p.end)
        val = self.evaluate(params) if evaluating and self.evaluate is not None else None
        if val is not None:
            self.val_losses.append(val)
            self.val_steps.append(s)
        if p.log_every and s % p.log_every == 0:
            if val is None and self.evaluate is not None:
                val = self.evaluate(params)
            self._log(s, val)
        if not (evaluating and p.callbacks):
            return False
        since = self.losses[self.last_eval - p.start : s - p.start]
        monitored = val if self.evaluate is not None else torch.stack(since).mean(0)
        self.last_eval = s
        return any([bool(callback(s, monitored, params)) for callback in p.callbacks])

    def _log(self, s: int, val: Tensor | None) -> None:
        now = time.perf_counter()
        rate = (s - self.last_log) / max(now - self.log_clock, 1e-9)
        self.last_log, self.log_clock = s, now
        line = f"step {s:>{len(str(self.plan.end))}}/{self.plan.end}  loss {_mean(self.losses[-1]):.6g}"
        if val is not None:
            line += f"  val {_mean(val):.6g}"
        print(f"{line}  {rate:.4g} steps/s", file=sys.stderr, flush=True)


def _mean(t: Tensor) -> float:
    """A loss as one number: itself, or the mean over the models of an ensemble."""
    return float(t.float().mean())


def _diverged(step: int, model: int | None, loss: float) -> str:
    where = f"step {step}" if model is None else f"step {step} in model {model} of the ensemble"
    what = f"the loss is {loss}" if not torch.isfinite(torch.tensor(loss)) else (
        f"the loss is {loss} but the gradients are not all finite"
    )
    return (
        f"Training diverged at {where}: {what}. Lower the learning rate, check the data and the "
        "loss, or pass on_nonfinite='stop' to get back the params from before that step."
    )
