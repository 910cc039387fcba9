"""fit's and fit_ensemble's arguments: checked once, before any work, and parsed into FitArgs.

The checks run in the order a reader would fix them: data, params, opt, then the counts and
options, val, opt_state, and last the model and loss run once on meta tensors. What they accept
is resolved once (steps from epochs, the evaluation period, the compile mode), so the loop reads
one frozen object and restates nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import torch
from torch import Tensor

from . import (
    _checks,
    _data_checks,
    _ensemble_checks,
    _fit_distributed,
    _loaders,
    _model_state,
    _progress,
    _provenance,
)
from ._pytree import PyTree, tree_index
from .data import steps_per_epoch
from .losses import get_loss
from .metrics import check_metrics
from .networks import Network, eval_view

# The PyTorch tutorial's two-layer network trains 500 full-batch steps; fit without steps or epochs does the same.
DEFAULT_STEPS = 500
ON_NONFINITE = ("raise", "stop", "ignore")
# compile=True's mode, by device type. On CPU, max-autotune-no-cudagraphs was the fastest in steady
# state (scripts/bench.py); on CUDA a step is launch-bound, and CUDA graphs replay it whole.
DEFAULT_COMPILE_MODES = {"cpu": "max-autotune-no-cudagraphs", "cuda": "reduce-overhead"}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
INT64_MAX = 2**63 - 1


@attrs.frozen(kw_only=True)
class FitArgs:
    """fit's (or fit_ensemble's) arguments, checked, with what follows from them resolved.

    Attributes:
        apply: the model's `apply(params, x)`.
        loss: `loss(pred, y)`.
        steps: the updates this call runs (from steps, epochs, or DEFAULT_STEPS).
        batch_size, shuffle, start_step, val, log_every, on_nonfinite, opt_state: as given.
        seed: as given, a list of seeds as a tuple.
        callbacks: as a tuple; () for an ensemble.
        eval_every: steps between evaluations (once per epoch unless given), or None when there
            is nothing to evaluate (no val and no callbacks).
        compile: the torch.compile mode, or None for the eager step.
        lrs: an ensemble's (K,) float64 learning rates on x's device, or None.
        stateful: whether the model has state or randomness (a Network with init_state); then
            apply is `apply(params, x, *, state, train, key) -> (y, new_state)`.
        model_state: the model state to start from (given or fresh), or None.
        loader: with a loader as x, (its first xb on the params' device, the checked batches of
            steps start_step, ...) (see `_loaders.py`); None for tensors.
        distributed: fit(distributed=...)'s _fit_distributed.DataParallel, or None.
    """

    apply: Callable
    loss: Callable
    steps: int
    batch_size: int | None
    shuffle: bool
    seed: int | tuple[int, ...]
    start_step: int
    val: tuple[Tensor, Tensor] | None
    callbacks: tuple[Callable, ...]
    log_every: int
    eval_every: int | None
    on_nonfinite: str
    compile: str | None
    opt_state: PyTree | None
    lrs: Tensor | None = None
    stateful: bool = False
    model_state: PyTree | None = None
    network: Network | None = None  # the model when a Network: fit's result is noted as its
    metrics: tuple = ()  # (name, metric) pairs, evaluated on val beside the loss
    progress: bool = False  # a live tqdm bar instead of the log lines
    loader: tuple | None = None
    distributed: Any = None

    @property
    def end(self) -> int:
        """The step count at which this call stops (unless something stops it earlier)."""
        return self.start_step + self.steps


def parse_fit(params: PyTree, x: Tensor, y: Tensor, opt: Any, **options: Any) -> FitArgs:
    """fit's checks, all of them (see fit); `options` are fit's keyword arguments."""
    if _loaders.is_loader(x, y):  # a DataLoader or re-iterable of (xb, yb) batches
        return _loaders.parse(parse_fit, params, x, y, opt, **options)
    if isinstance(x, Tensor):  # a val loader, read whole (see _loaders.val_tensors)
        options["val"] = _loaders.val_tensors(options["val"], x.device)
    distributed = options.pop("distributed")
    options["model"] = _model(options["model"], params, "fit")
    model, model_state = _stateless_for_checks(options)
    _checks.not_transformed("fit")
    _data_checks.check_data(x, y)
    _data_checks.check_params(params, x, options["model"])
    _data_checks.check_finite_params(params)
    _data_checks.check_opt(opt)
    args = _options(x, **options)
    _data_checks.check_val(args.val, params, x, options["model"])
    if args.opt_state is not None:
        expected = _data_checks.state_shapes(opt.init, params)
        _data_checks.check_opt_state(args.opt_state, expected, x.device)
    _check_outputs(options["model"], args, params, x, y)
    args = attrs.evolve(args, network=model if isinstance(model, Network) else None)
    args = _with_state(args, model, _model_state.resolve(model, model_state, x))
    parallel = _fit_distributed.resolve(
        distributed, loss=args.loss, opt=opt, compile=args.compile, stateful=args.stateful
    )
    return attrs.evolve(args, distributed=parallel)


def parse_ensemble(
    params: PyTree, x: Tensor, y: Tensor, opt: Any, **options: Any
) -> tuple[FitArgs, PyTree, int]:
    """fit_ensemble's checks but opt_state's, which needs the optimizers (see fit_ensemble).

    Returns:
        (the arguments, the params as one stacked tree (the caller's when it was stacked
        already, else a new one), K).
    """
    options["model"] = _model(options["model"], params, "fit_ensemble")
    given_model, model_state = _stateless_for_checks(options)
    _checks.not_transformed("fit_ensemble")
    _data_checks.check_data(x, y)
    model = options["model"]
    stacked, k = _ensemble_checks.as_stacked(params, model, x)
    first = tree_index(stacked, 0)
    try:
        _data_checks.check_params(first, x, model)
    except (TypeError, ValueError) as e:  # the stacked tree's shapes are K models of these
        raise type(e)(f"model 0 of the ensemble: {e}") from None
    _data_checks.check_finite_stacked(stacked, k)
    lrs = _ensemble_checks.check_lrs(opt, options.pop("lrs"), k, x.device)
    args = _options(x, k=k, **options)
    _data_checks.check_val(args.val, first, x, model)
    _check_outputs(model, args, first, x, y)
    model_state = _model_state.resolve(given_model, model_state, x, k)
    args = _with_state(args, given_model, model_state)
    network = given_model if isinstance(given_model, Network) else None
    return attrs.evolve(args, lrs=lrs, network=network), stacked, k


def _model(model: Any, params: PyTree, caller: str) -> Any:
    """The model given, or (model=None) the network that made params (see _provenance.py)."""
    if isinstance(model, torch.nn.Module):
        raise TypeError(
            f"model is a torch.nn.Module ({type(model).__name__}); {caller} takes a Network or a "
            "function apply(params, x): wrap the module first, net, params = "
            f"fnn.from_module(module), then {caller}(params, x, y, opt, model=net)."
        )
    if model is not None:
        return model
    if caller == "fit":
        return _provenance.network_of(params)
    try:  # a stacked tree from an earlier fit_ensemble (itself possibly a list, as mlp params)
        return _provenance.network_of(params, _provenance.STACKED)
    except TypeError:
        if not isinstance(params, (list, tuple)):
            raise
    return _provenance.networks_of(list(params))  # K trees, each from the network's init


def _stateless_for_checks(options: dict) -> tuple[Any, PyTree]:
    """Pops model_state from options and puts an eval-mode view of a stateful model in their
    "model", for the shape checks (which call apply(params, x)); returns (model, model_state)."""
    model, model_state = options["model"], options.pop("model_state")
    if isinstance(model, Network):
        options["model"] = eval_view(model)
    return model, model_state


def _with_state(args: FitArgs, model: Any, model_state: PyTree) -> FitArgs:
    if not (isinstance(model, Network) and model.stateful):
        return args
    return attrs.evolve(args, apply=model.apply, stateful=True, model_state=model_state)


def _options(
    x: Tensor,
    *,
    model: Any,
    loss: Any,
    steps: Any,
    epochs: Any,
    batch_size: Any,
    shuffle: Any,
    seed: Any,
    opt_state: Any,
    start_step: Any,
    val: Any,
    log_every: Any,
    eval_every: Any,
    on_nonfinite: Any,
    compile: Any,
    callbacks: Any = (),
    k: int | None = None,
    metrics: Any = None,
    progress: Any = False,
) -> FitArgs:
    """The counts and options, checked and resolved; k: the ensemble's size, None for fit."""
    n = x.shape[0]
    total = _length(n, steps, epochs, batch_size, start_step)
    _checks.integer("log_every", log_every, 0)
    _checks.integer("eval_every", eval_every, 1, allow_none=True)
    _seeds(seed, k)
    loss = get_loss(loss)  # a name ("cross_entropy") or a callable
    _checks.flags(shuffle=shuffle)
    if not isinstance(callbacks, (list, tuple)) or not all(callable(c) for c in callbacks):
        raise TypeError(
            "callbacks must be a list or tuple of callables callback(step, loss, params), "
            f"got {callbacks!r}."
        )
    _checks.one_of("on_nonfinite", on_nonfinite, ON_NONFINITE)
    metrics = () if metrics is None else check_metrics(metrics)
    if metrics and val is None:
        raise ValueError(
            "metrics are evaluated on val, but val is None; pass val=(x_val, y_val) too."
        )
    _checks.flags(progress=progress)
    if progress:
        _progress.check_available()
    _checks.one_of("compile", compile, (True, False, *COMPILE_MODES))
    if compile is True:
        # fit_ensemble: max-autotune's matmul templates fail an inductor assertion on vmapped
        # steps (torch 2.13).
        compile = DEFAULT_COMPILE_MODES.get(x.device.type, "default") if k is None else "default"
    evaluates = val is not None or bool(callbacks)
    return FitArgs(
        apply=model.apply if isinstance(model, Network) else model,
        loss=loss,
        steps=total,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=tuple(seed) if isinstance(seed, (list, tuple)) else seed,
        start_step=start_step,
        val=val,
        callbacks=tuple(callbacks),
        log_every=log_every,
        eval_every=(eval_every or steps_per_epoch(n, batch_size)) if evaluates else None,
        on_nonfinite=on_nonfinite,
        compile=compile or None,
        opt_state=opt_state,
        metrics=metrics,
        progress=progress,
    )


def _length(n: int, steps: Any, epochs: Any, batch_size: Any, start_step: Any) -> int:
    """The steps this call runs, after checking the counts that say how long to train."""
    if steps is not None and epochs is not None:
        raise ValueError(
            f"give steps or epochs, not both (got steps={steps!r}, epochs={epochs!r})."
        )
    _checks.integer("steps", steps, 1, allow_none=True)
    _checks.integer("epochs", epochs, 1, allow_none=True)
    _checks.integer("batch_size", batch_size, 1, allow_none=True)
    if batch_size is not None and batch_size > n:
        raise ValueError(
            f"batch_size is {batch_size} but the data has only {n} examples; use a batch_size "
            f"<= {n}, or batch_size=None for full batch."
        )
    _checks.integer("start_step", start_step, 0)
    total = steps if steps is not None else DEFAULT_STEPS
    if epochs is not None:
        total = epochs * steps_per_epoch(n, batch_size)
    # Step counts live in int64 tensors (optimizer states): the last step must fit.
    if start_step + total > INT64_MAX:
        raise ValueError(
            f"start_step + the steps of this call must be <= 2**63 - 1 (int64 step counts), got "
            f"{start_step} + {total}; start from a smaller step count."
        )
    return total


def _seeds(seed: Any, k: int | None) -> None:
    """An int, or (for an ensemble of k) one int per model."""
    if k is None or not isinstance(seed, (list, tuple)):
        return _checks.seed("seed", seed)
    if len(seed) != k:
        raise ValueError(
            f"seed must be an int or a list of {k} ints (one per model), got {seed!r}."
        )
    for i, s in enumerate(seed):
        _checks.seed(f"seed[{i}]", s)


def _check_outputs(model: Any, args: FitArgs, params: PyTree, x: Tensor, y: Tensor) -> None:
    _data_checks.check_outputs(model, args.loss, params, x, y, rows=args.batch_size)
    if args.val is not None:
        val_x, val_y = args.val
        _data_checks.check_outputs(model, args.loss, params, val_x, val_y, _data_checks.VAL_NAMES)
        _data_checks.check_metrics(model, args.metrics, params, val_x, val_y)
