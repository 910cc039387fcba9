"""Callbacks for fit: `callback(step, loss, params) -> bool`; True stops training.

fit calls each callback at every evaluation point (every `eval_every` steps, once per epoch by
default, and after the last step) with the step count, the monitored loss as a 0-d tensor (the
validation loss when fit has `val`, else the mean training loss since the last evaluation) and the
current params. Reading the loss syncs with the host; that is the price of asking for it.

A callback may also have either of two methods, which fit calls once per fit, in the order of the
callbacks list (Keras' on_train_begin and on_train_end):
    on_fit_start(): after fit's input checks, before the first step;
    on_fit_end(result) -> FitResult: after the last step (not when fit raises); what it returns
        becomes fit's result.
and, for a stateful network (batch norm, dropout), a third, called before on_fit_start:
    watch_model_state(get): `get()` returns the model state after the latest step, so a callback
        can keep the state that belongs with the params it is given.
"""

from __future__ import annotations

import math

import attrs
from torch import Tensor

from ._checks import flags, integer, number
from ._pytree import PyTree, tree_map


class EarlyStopping:
    """Stop when the monitored loss has not improved for `patience` evaluations in a row.

    Keeps a copy of the best params seen (a copy, so that it stays valid however fit's loop
    treats the buffers it owns; one params-size copy per improvement). Its state
    follows one fit: each fit it is passed to starts it afresh (on_fit_start), so an instance can
    be reused, but a resumed fit waits `patience` evaluations anew.

    Args:
        patience: evaluations without improvement to allow before stopping, >= 1.
        min_delta: an improvement must lower the best loss by more than this, >= 0.
        restore_best: when True, fit's result holds the best params seen at an evaluation
            (best_params) instead of the last ones, as Keras' restore_best_weights, and for a
            stateful network the model state of that step (best_model_state: batch norm's running
            statistics). opt_state, steps and losses stay those of the last step run, so such a result
            is not a point to resume from bitwise. Without any evaluation the params stay as they
            are.
    Attributes:
        best_loss: the lowest monitored loss so far (inf before the first evaluation).
        best_step: the step count at which it was seen, or None.
        best_params: the params at that evaluation, or None.
        best_model_state: a stateful network's model state at that evaluation, or None.
        stopped_step: the step count at which it asked fit to stop, or None.
    """

    def __init__(self, patience: int = 5, min_delta: float = 0.0, restore_best: bool = False):
        integer("patience", patience, 1)
        number("min_delta", min_delta)
        flags(restore_best=restore_best)
        self.patience, self.min_delta, self.restore_best = patience, float(min_delta), restore_best
        self._model_state = None  # set by fit through watch_model_state, for one fit
        self.on_fit_start()

    def on_fit_start(self) -> None:
        """Forget the last fit: a reused instance must not stop a new fit on the old one's best."""
        self.best_loss = math.inf
        self.best_step: int | None = None
        self.best_params: PyTree | None = None
        self.best_model_state: PyTree | None = None
        self.stopped_step: int | None = None
        self._waited = 0

    def on_fit_end(self, result):
        """With restore_best, the result with the best params seen."""
        get, self._model_state = self._model_state, None  # a later fit may have no state
        if not self.restore_best or self.best_params is None:
            return result
        if get is not None and result.model_state is not None:
            return attrs.evolve(result, params=self.best_params, model_state=self.best_model_state)
        return attrs.evolve(result, params=self.best_params)

    def watch_model_state(self, get) -> None:
        """Called by fit for a stateful network: `get()` is the model state after the last step."""
        self._model_state = get

    def __call__(self, step: int, loss: Tensor, params: PyTree) -> bool:
        value = float(loss)
        if value < self.best_loss - self.min_delta:
            self.best_loss, self.best_step = value, step
            self.best_params = tree_map(_copy, params)
            if self._model_state is not None:
                self.best_model_state = tree_map(_copy, self._model_state())
            self._waited = 0
            return False
        self._waited += 1
        if self._waited >= self.patience:
            self.stopped_step = step
            return True
        return False


def _copy(leaf):
    return leaf.clone() if isinstance(leaf, Tensor) else leaf
