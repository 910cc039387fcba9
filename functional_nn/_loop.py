"""The training loop shared by fit and fit_ensemble: steps run in segments between host syncs.

A step is a pure function `step(params, state, xb, yb) -> (params, state, loss, finite)` (see
train.make_step), over the user's params and state trees. When to evaluate, look and report is
the FitArgs of `_fit_args.py`. The loop feeds it batches in segments, which end where something is due: an
evaluation on val, a look at the host, or the end. Losses, finite flags and validation losses stay
on the device. The loop syncs with the host only every CHECK_EVERY steps to look for a non-finite
loss or gradient (at the very end with on_nonfinite="ignore"), where the caller asked for output
(log_every, callbacks), and at the end.

Numbering, one convention for every message and field: steps are counted from 0 over the whole run
(a resumed run, start > 0, counts on from where the last one stopped). Step t is the update that
takes the params from t updates done (step count t) to t + 1; its loss, losses[t], is measured at
the params of count t, before it. A divergence error names the step whose loss, gradients or
updated params were not finite (FitResult.nonfinite_step, which is also the count of finite steps
before it); a progress line names the last step it ran, the one whose loss it shows, then the
count of steps done, e.g. "step 9 (10/10 done)" (its val loss is at the params after that step).
Step counts (FitResult.steps, val_steps, a callback's step) count the steps done.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator

import attrs
import torch
from torch import Tensor

from . import _progress
from ._fit_args import FitArgs
from ._pytree import PyTree, tree_map

# Steps between two looks at the finite flags: one host sync per segment, and at most this many
# wasted steps after a divergence.
CHECK_EVERY = 100


def run(
    step: Callable,
    evaluate: Callable[[PyTree], Tensor] | None,
    params: PyTree,
    state: PyTree,
    data: Iterator[tuple[Tensor, Tensor]],
    args: FitArgs,
) -> dict:
    """Steps args.start_step..args.end on the batches of `data` (see the module docstring).

    Returns:
        The fields of fit's FitResult but compile_time, by name.
    """
    loop = _Loop(step, evaluate, data, args)
    try:
        return loop.run(params, state)
    finally:
        if loop.bar is not None:
            loop.bar.close()


@attrs.define
class _Mark:
    """The last look at the finite flags: where "stop" replays from, and what it replays."""

    step: int
    params: PyTree
    state: PyTree
    segment: int  # the index in _Loop.losses of the first segment after it
    batches: list = attrs.Factory(list)


class _Loop:
    """The bookkeeping of one run: histories on the device, one tensor per segment, and the clock of
    the progress lines."""

    def __init__(self, step, evaluate, data, args: FitArgs):
        self.step, self.evaluate, self.data, self.args = step, evaluate, data, args
        self.losses: list[Tensor] = []  # per segment: (n,) or (n, K)
        self.flags: list[Tensor] = []  # the same, True where loss and gradients were finite
        self.val_losses: list[Tensor] = []
        self.val_steps: list[int] = []
        self.val_metrics: list[dict] = []  # with fit(metrics=...): {name: value} per evaluation
        self.bar = _progress.Bar(args.start_step, args.end) if args.progress else None
        self.since_callbacks = 0  # the first segment after the callbacks' last call
        self.last_log, self.log_clock = args.start_step, time.perf_counter()

    def run(self, params, state) -> dict:
        started, args = time.perf_counter(), self.args
        s, reason, bad = args.start_step, "done", None
        mark = _Mark(s, params, state, 0)
        # torch.func.grad ignores an outer no_grad; it keeps the updates free of autograd graphs.
        with torch.no_grad():
            while s < args.end:
                stop = self._boundary(s)
                batches = [next(self.data) for _ in range(s, stop)]
                params, state = self._segment(params, state, batches)
                mark.batches += batches
                s = stop
                if self._evaluates(s) and self.evaluate is not None:
                    value = self.evaluate(params)
                    if self.args.metrics:  # evaluate gives (loss, {name: value})
                        value, measured = value
                        self.val_metrics.append(measured)
                    self.val_losses.append(value)
                    self.val_steps.append(s)
                if not self._looks(s):
                    continue
                bad = self._first_bad(mark) if args.on_nonfinite != "ignore" else None
                if bad is not None:
                    params, state = self._stop(bad, mark)
                    s, reason = bad[0], "nonfinite"
                    break
                mark = _Mark(s, params, state, len(self.losses))
                if self._host(s, params):
                    reason = "callback"
                    break
            if args.on_nonfinite == "ignore":
                bad = _first_bad(torch.cat(self.flags), args.start_step)
        return dict(
            params=params,
            opt_state=state,
            losses=torch.cat(self.losses),
            steps=s,
            val_losses=torch.stack(self.val_losses) if self.val_losses else None,
            val_steps=tuple(self.val_steps),
            val_metrics=_stack_metrics(self.val_metrics),
            wall_time=time.perf_counter() - started,
            stop_reason=reason,
            nonfinite_step=None if bad is None else bad[0],
        )

    def _boundary(self, s: int) -> int:
        """The next step count at which the loop evaluates or looks at the host, or the end."""
        p = self.args
        every = [n for n in (CHECK_EVERY, p.log_every, p.eval_every) if n]
        return min([p.end] + [(s // n + 1) * n for n in every])

    def _evaluates(self, s: int) -> bool:
        p = self.args
        return p.eval_every is not None and (s % p.eval_every == 0 or s == p.end)

    def _logs(self, s: int) -> bool:
        return bool(self.args.log_every) and s % self.args.log_every == 0

    def _looks(self, s: int) -> bool:
        """Whether step count s syncs with the host: a check, a log line, callbacks or the end."""
        calls = bool(self.args.callbacks) and self._evaluates(s)
        return s % CHECK_EVERY == 0 or s == self.args.end or self._logs(s) or calls

    def _segment(self, params, state, batches):
        """The steps of one segment, without a host sync; their losses and flags kept stacked."""
        losses, flags = [], []
        # From a segment's second step on, the params and state are the ones its step before
        # made, which nobody else has seen (the caller, a mark, a callback or a replay sees only
        # a segment's first): a step that can may write its results into them (donation).
        # The very first step's params are the caller's, but its state fit's init made, unless
        # the caller gave one (or "stop" may replay from that state).
        donating = getattr(self.step, "donating", None) or self.step
        first, args = self.step, self.args
        if not self.losses and args.opt_state is None and args.on_nonfinite != "stop":
            first = getattr(self.step, "donating_state", None) or self.step
        for i, (xb, yb) in enumerate(batches):
            params, state, loss, finite = (donating if i else first)(params, state, xb, yb)
            losses.append(loss)
            flags.append(finite)
        self.losses.append(torch.stack(losses))
        self.flags.append(torch.stack(flags))
        return params, state

    def _first_bad(self, mark: _Mark) -> tuple[int, int | None] | None:
        return _first_bad(torch.cat(self.flags[mark.segment :]), mark.step)

    def _stop(self, bad, mark: _Mark):
        """Raise, or give back the params and state from before the bad step, replayed from the
        mark (bitwise, as the step is deterministic), with the histories cut there."""
        step, model = bad
        losses = torch.cat(self.losses[mark.segment :])
        loss = losses[step - mark.step] if model is None else losses[step - mark.step, model]
        if self.args.on_nonfinite == "raise":
            raise FloatingPointError(_diverged(step, model, float(loss)))
        params, state = mark.params, mark.state
        if step == self.args.start_step:  # nothing to replay: these are the caller's own tensors
            params, state = tree_map(torch.clone, params), tree_map(torch.clone, state)
        for xb, yb in mark.batches[: step - mark.step]:
            params, state, _, _ = self.step(params, state, xb, yb)
        self.losses[mark.segment :] = [losses[: step - mark.step]]
        kept = sum(s <= step for s in self.val_steps)
        del self.val_losses[kept:], self.val_steps[kept:], self.val_metrics[kept:]
        return params, state

    def _host(self, s: int, params) -> bool:
        """The log line and callbacks that fall on step count s; True to stop."""
        val = self.val_losses[-1] if self.val_steps and self.val_steps[-1] == s else None
        metrics = self.val_metrics[-1] if val is not None and self.val_metrics else None
        if self.bar is not None:  # the bar instead of the lines, at every look
            self.bar.update(s, self.losses[-1][-1], val, metrics)
        elif self._logs(s):
            if val is None and self.evaluate is not None:
                val = self.evaluate(params)
                val = val[0] if self.args.metrics else val  # the loss; no metrics off schedule
            self._log(s, val, metrics)
        if not (self.args.callbacks and self._evaluates(s)):
            return False
        if self.evaluate is None:  # no val: the mean training loss since the last call
            val = torch.cat(self.losses[self.since_callbacks :]).mean(0)
        self.since_callbacks = len(self.losses)
        return any([bool(callback(s, val, params)) for callback in self.args.callbacks])

    def _log(self, s: int, val: Tensor | None, metrics: dict | None = None) -> None:
        now = time.perf_counter()
        rate = (s - self.last_log) / max(now - self.log_clock, 1e-9)
        self.last_log, self.log_clock = s, now
        end = self.args.end
        width = len(str(end))  # the last line shows the last step, s - 1, and the count s
        line = f"step {s - 1:>{width}} ({s:>{width}}/{end} done)  "
        line += _progress.summary(self.losses[-1][-1], val, metrics)
        print(f"{line}  {rate:.4g} steps/s", file=sys.stderr, flush=True)


def _stack_metrics(history: list[dict]) -> dict[str, Tensor] | None:
    """{name: (m,) or (m, K) values} from one {name: value} per evaluation; None for none."""
    if not history:
        return None
    return {name: torch.stack([h[name] for h in history]) for name in history[0]}


def _first_bad(flags: Tensor, first_step: int) -> tuple[int, int | None] | None:
    """(step, model or None) of the first False in flags, (n,) or (n, K) from first_step; syncs."""
    if bool(flags.all()):
        return None
    bad = ~flags.reshape(flags.shape[0], -1)
    row = int(bad.any(1).nonzero()[0])
    model = int(bad[row].nonzero()[0]) if flags.ndim > 1 else None
    return first_step + row, model


def _diverged(step: int, model: int | None, loss: float) -> str:
    where = f"step {step}" if model is None else f"step {step} in model {model} of the ensemble"
    what = (
        f"the loss is {loss}"
        if not math.isfinite(loss)
        else (f"the loss is {loss} but the gradients or the updated params are not all finite")
    )
    return (
        f"Training diverged at {where}: {what}. Lower the learning rate, check the data and the "
        "loss, or pass on_nonfinite='stop' to get back the params from before that step."
    )
