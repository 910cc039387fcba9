"""fit and fit_ensemble: train one network, or K at once with torch.func.vmap, purely.

The work of one step is one pure function, `make_step`'s (`_step.py`): gradient, optimizer update, and a finite
flag, all on the device, over the user's params and state trees (the optimizer contract holds
inside fit as in a hand-written loop). The loop around it (`_loop.py`) keeps the losses on the
device and syncs with the host only every CHECK_EVERY steps and where the caller asked for output;
the batches come from `data.py`, as a pure function of (seed, step), which is what makes a resumed
run bitwise equal to an uninterrupted one. The arguments are checked and parsed once, into the
FitArgs of `_fit_args.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
from torch import Tensor

from . import _data_checks, _fit_args, _loaders, _model_state, _provenance
from ._fit_args import COMPILE_MODES, DEFAULT_COMPILE_MODES, DEFAULT_STEPS
from ._loop import CHECK_EVERY, run
from ._pytree import PyTree, tree_index, tree_stack
from ._step import (
    compiled_step,
    compiled_vmapped_step,
    make_step,
    timing_first_call,
    vmapped_eval,
    vmapped_step,
)
from .data import batches
from .losses import sse
from .metrics import scoring
from .networks import Network
from .optim.base import GradientTransformation

__all__ = [
    "CHECK_EVERY",
    "COMPILE_MODES",
    "DEFAULT_COMPILE_MODES",
    "DEFAULT_STEPS",
    "FitResult",
    "compiled_step",
    "fit",
    "fit_ensemble",
    "make_step",
]

Model = Network | Callable[[PyTree, Tensor], Tensor]
Loss = Callable[[Tensor, Tensor], Tensor]


@attrs.frozen
class FitResult:
    """What fit and fit_ensemble return; for an ensemble of K models each per-model value has a
    trailing axis of K and params and opt_state a leading one.

    Attributes:
        params: the trained params (new tensors; the caller's are untouched).
        opt_state: the optimizer state after the last step; pass it back to go on.
        losses: (n,) the training loss of each step this call ran, before that step's update (as
            the PyTorch tutorial prints it); on x's device. (n, K) for an ensemble.
        steps: the steps done since the start of training, this call's included: pass it back as
            start_step (with params and opt_state) to resume with the same batches.
        val_losses: (m,) the loss on val at each evaluation, or None without val; (m, K) for K
            models.
        val_steps: the step count at each evaluation (every eval_every steps, and the last step).
        wall_time: seconds the training loop took (the input checks before it excluded).
        compile_time: with fit(compile=...), the seconds of the compiled step's first call, which
            include compiling it unless an earlier fit already did; part of wall_time. Else 0.
        stop_reason: "done" (ran all steps), "callback" (a callback stopped it) or "nonfinite"
            (on_nonfinite="stop" met a non-finite loss, gradient or updated param).
        nonfinite_step: the first step whose loss, gradients or updated params were not finite,
            or None.
        model_state: a stateful network's state after the last step (e.g. batch-norm running
            statistics; stacked for an ensemble); pass it back as model_state to go on. None
            for a network without state.
        val_metrics: with fit(metrics=...), {name: (m,) values}, one per evaluation (at
            val_steps, as val_losses; (m, K) for K models); else None.
    """

    params: PyTree
    opt_state: PyTree
    losses: Tensor
    steps: int
    val_losses: Tensor | None = None
    val_steps: tuple[int, ...] = ()
    wall_time: float = 0.0
    compile_time: float = 0.0
    stop_reason: str = "done"
    nonfinite_step: int | None = None
    model_state: PyTree = None
    val_metrics: dict[str, Tensor] | None = None


def fit(
    params: PyTree,
    x: Tensor,
    y: Tensor,
    opt: GradientTransformation,
    *,
    model: Model | None = None,
    loss: str | Loss = sse,
    steps: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    shuffle: bool = True,
    seed: int = 0,
    opt_state: PyTree | None = None,
    start_step: int = 0,
    val: tuple[Tensor, Tensor] | None = None,
    callbacks: Sequence[Callable] = (),
    log_every: int = 0,
    eval_every: int | None = None,
    on_nonfinite: str = "raise",
    compile: bool | str = False,
    model_state: PyTree | None = None,
    metrics: dict | None = None,
    progress: bool = False,
    distributed: bool | Any = False,
) -> FitResult:
    """Train `params` on `loss(model(params, xb), yb)` with `opt`, full batch or in minibatches.

    Pure: nothing the caller passed is mutated, and the same inputs give bitwise the same result
    on CPU. Every input is checked before any work (see `_fit_args.py`): among others, the model
    and the loss run once on meta tensors (shapes only) of the shapes a step gives them (a batch
    of batch_size rows; all of val), so a mismatch of x, params, y or val with the model or the
    loss is a ValueError naming the call that failed, before the first step, for a plain
    callable model as for a Network. A model or loss that cannot run on meta tensors (.item(),
    an op without a meta kernel) skips that check; what it returns is then checked at the
    first step, before any update.

    Args:
        params: a pytree of finite floating tensors with x's dtype and device, as made by
            `model.init`.
        x: (N, ...) real floating inputs; y: (N, ...) targets. No NaN or inf.
            Or x a loader and y None: a torch DataLoader, or any re-iterable of (xb, yb) batches
            (not an iterator), one step per batch; an epoch is one pass, len(x) batches; each
            batch is checked where it is read (a bad one is an error naming its index) and moved
            to params' device, non_blocking from pinned memory, one batch ahead. batch_size must
            be None and shuffle is unused: the loader orders. Before epoch e fit calls
            set_epoch(e) on the loader's sampler (DistributedSampler's), batch sampler or the
            loader, where one has it. Resume (start_step=s) goes on in epoch s // len(x),
            skipping its first s % len(x) batches, which are read but not trained on (their
            loading is the cost); it is bitwise where the loader's order is a function of a
            seeded generator and the epoch (e.g. DistributedSampler(ds, 1, 0, seed=...)), not
            with DataLoader(shuffle=True), whose generator a restarted process has not advanced.
            See `_loaders.py`.
        opt: a GradientTransformation, e.g. `optim.adam(1e-4)`. Its `init` runs once, on
            `params`, and its `update(grads, state, params)` sees trees of params' structure,
            as in a hand-written loop. An opt that is a GradientTransformationExtraArgs is also
            given, by keyword, `value` (the 0-d loss at params, before the update, on this
            step's batch) and `value_fn` (`value_fn(params) -> 0-d loss` on the same batch);
            other opts never see them. The same holds under fit_ensemble and compile.
        model: a Network, or any `apply(params, x) -> pred` (pred a tensor). None (the
            default) trains the network whose init (or an earlier fit) returned params, found
            without guessing (see `_provenance.py`); a TypeError asks for model= when params
            were made or changed by other code.
        loss: `loss(pred, y) -> 0-d floating tensor` (an integer loss would have no gradient),
            or a loss's name (see `losses.LOSSES`), e.g. "cross_entropy".
        steps: updates to run in this call, >= 1. Give steps or epochs, not both; with neither,
            fit runs DEFAULT_STEPS (500) steps, as the PyTorch tutorial does.
        epochs: passes over the data to run in this call: epochs * ceil(N / batch_size) steps.
        batch_size: examples per step, 1..N; None for the whole data at every step. Batches are
            as torch's DataLoader(drop_last=False) makes them (the last one short); see `data.py`.
        shuffle: a new order every epoch, `data.epoch_order(N, seed, epoch)`.
        seed: the seed of the data order.
        opt_state: a state from an earlier fit or `opt.init(params)` (of params' tree
            structure); a fresh one when None. Given one, fit checks it against opt.init run on
            meta tensors of params' shapes (no data), the one other call of init.
        start_step: the steps already done (an earlier result's `steps`), < 2**63: the data
            order and the step counts go on from there, so fit(r.params, ...,
            opt_state=r.opt_state, start_step=r.steps) continues r bitwise, at a cost that does
            not grow with start_step.
        val: (x_val, y_val) to evaluate the loss on every eval_every steps and after the last;
            or a loader of (xb, yb) batches, read once at the start and concatenated on the
            device (the same val loss as those tensors).
        callbacks: `callback(step, loss, params) -> bool` called at each evaluation; True stops
            training. A callback's optional on_fit_start() runs before the first step and
            on_fit_end(result) may replace the result (see `callbacks.py`, e.g. EarlyStopping
            with restore_best=True).
        log_every: print a progress line to stderr every log_every steps, naming the last step
            run and its loss; 0 for none.
        eval_every: steps between evaluations; None for once per epoch (every step full batch).
        on_nonfinite: when a loss, gradient or updated param is NaN or inf: "raise" a
            FloatingPointError naming the step, "stop" and return the (finite) params from before
            that step, or "ignore" it. Steps are numbered from 0, in errors and progress lines
            alike (see `_loop.py`).
        compile: True to run the whole step compiled by torch.compile, in the mode that
            DEFAULT_COMPILE_MODES gives for x's device (CUDA graphs on cuda);
            or one of COMPILE_MODES. The compiled step is reused by later fits with the same
            model, loss and opt objects; the result's compile_time holds its first call.
        model_state: a stateful network's state to start from; None for `model.init_state()`.
        metrics: {name: metric} to evaluate on val (required then) at each evaluation, in eval
            mode, beside the loss: a metric is `metric(pred, y) -> 0-d tensor` or its name in
            `metrics.METRICS`, e.g. {"accuracy": "accuracy"}. In FitResult.val_metrics and the
            progress line.
        progress: True for a live bar (tqdm, an optional extra) with steps/s, ETA, the loss, val
            and metrics, updated where the loop syncs anyway (see `_progress.py`); it replaces
            the log_every lines.
        distributed: True (the default process group) or a ProcessGroup to train data parallel,
            run on every rank (torchrun): params and opt_state are broadcast from rank 0; with
            tensors each rank takes rows r, r + P, ... of every global batch, with a loader its
            own batches (its DistributedSampler's share); loss and gradients are all-reduced in
            buckets between gradient and update, weighted for a mean loss, so P processes follow
            one process's trajectory to rounding; losses are the global loss, and every decision
            is the same on every rank. The loss must say whether it sums or averages
            (`distributed.loss_reduction`). Not with compile, a stateful model or an opt taking
            value_fn. See `_fit_distributed.py`.
    Returns:
        A FitResult: params, opt_state, the (n,) losses of this call, steps, validation history,
        wall time, compile time, why it stopped, and the first non-finite step.
    """
    # fit's arguments as given: the first statement, so locals() holds exactly them.
    args = _fit_args.parse_fit(**locals())
    state = opt.init(params) if args.opt_state is None else args.opt_state
    evaluate = None
    if args.val is not None:
        val_x, val_y = args.val
        score = scoring(args.loss, args.metrics)
        evaluate = lambda p: score(args.apply(p, val_x), val_y)
    x, data = _loaders.source(x, y, args)  # x: a loader's first batch, for its device
    reduce = None
    if args.distributed is not None:  # data parallel: see _fit_distributed.py
        params, state, data, reduce = args.distributed.start(params, state, data, not args.loader)
    first_call = []  # the seconds of the compiled step's first call, compilation included
    if args.compile:
        step = compiled_step(args.apply, args.loss, opt, args.compile)
        step = timing_first_call(step, first_call)
    else:
        step = make_step(args.apply, args.loss, opt, reduce)
    if args.stateful:  # the model state and keys ride with opt_state (see _model_state.py)
        state, step, evaluate = _stateful_parts(args, opt, state, x, first_call)
    for hook in args.callbacks:
        getattr(hook, "on_fit_start", lambda: None)()
    fields = run(step, evaluate, params, state, data, args)
    fields = _model_state.split(fields) if args.stateful else fields
    result = FitResult(**fields, compile_time=sum(first_call))
    for hook in args.callbacks:
        result = getattr(hook, "on_fit_end", lambda r: r)(result)
    if args.network is not None:  # so fit(result.params, ...) trains the same network
        _provenance.record(result.params, args.network)
    return result


def fit_ensemble(
    params: PyTree | Sequence[PyTree],
    x: Tensor,
    y: Tensor,
    opt: GradientTransformation | Callable[[Tensor], GradientTransformation],
    *,
    model: Model | None = None,
    loss: str | Loss = sse,
    lrs: Sequence[float] | Tensor | None = None,
    steps: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    shuffle: bool = True,
    seed: int | Sequence[int] = 0,
    opt_state: PyTree | None = None,
    start_step: int = 0,
    val: tuple[Tensor, Tensor] | None = None,
    log_every: int = 0,
    eval_every: int | None = None,
    on_nonfinite: str = "raise",
    compile: bool | str = False,
    model_state: PyTree | None = None,
    metrics: dict | None = None,
    progress: bool = False,
) -> FitResult:
    """Train K models at once with torch.func.vmap: K fits in lockstep, in one loop.

    Model k ends where `fit(params[k], x, y, opt_k, seed=seed[k], ...)` would, to float
    rounding (batched matrix products may round differently from single ones). The arguments
    are fit's, with these differences:

    Args:
        params: a list of K params trees, or one tree whose leaves have a leading axis of K (as
            this function returns them); model k's params are `tree_index(result.params, k)`.
        opt: a GradientTransformation shared by all models; or, with lrs, a function that makes
            one from a learning rate, e.g. `lambda lr: optim.adam(lr)`. It is called inside vmap
            with a 0-d tensor lr, so it must not branch on lr's value (a ValueError before any
            work says so when it does).
        lrs: K learning rates, one per model, or None.
        seed: an int (every model sees the same batches) or K ints (model k's data order is
            fit's with seed[k]); it matters only with shuffled minibatches.
        opt_state: a stacked state from an earlier fit_ensemble, or None for a fresh one.
        log_every: as fit's; the line shows the mean loss over the models.
        on_nonfinite: as fit's, for the first model and step with a non-finite loss, gradient
            or updated param;
            "stop" stops every model there. With "ignore", a diverging model does not disturb
            the others.
        compile: as fit's, for the vmapped step, but True means torch.compile's "default" mode;
            the compiled step is cached and reused as fit's is (the lrs are an input to it).
        model_state: as fit's, stacked (a leading axis of K, as this function returns it);
            None for K copies of `model.init_state()`. Model k's key is
            `fold_in(key(seed), k)` for an int seed, `key(seed[k])` for K seeds (as fit with
            seed=seed[k]), folded with the step as in fit.
        model: as fit's; without it, the network that made every one of K params trees (from
            its init), or the stacked params (from an earlier fit_ensemble).
        There are no callbacks: a callback watches one model's loss.
    Returns:
        A FitResult with stacked params and opt_state, (n, K) losses and (m, K) val_losses.
    """
    # fit_ensemble's arguments as given: the first statement, so locals() holds exactly them.
    args, stacked, k = _fit_args.parse_ensemble(**locals())
    lrs = args.lrs
    make_opt = (lambda i: opt) if lrs is None else (lambda i: opt(lrs[i]))
    init = lambda p: tree_stack([make_opt(i).init(tree_index(p, i)) for i in range(k)])
    if args.opt_state is not None:
        expected = _data_checks.state_shapes(init, stacked)
        _data_checks.check_opt_state(args.opt_state, expected, x.device)
    state = init(stacked) if args.opt_state is None else args.opt_state
    per_model_data = isinstance(args.seed, tuple) and args.shuffle and args.batch_size is not None
    key = (args.apply, args.loss, opt, lrs is not None, per_model_data)
    first_call = []
    if args.compile:
        vmapped = timing_first_call(compiled_vmapped_step(*key, args.compile), first_call)
    else:
        vmapped = vmapped_step(*key)
    step = lambda p, s, xb, yb: vmapped(p, s, xb, yb, lrs)
    score = scoring(args.loss, args.metrics)
    evaluate = None if args.val is None else vmapped_eval(args.apply, score, args.val)
    if args.stateful:  # the model state and keys ride with opt_state (see _model_state.py)
        state, step, evaluate = _stateful_parts(args, opt, state, x, first_call, key, k)
    seed = args.seed
    data_seed = list(seed) if per_model_data else seed if isinstance(seed, int) else seed[0]
    data = batches(x, y, args.batch_size, args.shuffle, data_seed, args.start_step)
    fields = run(step, evaluate, stacked, state, data, args)
    fields = _model_state.split(fields) if args.stateful else fields
    if args.network is not None:  # so fit_ensemble(result.params, ...) trains the same network
        _provenance.record(fields["params"], args.network, _provenance.STACKED)
    return FitResult(**fields, compile_time=sum(first_call))


def _stateful_parts(args, opt, state, x, first_call, vmap_key=None, k=None):
    """The carried state, step and evaluate of a stateful network (see _model_state.py)."""
    ms = _model_state
    carried = ms.carry(
        state, args.model_state, ms.base_keys(args.seed, x.device, k), args.start_step
    )
    if k is None:
        step = (
            timing_first_call(
                ms.compiled_stateful_step(args.apply, args.loss, opt, args.compile), first_call
            )
            if args.compile
            else ms.make_stateful_step(args.apply, args.loss, opt)
        )
    else:
        vmapped = (
            timing_first_call(
                ms.compiled_vmapped_stateful_step(*vmap_key, args.compile), first_call
            )
            if args.compile
            else ms.vmapped_stateful_step(*vmap_key)
        )
        step = lambda p, s, xb, yb: vmapped(p, s, xb, yb, args.lrs)
    step, latest = ms.tracking(step, carried)
    ms.watch(args.callbacks, latest)
    evaluate = None
    if args.val is not None:
        score = scoring(args.loss, args.metrics)
        evaluate = ms.evaluator(args.apply, score, args.val, latest, ensemble=k is not None)
    return carried, step, evaluate
