"""fit's progress=True: a live tqdm bar (terminal or notebook, tqdm.auto) of steps, steps/s and
ETA, with the last loss, val loss and metrics beside it.

The loop calls `update` only where it looks at the host anyway (every CHECK_EVERY steps, every
log_every steps, at each evaluation with callbacks, and at the end: see `_loop.py`), so the bar
adds no host sync of its own, except with on_nonfinite="ignore", where those looks read nothing
else. tqdm is an optional extra: pip install "functional_nn[progress]".
"""

from __future__ import annotations

import importlib.util
import sys

from torch import Tensor


def check_available() -> None:
    """A clear error, before any work, when progress=True cannot show a bar."""
    if importlib.util.find_spec("tqdm") is None:
        raise ModuleNotFoundError(
            "progress=True draws its bar with tqdm, which is not installed: pip install tqdm "
            '(or pip install "functional_nn[progress]"), or pass log_every=n for plain lines.'
        )


def mean(t: Tensor) -> float:
    """A loss as one number: itself, or the mean over an ensemble's models (in float64, so a finite
    float64 loss past float32's range shows as itself, not as inf)."""
    return float(t.double().mean())


def summary(loss: Tensor, val: Tensor | None, metrics: dict | None) -> str:
    """'loss 0.1  val 0.2  accuracy 0.9': what a progress line shows after the step counts."""
    text = f"loss {mean(loss):.6g}"
    if val is not None:
        text += f"  val {mean(val):.6g}"
    for name, value in (metrics or {}).items():
        text += f"  {name} {mean(value):.4g}"
    return text


class Bar:
    """A tqdm bar over the steps start..end of one call."""

    def __init__(self, start: int, end: int):
        from tqdm.auto import tqdm

        self.done = start
        self.bar = tqdm(total=end, initial=start, unit="step", file=sys.stderr, dynamic_ncols=True)
        self.val: Tensor | None = None
        self.metrics: dict | None = None

    def update(self, s: int, loss: Tensor, val: Tensor | None, metrics: dict | None) -> None:
        """At step count s: the last loss, and val and metrics when this is an evaluation (the
        bar keeps showing the last ones between evaluations)."""
        if val is not None:
            self.val, self.metrics = val, metrics
        self.bar.set_postfix_str(summary(loss, self.val, self.metrics), refresh=False)
        self.bar.update(s - self.done)
        self.done = s

    def close(self) -> None:
        self.bar.close()
