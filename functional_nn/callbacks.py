"""Callbacks for fit: `callback(step, loss, params) -> bool`; True stops training.

fit calls each callback at every evaluation point (every `eval_every` steps, once per epoch by
default, and after the last step) with the step count, the monitored loss as a 0-d tensor (the
validation loss when fit has `val`, else the mean training loss since the last evaluation) and the
current params. Reading the loss syncs with the host; that is the price of asking for it.
"""

from __future__ import annotations

import math

from torch import Tensor

from ._pytree import PyTree
from .optim._checks import integer, number


class EarlyStopping:
    """Stop when the monitored loss has not improved for `patience` evaluations in a row.

    Keeps the best params seen: fit never mutates params, so holding them costs no copy. One
    instance follows one fit; make a new one for the next.

    Args:
        patience: evaluations without improvement to allow before stopping, >= 1.
        min_delta: an improvement must lower the best loss by more than this, >= 0.
    Attributes:
        best_loss: the lowest monitored loss so far (inf before the first evaluation).
        best_step: the step count at which it was seen, or None.
        best_params: the params at that evaluation, or None.
        stopped_step: the step count at which it asked fit to stop, or None.
    """

    def __init__(self, patience: int = 5, min_delta: float = 0.0):
        integer("patience", patience, 1)
        number("min_delta", min_delta)
        self.patience, self.min_delta = patience, float(min_delta)
        self.best_loss = math.inf
        self.best_step: int | None = None
        self.best_params: PyTree | None = None
        self.stopped_step: int | None = None
        self._waited = 0

    def __call__(self, step: int, loss: Tensor, params: PyTree) -> bool:
        value = float(loss)
        if value < self.best_loss - self.min_delta:
            self.best_loss, self.best_step, self.best_params = value, step, params
            self._waited = 0
            return False
        self._waited += 1
        if self._waited >= self.patience:
            self.stopped_step = step
            return True
        return False
