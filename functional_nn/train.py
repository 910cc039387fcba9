"""fit and fit_ensemble: train one network, or K at once with torch.func.vmap, purely.

The work of one step is one pure function, `make_step`'s: gradient, optimizer update, and a finite
flag, all on the device. The loop around it (`_loop.py`) keeps the losses on the device and syncs
with the host only every CHECK_EVERY steps and where the caller asked for output; the batches come
from `data.py`, as a pure function of (seed, step), which is what makes a resumed run bitwise equal
to an uninterrupted one.
"""

from __future__ import annotations

import functools
import time
import types
from collections.abc import Callable, Sequence

import attrs
import torch
from torch import Tensor

from . import _checks
from ._loop import CHECK_EVERY, FitResult, Plan, run
from ._pytree import (
    PyTree,
    tree_flatten,
    tree_index,
    tree_leaves,
    tree_map,
    tree_stack,
    tree_structure,
    tree_unflatten,
)
from .data import batches, steps_per_epoch
from .losses import sse
from .networks import Network
from .optim.base import GradientTransformation, apply_updates

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

# The seeds train 500 full-batch steps; fit without steps or epochs does the same.
DEFAULT_STEPS = 500

Model = Network | Callable[[PyTree, Tensor], Tensor]
Loss = Callable[[Tensor, Tensor], Tensor]


def make_step(apply: Callable, loss: Loss, opt: GradientTransformation, spec=None) -> Callable:
    """One training step as a pure function, for fit's loop (and for torch.compile or vmap).

    Args:
        apply, loss, opt: the model's apply, the loss and the optimizer.
        spec: None for a step over params trees; or the params' tree structure, for a step over
            the flat list of their leaves (what fit runs: no tree is flattened or rebuilt per step
            but the one `apply` reads). The optimizer state must then be made from that list.
    Returns:
        `step(params, state, xb, yb) -> (params, state, loss, finite)`: the params and state after
        one update on the batch, the loss before it (0-d), and a 0-d bool that is True when the
        loss, every gradient and every updated param are finite (an update can overflow where
        the gradients did not, e.g. adam's eps vanishes in float16). Nothing syncs with the host.
        It raises TypeError or ValueError, as fit's checks do, when the model returns no tensor
        or the loss no 0-d floating tensor.
    """
    model = apply if spec is None else (lambda leaves, xb: apply(tree_unflatten(leaves, spec), xb))

    def checked_loss(p, xb, yb):
        # fit checks these on meta tensors before any work, unless the model or loss cannot run
        # there (.item()); then here, at the first step, before any update: metadata only, free.
        pred = model(p, xb)
        _checks.check_pred(pred, "model(params, x)")
        value = loss(pred, yb)
        _checks.check_loss_value(value, "loss(pred, y)")
        return value

    value_and_grad = torch.func.grad_and_value(checked_loss)

    def step(params, state, xb, yb):
        grads, value = value_and_grad(params, xb, yb)
        updates, state = opt.update(grads, state, params)
        params = apply_updates(params, updates)
        return params, state, value, _finite([value, *tree_leaves(grads), *tree_leaves(params)])

    return step


def _finite(tensors: list[Tensor]) -> Tensor:
    """True when every tensor is finite: NaN and inf survive a sum, so one sum per tensor (a read
    of it) tells, where isfinite would write a mask of it. The sums run in float32 at least, so
    that finite float16 params do not overflow theirs; a sum that overflows float32 counts as
    non-finite: that is divergence in all but name."""
    dtype = functools.reduce(torch.promote_types, [t.dtype for t in tensors], torch.float32)
    return torch.isfinite(torch.stack([t.sum(dtype=dtype) for t in tensors])).all()


# compile=True's mode, by device type. On CPU, max-autotune-no-cudagraphs was the fastest in steady
# state (scripts/bench.py); on CUDA a step is launch-bound, and CUDA graphs replay it whole.
DEFAULT_COMPILE_MODES = {"cpu": "max-autotune-no-cudagraphs", "cuda": "reduce-overhead"}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@functools.lru_cache(maxsize=32)
def compiled_step(apply: Callable, loss: Loss, opt: GradientTransformation, spec, mode: str):
    """make_step(apply, loss, opt, spec) compiled whole (gradient and update) by torch.compile.

    Cached on its arguments, so fits with the same model, loss and optimizer objects share one
    compiled step (torch.compile itself recompiles only for new shapes, dtypes or devices). Modes
    with CUDA graphs replay into memory the next replay overwrites, so there every output is
    cloned before the loop keeps it.
    """
    step = torch.compile(_own_code(make_step(apply, loss, opt, spec)), mode=mode, fullgraph=True)
    if mode not in ("reduce-overhead", "max-autotune"):
        return step

    def graphed(params, state, xb, yb):
        torch.compiler.cudagraph_mark_step_begin()
        return tree_map(torch.clone, step(params, state, xb, yb))

    return graphed


def fit(
    params: PyTree,
    x: Tensor,
    y: Tensor,
    opt: GradientTransformation,
    *,
    model: Model,
    loss: Loss = sse,
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
) -> FitResult:
    """Train `params` on `loss(model(params, xb), yb)` with `opt`, full batch or in minibatches.

    Pure: nothing the caller passed is mutated, and the same inputs give bitwise the same result
    on CPU. Every input is checked before any work (see `_checks.py`): among others, the model
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
        opt: a GradientTransformation, e.g. `optim.adam(1e-4)`.
        model: a Network, or any `apply(params, x) -> pred` (pred a tensor).
        loss: `loss(pred, y) -> 0-d floating tensor` (an integer loss would have no gradient).
        steps: updates to run in this call, >= 1. Give steps or epochs, not both; with neither,
            fit runs DEFAULT_STEPS (500) steps, as the seeds do.
        epochs: passes over the data to run in this call: epochs * ceil(N / batch_size) steps.
        batch_size: examples per step, 1..N; None for the whole data at every step. Batches are
            as torch's DataLoader(drop_last=False) makes them (the last one short); see `data.py`.
        shuffle: a new order every epoch, `data.epoch_order(N, seed, epoch)`.
        seed: the seed of the data order.
        opt_state: a state from an earlier fit or `opt.init(params)`; a fresh one when None.
        start_step: the steps already done (an earlier result's `steps`), < 2**63: the data
            order and the step counts go on from there, so fit(r.params, ...,
            opt_state=r.opt_state, start_step=r.steps) continues r bitwise, at a cost that does
            not grow with start_step.
        val: (x_val, y_val) to evaluate the loss on every eval_every steps and after the last.
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
    Returns:
        A FitResult: params, opt_state, the (n,) losses of this call, steps, validation history,
        wall time, compile time, why it stopped, and the first non-finite step.
    """
    _checks.check_fit(
        params,
        x,
        y,
        opt,
        model=model,
        loss=loss,
        steps=steps,
        epochs=epochs,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        opt_state=opt_state,
        start_step=start_step,
        val=val,
        callbacks=callbacks,
        log_every=log_every,
        eval_every=eval_every,
        on_nonfinite=on_nonfinite,
    )
    _checks.check_compile(compile, COMPILE_MODES)
    apply = model.apply if isinstance(model, Network) else model
    # The loop runs over the flat list of leaves; the trees are rebuilt once, at the end.
    leaves, spec = tree_flatten(params)
    # The state's structures, params-shaped and list-shaped, from states built on the meta device.
    state_spec = tree_structure(_checks.state_shapes(opt.init, params))
    state = (
        opt.init(leaves)
        if opt_state is None
        else _respec(opt_state, _checks.state_shapes(opt.init, leaves))
    )
    tree = lambda leaves: tree_unflatten(leaves, spec)
    evaluate = None if val is None else (lambda p: loss(apply(tree(p), val[0]), val[1]))
    hooks = list(callbacks)
    callbacks = [lambda s, value, p, cb=cb: cb(s, value, tree(p)) for cb in callbacks]
    plan = _plan(
        x.shape[0],
        steps,
        epochs,
        batch_size,
        start_step,
        val,
        callbacks,
        log_every,
        eval_every,
        on_nonfinite,
    )
    data = batches(x, y, batch_size, shuffle, seed, start_step)
    first_call = []  # the seconds of the compiled step's first call, compilation included
    if compile:
        default = DEFAULT_COMPILE_MODES.get(x.device.type, "default")
        mode = default if compile is True else compile
        step = _timing_first_call(compiled_step(apply, loss, opt, spec, mode), first_call)
    else:
        step = make_step(apply, loss, opt, spec)
    for hook in hooks:
        getattr(hook, "on_fit_start", lambda: None)()
    result = run(step, evaluate, leaves, state, data, plan)
    result = attrs.evolve(
        result,
        params=tree(result.params),
        opt_state=tree_unflatten(tree_leaves(result.opt_state), state_spec),
        compile_time=sum(first_call),
    )
    for hook in hooks:
        result = getattr(hook, "on_fit_end", lambda r: r)(result)
    return result


def _own_code(fn: Callable) -> Callable:
    """`fn` with a code object of its own. torch.compile keeps its compiled variants per code
    object, at most torch._dynamo.config.recompile_limit (8) of them; every step that make_step
    makes shares one code object, so without this the ninth (model, loss, opt) would fail."""
    return types.FunctionType(
        fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )


def _timing_first_call(step: Callable, seconds: list[float]) -> Callable:
    """`step`, appending to `seconds` how long its first call took."""

    def timed(*args):
        if seconds:
            return step(*args)
        start = time.perf_counter()
        out = step(*args)
        seconds.append(time.perf_counter() - start)
        return out

    return timed


def _respec(state: PyTree, like: PyTree) -> PyTree:
    """`state`'s leaves in the structure of `like`: an optimizer state made from params trees,
    rebuilt as the state made from their flat list of leaves (the same leaves, in the same order)."""
    return tree_unflatten(tree_leaves(state), tree_structure(like))


def _plan(
    n, steps, epochs, batch_size, start_step, val, callbacks, log_every, eval_every, on_nonfinite
) -> Plan:
    """How long to run and when to evaluate: once per epoch unless eval_every says otherwise."""
    per_epoch = steps_per_epoch(n, batch_size)
    if steps is None:
        steps = DEFAULT_STEPS if epochs is None else epochs * per_epoch
    evaluates = val is not None or bool(callbacks)
    return Plan(
        start=start_step,
        end=start_step + steps,
        eval_every=(eval_every or per_epoch) if evaluates else None,
        log_every=log_every,
        on_nonfinite=on_nonfinite,
        callbacks=tuple(callbacks),
    )


def fit_ensemble(
    params: PyTree | Sequence[PyTree],
    x: Tensor,
    y: Tensor,
    opt: GradientTransformation | Callable[[Tensor], GradientTransformation],
    *,
    model: Model,
    loss: Loss = sse,
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
        There are no callbacks: a callback watches one model's loss.
    Returns:
        A FitResult with stacked params and opt_state, (n, K) losses and (m, K) val_losses.
    """
    stacked, k, lr_values = _checks.check_ensemble(
        params,
        x,
        y,
        opt,
        model=model,
        loss=loss,
        lrs=lrs,
        steps=steps,
        epochs=epochs,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        start_step=start_step,
        val=val,
        log_every=log_every,
        eval_every=eval_every,
        on_nonfinite=on_nonfinite,
    )
    make_opt = (lambda i: opt) if lr_values is None else (lambda i: opt(lr_values[i]))
    init = lambda p: tree_stack([make_opt(i).init(tree_index(p, i)) for i in range(k)])
    if opt_state is not None:
        _checks.check_opt_state(opt_state, _checks.state_shapes(init, stacked), x.device)
    state = init(stacked) if opt_state is None else opt_state
    apply = model.apply if isinstance(model, Network) else model
    per_model_data = not isinstance(seed, int) and shuffle and batch_size is not None
    key = (
        apply,
        loss,
        opt,
        _Flat.of(stacked),
        _Flat.of(state),
        lr_values is not None,
        per_model_data,
    )
    first_call = []
    if compile:
        # max-autotune's matmul templates fail an inductor assertion on vmapped steps (torch 2.13).
        mode = "default" if compile is True else compile
        vmapped = _timing_first_call(_compiled_vmapped_step(*key, mode), first_call)
    else:
        vmapped = _vmapped_step(*key)
    step = lambda p, s, xb, yb: vmapped(p, s, xb, yb, lr_values)
    evaluate = None if val is None else _vmapped_eval(apply, loss, stacked, val)
    plan = _plan(
        x.shape[0],
        steps,
        epochs,
        batch_size,
        start_step,
        val,
        (),
        log_every,
        eval_every,
        on_nonfinite,
    )
    data_seed = list(seed) if per_model_data else seed if isinstance(seed, int) else seed[0]
    data = batches(x, y, batch_size, shuffle, data_seed, start_step)
    return attrs.evolve(
        run(step, evaluate, stacked, state, data, plan), compile_time=sum(first_call)
    )


def _vmapped_step(apply, loss, opt, p_flat, s_flat, per_model_lr: bool, per_model_data: bool):
    """make_step over K models: vmapped over params, state, lrs and (per_model_data) batches.

    vmap sees lists of tensors, as it takes and returns nothing else and a state may hold None.
    Returns:
        `step(params, state, xb, yb, lrs) -> (params, state, losses, finite)`.
    """

    def one(p, s, xb, yb, lr):
        step = make_step(apply, loss, opt(lr) if per_model_lr else opt)
        p, s, value, finite = step(p_flat.tree(p), s_flat.tree(s), xb, yb)
        return p_flat.tensors(p), s_flat.tensors(s), value, finite

    data_dim = 0 if per_model_data else None
    batched = torch.func.vmap(one, in_dims=(0, 0, data_dim, data_dim, 0 if per_model_lr else None))

    def step(params, state, xb, yb, lrs):
        p, s, value, finite = batched(p_flat.tensors(params), s_flat.tensors(state), xb, yb, lrs)
        return p_flat.tree(p), s_flat.tree(s), value, finite

    return step


@functools.lru_cache(maxsize=32)
def _compiled_vmapped_step(*key_and_mode):
    """_vmapped_step compiled whole, cached as compiled_step is (the lrs are an input, not part
    of the key)."""
    *key, mode = key_and_mode
    return torch.compile(_own_code(_vmapped_step(*key)), mode=mode, fullgraph=True)


def _vmapped_eval(apply, loss, params, val) -> Callable[[PyTree], Tensor]:
    flat = _Flat.of(params)
    one = lambda p: loss(apply(flat.tree(p), val[0]), val[1])
    return lambda params: torch.func.vmap(one)(flat.tensors(params))


@attrs.frozen
class _Flat:
    """A tree's layout: its structure and its leaves that are not tensors (None), so that a tree
    of that layout goes to its list of tensors and back. Hashable, to key the compiled steps."""

    spec: object
    others: tuple  # (index, leaf) for each leaf that is not a tensor

    @classmethod
    def of(cls, like: PyTree) -> _Flat:
        leaves, spec = tree_flatten(like)
        return cls(
            spec, tuple((i, leaf) for i, leaf in enumerate(leaves) if not isinstance(leaf, Tensor))
        )

    def tensors(self, tree: PyTree) -> list[Tensor]:
        return [leaf for leaf in tree_leaves(tree) if isinstance(leaf, Tensor)]

    def tree(self, tensors: list[Tensor]) -> PyTree:
        leaves = list(tensors)
        for i, leaf in self.others:
            leaves.insert(i, leaf)
        return tree_unflatten(leaves, self.spec)
