"""Input validation for fit and fit_ensemble: every check in one place, run before any work.

Each message names the argument, what was given, what was expected and how to fix it. ValueError for
bad values and shapes, TypeError for wrong types.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import attrs
import torch
from torch import Tensor

from . import losses
from ._pytree import (
    PyTree,
    assert_same_structure,
    describe,
    tree_index,
    tree_leaves,
    tree_map,
    tree_stack,
    tree_structure,
)
from .networks import Network
from .optim.base import GradientTransformation

ON_NONFINITE = ("raise", "stop", "ignore")
VAL_NAMES = ("val[0] (x_val)", "val[1] (y_val)")
INT64_MAX = 2**63 - 1


def check_int(name: str, value: Any, minimum: int, allow_none: bool = False) -> None:
    """Raise unless value is an int >= minimum (or None when allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")


def check_data(x: Any, y: Any, x_name: str = "x", y_name: str = "y") -> None:
    """x real floating, y a tensor, one example per row in both, no NaN or inf (one host sync)."""
    for name, t in ((x_name, x), (y_name, y)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}.")
    if not x.is_floating_point():
        raise TypeError(
            f"{x_name} must be a floating tensor (real, not complex), got dtype {x.dtype}; convert "
            f"it, e.g. {x_name}.to(torch.float32) (split complex data into real and imaginary parts)."
        )
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{x_name} and {y_name} must have the same number of rows (one example per row), got "
            f"{x_name} of shape {tuple(x.shape)} and {y_name} of shape {tuple(y.shape)}."
        )
    if x.shape[0] == 0:
        raise ValueError(f"{x_name} and {y_name} hold no examples (0 rows); pass at least one.")
    if x.device != y.device:
        raise ValueError(
            f"{x_name} is on {x.device} but {y_name} is on {y.device}; move both to one device."
        )
    for name, t in ((x_name, x), (y_name, y)):
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            bad = ~torch.isfinite(t).reshape(t.shape[0], -1)
            row = int(bad.any(1).nonzero()[0])
            raise ValueError(
                f"{name} contains {int(bad.sum())} NaN or inf values (the first in row {row}); "
                "remove or impute them before training."
            )


def check_params(params: PyTree, x: Tensor, model: Any) -> None:
    """params floating tensors with x's dtype and device, and (for a Network) fitting x."""
    if not (isinstance(model, Network) or callable(model)):
        raise TypeError(
            f"model must be a Network or a callable apply(params, x), got {_given(model)}."
        )
    leaves = tree_leaves(params)
    if not leaves or not all(isinstance(t, Tensor) and t.is_floating_point() for t in leaves):
        raise TypeError(
            f"params must be a non-empty pytree of floating tensors, got {describe(params)}; "
            "use the params made by model.init."
        )
    devices = {t.device for t in leaves}
    if devices != {x.device}:
        raise ValueError(
            f"x is on {x.device} but params are on {sorted(map(str, devices))}; move both to "
            "one device, e.g. x.to(device) and model.init(seed, device=device)."
        )
    dtypes = {t.dtype for t in leaves}
    if dtypes != {x.dtype}:
        raise TypeError(
            f"x has dtype {x.dtype} but params have {sorted(map(str, dtypes))}: "
            f"{describe(params)}; give both one dtype, e.g. x.to({sorted(map(str, dtypes))[0]}) or "
            f"model.init(seed, dtype={x.dtype})."
        )
    if isinstance(model, Network):
        model.check(params, x)


def check_finite_params(params: PyTree, name: str = "params") -> None:
    """No NaN or inf in any leaf of params (one host sync); the message names the first bad leaf by
    its path, e.g. params[0]['weight']."""
    leaves = tree_leaves(params)
    finite = torch.stack([torch.isfinite(t).all() for t in leaves]).tolist()
    if all(finite):
        return
    i = finite.index(False)
    count = int((~torch.isfinite(leaves[i])).sum())
    raise ValueError(
        f"{leaf_paths(params, name)[i]} contains {count} NaN or inf values (of {leaves[i].numel()}); "
        "start from finite params, e.g. model.init(seed) or a checkpoint from before the divergence."
    )


def check_finite_stacked(stacked: PyTree, k: int) -> None:
    """check_finite_params for K stacked models: one sync, and one per model only to name the bad one."""
    try:
        check_finite_params(stacked)
    except ValueError:
        for i in range(k):
            check_finite_params(tree_index(stacked, i), f"model {i} of the ensemble: params")


def leaf_paths(tree: PyTree, name: str) -> list[str]:
    """Each leaf's path, in tree_leaves' order, as Python would index it: name[0]['weight'];
    attrs fields and NamedTuple fields as attributes (name.mu)."""
    if isinstance(tree, dict):  # torch's pytrees keep a dict's insertion order (jax sorts keys)
        items = [(f"[{k!r}]", v) for k, v in tree.items()]
    elif isinstance(tree, tuple) and hasattr(tree, "_fields"):
        items = [(f".{f}", getattr(tree, f)) for f in tree._fields]
    elif isinstance(tree, (list, tuple)):
        items = [(f"[{i}]", t) for i, t in enumerate(tree)]
    elif attrs.has(type(tree)):
        items = [(f".{f.name}", getattr(tree, f.name)) for f in attrs.fields(type(tree))]
    else:
        return [name] * len(tree_leaves(tree))
    return [path for key, child in items for path in leaf_paths(child, name + key)]


def check_length(
    n: int,
    steps: Any,
    epochs: Any,
    batch_size: Any,
    start_step: Any,
    log_every: Any,
    eval_every: Any,
) -> None:
    """The counts that say how long to train and how often to report."""
    if steps is not None and epochs is not None:
        raise ValueError(
            f"give steps or epochs, not both (got steps={steps!r}, epochs={epochs!r})."
        )
    check_int("steps", steps, 1, allow_none=True)
    check_int("epochs", epochs, 1, allow_none=True)
    check_int("batch_size", batch_size, 1, allow_none=True)
    if batch_size is not None and batch_size > n:
        raise ValueError(
            f"batch_size is {batch_size} but the data has only {n} examples; use a batch_size "
            f"<= {n}, or batch_size=None for full batch."
        )
    check_int("start_step", start_step, 0)
    # Step counts live in int64 tensors (optimizer states): the last step must fit. With neither
    # steps nor epochs fit runs DEFAULT_STEPS (500).
    per_epoch = 1 if batch_size is None else math.ceil(n / batch_size)
    total = steps if steps is not None else 500 if epochs is None else epochs * per_epoch
    if start_step + total > INT64_MAX:
        raise ValueError(
            f"start_step + the steps of this call must be <= 2**63 - 1 (int64 step counts), got "
            f"{start_step} + {total}; start from a smaller step count."
        )
    check_int("log_every", log_every, 0)
    check_int("eval_every", eval_every, 1, allow_none=True)


def check_options(loss: Any, shuffle: Any, callbacks: Any, on_nonfinite: Any) -> None:
    """The loss, flags and hooks."""
    if not callable(loss):
        raise TypeError(f"loss must be a callable loss(pred, y) -> 0-d tensor, got {loss!r}.")
    if not isinstance(shuffle, bool):
        raise TypeError(f"shuffle must be a bool, got {type(shuffle).__name__}: {shuffle!r}.")
    if not isinstance(callbacks, (list, tuple)) or not all(callable(c) for c in callbacks):
        raise TypeError(
            "callbacks must be a list or tuple of callables callback(step, loss, params), "
            f"got {callbacks!r}."
        )
    if on_nonfinite not in ON_NONFINITE:
        raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {on_nonfinite!r}.")


def check_compile(compile: Any, modes: tuple[str, ...]) -> None:
    if not (isinstance(compile, bool) or compile in modes):
        raise ValueError(
            f"compile must be True, False or one of torch.compile's modes {modes}, got {compile!r}."
        )


def check_opt(opt: Any) -> None:
    if not isinstance(opt, GradientTransformation):
        raise TypeError(
            f"opt must be a GradientTransformation, e.g. optim.adam(1e-3), got {_given(opt)}."
        )


def check_seed(name: str, seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{name} must be an int, got {type(seed).__name__}: {seed!r}.")
    if not 0 <= seed < 2**64:  # what torch.Generator.manual_seed takes
        raise ValueError(f"{name} must be in [0, 2**64), got {seed}.")


def check_seeds(seed: Any, k: int) -> None:
    """An int, or one int per model of an ensemble of k."""
    if not isinstance(seed, (list, tuple)):
        return check_seed("seed", seed)
    if len(seed) != k:
        raise ValueError(
            f"seed must be an int or a list of {k} ints (one per model), got {seed!r}."
        )
    for i, s in enumerate(seed):
        check_seed(f"seed[{i}]", s)


def check_opt_state(opt_state: PyTree, expected: PyTree, device: torch.device) -> None:
    """opt_state has the structure and shapes of `expected` (the state opt.init would make here)."""
    assert_same_structure(opt_state, expected, "opt_state", "opt.init(params)")
    for i, (given, want) in enumerate(zip(tree_leaves(opt_state), tree_leaves(expected))):
        if isinstance(given, Tensor) and isinstance(want, Tensor) and given.dtype != want.dtype:
            raise TypeError(
                f"opt_state leaf {i} has dtype {given.dtype}, but opt.init(params) makes "
                f"{want.dtype} there; build the state from params of this dtype (opt.init(params))."
            )
    wrong = {str(t.device) for t in tree_leaves(opt_state) if isinstance(t, Tensor)} - {str(device)}
    if wrong:
        raise ValueError(
            f"opt_state holds tensors on {sorted(wrong)} but params are on {device}; "
            "move it with a tree_map(lambda t: t.to(device), opt_state)."
        )


def check_outputs(
    model: Any,
    loss: Any,
    params: PyTree,
    x: Tensor,
    y: Tensor,
    names: tuple[str, str] = ("x", "y"),
    rows: int | None = None,
) -> None:
    """model(params, xb) is a tensor and loss(pred, yb) a 0-d floating tensor, found by one run of
    each on meta tensors (shapes and dtypes, no arithmetic) of the shape a training step feeds
    them: xb, yb = x[:rows], y[:rows] (all of x and y when rows is None); then all of y's values
    against the loss (losses.check: class labels in range, one host sync).

    A model or loss that cannot run on meta tensors (an op without a meta kernel, .item(), a
    tensor made on another device) is not refused for it: the abstract check is skipped, and its
    mistakes surface at the first step instead (make_step checks pred and the loss there too).
    """
    x_name, y_name = names
    xb, yb = x, y
    if rows is not None and rows < x.shape[0]:  # a minibatch: what the model is given, e.g. x[:4]
        xb, yb, x_name, y_name = x[:rows], y[:rows], f"{x_name}[:{rows}]", f"{y_name}[:{rows}]"
    apply = model.apply if isinstance(model, Network) else model
    meta = lambda t: t.to("meta") if isinstance(t, Tensor) else t
    shapes = f"{x_name} of shape {tuple(xb.shape)} and params {describe(params)}"
    pred = _on_meta(
        f"model(params, {x_name})", shapes, lambda: apply(tree_map(meta, params), meta(xb))
    )
    if pred is None:
        return
    check_pred(pred, f"model(params, {x_name})")
    shapes = f"pred {_spec(pred)} and {y_name} {_spec(yb)}"
    value = _on_meta(f"loss(pred, {y_name})", shapes, lambda: loss(pred, meta(yb)))
    if value is None:
        return
    check_loss_value(value, f"loss(pred, {y_name})")
    # Every target's value, not only the batch's: the losses that losses.check knows pair pred and
    # target row by row, so the predictions for all of y have the batch's shape past its rows.
    pred_shape = (y.shape[0], *pred.shape[1:]) if pred.ndim and yb is not y else pred.shape
    try:
        losses.check(loss, pred_shape, y)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{names[1]}: {e}" if names[1] != "y" else str(e)) from None


def check_pred(pred: Any, call: str) -> None:
    """A model's output must be a tensor (a loss of a tuple has no meaning fit can check)."""
    if not isinstance(pred, Tensor):
        raise TypeError(f"{call} must return a tensor, got {_given(pred)}.")


def check_loss_value(value: Any, call: str) -> None:
    """A loss must be a 0-d real floating tensor: grad needs a scalar, and an integer loss would
    train with zero gradients."""
    if not isinstance(value, Tensor):
        raise TypeError(
            f"{call} must return a 0-d floating tensor, got {_given(value)}; compute the loss with "
            "torch operations on pred (a Python number has no gradient)."
        )
    if not value.is_floating_point():
        raise TypeError(
            f"{call} must return a 0-d floating tensor, got dtype {value.dtype}: an integer or "
            "complex loss has no usable gradient; compute it in floating point, e.g. from pred itself."
        )
    if value.ndim != 0:
        raise ValueError(
            f"{call} must return a 0-d floating tensor, got shape {tuple(value.shape)}; reduce it, "
            "e.g. with .sum() or .mean()."
        )


def _on_meta(call: str, shapes: str, run: Callable[[], Any]) -> Any:
    """run() on meta tensors; None when it fails for want of data (see _meta_only), else its
    failure as a ValueError (TypeError stays TypeError) naming the call, the shapes and the cause."""
    try:
        return run()
    except Exception as e:
        if _meta_only(e):
            return None
        raise (TypeError if isinstance(e, TypeError) else ValueError)(
            f"{call} fails for {shapes} (run once on meta tensors before training): "
            f"{type(e).__name__}: {e}"
        ) from e


def _meta_only(error: Exception) -> bool:
    """Whether an error on meta tensors says only that they hold no data or live on no device
    (no meta kernel, .item(), .tolist(), .numpy(), a tensor made on cpu): then the run says
    nothing about the real one."""
    return (
        isinstance(error, NotImplementedError)
        or re.search(r"\bmeta\b", str(error), re.I) is not None
    )


def _spec(t: Any) -> str:
    return f"of shape {tuple(t.shape)} ({t.dtype})" if isinstance(t, Tensor) else _given(t)


def state_shapes(init: Callable[[PyTree], PyTree], params: PyTree) -> PyTree:
    """The state `init(params)` would make, built on the meta device so nothing is allocated."""
    return init(tree_map(lambda t: torch.empty_like(t, device="meta"), params))


def check_not_transformed(name: str) -> None:
    """Raise when called inside a torch.func transform (grad, vmap, jvp, jacrev, ...): fit trains
    with torch.func.grad of its own and reads its flags on the host, so through a transform it
    would fail obscurely or, under grad, silently give a zero gradient.

    torch._C._functorch is private: this is the one place functional_nn reads it.
    """
    current_level = getattr(torch._C._functorch, "maybe_current_level", None)
    if current_level is not None and current_level() is not None:
        raise RuntimeError(
            f"{name} was called inside a torch.func transform (grad, vmap, jvp, ...), which it does "
            f"not support: a gradient through it would be zero. Call {name} outside the transform; "
            "to differentiate through training, write the loop from train.make_step's step."
        )


def check_fit(
    params,
    x,
    y,
    opt,
    *,
    model,
    loss,
    steps,
    epochs,
    batch_size,
    shuffle,
    seed,
    opt_state,
    start_step,
    val,
    callbacks,
    log_every,
    eval_every,
    on_nonfinite,
) -> None:
    """All of fit's checks, in the order a reader would fix them."""
    check_not_transformed("fit")
    check_data(x, y)
    check_params(params, x, model)
    check_finite_params(params)
    check_opt(opt)
    check_length(x.shape[0], steps, epochs, batch_size, start_step, log_every, eval_every)
    check_seed("seed", seed)
    check_options(loss, shuffle, callbacks, on_nonfinite)
    check_val(val, params, x, model)
    if opt_state is not None:
        check_opt_state(opt_state, state_shapes(opt.init, params), x.device)
    check_outputs(model, loss, params, x, y, rows=batch_size)
    if val is not None:
        check_outputs(model, loss, params, val[0], val[1], VAL_NAMES)


def check_ensemble(
    params,
    x,
    y,
    opt,
    *,
    model,
    loss,
    lrs,
    steps,
    epochs,
    batch_size,
    shuffle,
    seed,
    start_step,
    val,
    log_every,
    eval_every,
    on_nonfinite,
) -> tuple[PyTree, int, Tensor | None]:
    """All of fit_ensemble's checks but opt_state's (see check_opt_state).

    Returns:
        (stacked params, K, lrs as a (K,) float64 tensor on x's device or None); the stacked
        params are the caller's tree when it was stacked already, else a new one.
    """
    check_not_transformed("fit_ensemble")
    check_data(x, y)
    stacked, k = as_stacked(params, model, x)
    first = tree_index(stacked, 0)
    try:
        check_params(first, x, model)
    except (TypeError, ValueError) as e:  # the stacked tree's shapes are K models of these
        raise type(e)(f"model 0 of the ensemble: {e}") from None
    check_finite_stacked(stacked, k)
    lrs = check_lrs(opt, lrs, k, x.device)
    check_length(x.shape[0], steps, epochs, batch_size, start_step, log_every, eval_every)
    check_seeds(seed, k)
    check_options(loss, shuffle, (), on_nonfinite)
    check_val(val, first, x, model)
    check_outputs(model, loss, first, x, y, rows=batch_size)
    if val is not None:
        check_outputs(model, loss, first, val[0], val[1], VAL_NAMES)
    return stacked, k, lrs


def as_stacked(params: PyTree, model: Any, x: Tensor) -> tuple[PyTree, int]:
    """K models as one stacked tree, from a list of K params trees or a stacked tree.

    A list or tuple is read as K models when, for a Network, its first item fits the network
    (model.check), or, for a plain callable, its items share one structure and shapes; otherwise
    as a stacked tree, whose every leaf must have the same leading size K. (For a Network that
    neither reading fits, as with an x of the wrong width, the plain callable's rule decides.) (So with a plain
    callable, a stacked tree that is a list of identically shaped layers reads as a list: pass
    such params as a list of K trees.)
    """
    if _is_model_list(params, model, x):
        for i, p in enumerate(params):
            assert_same_structure(p, params[0], f"params[{i}]", "params[0]")
        return tree_stack(list(params)), len(params)
    k = _stacked_size(params)
    if k is None:
        raise ValueError(
            "params must be a list of K params trees, or one tree whose every leaf has a leading "
            f"axis of K models; got {describe(params)}."
        )
    return params, k


def _is_model_list(params: PyTree, model: Any, x: Tensor) -> bool:
    if not isinstance(params, (list, tuple)) or not params or isinstance(params[0], Tensor):
        return False
    if isinstance(model, Network):
        if _fits(model, params[0], x):
            return True
        if _stacked_size(params) is not None and _fits(model, tree_index(params, 0), x):
            return False
        # Neither reading fits x: judge by the layout alone, so that the check of model 0 then
        # names what is wrong, x or the params; one item alone is no evidence of a list.
        if len(params) == 1:
            return False
    shapes = lambda tree: [getattr(t, "shape", None) for t in tree_leaves(tree)]
    return all(
        tree_structure(p) == tree_structure(params[0]) and shapes(p) == shapes(params[0])
        for p in params
    )


def _fits(model: Network, params: PyTree, x: Tensor) -> bool:
    try:
        model.check(params, x)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError):
        return False
    return True


def _stacked_size(params: PyTree) -> int | None:
    """K, when every leaf of params has one leading size K; else None."""
    sizes = {t.shape[0] if isinstance(t, Tensor) and t.ndim else None for t in tree_leaves(params)}
    return sizes.pop() if len(sizes) == 1 else None


def check_lrs(opt: Any, lrs: Any, k: int, device: torch.device) -> Tensor | None:
    """opt a GradientTransformation without lrs, a function lr -> GradientTransformation with."""
    if lrs is None:
        if callable(opt) and not isinstance(opt, GradientTransformation):
            raise TypeError(
                f"opt is a function ({_given(opt)}); with lrs=[one per model] it makes each "
                "model's optimizer, else pass a GradientTransformation, e.g. optim.adam(1e-3)."
            )
        check_opt(opt)
        return None
    if isinstance(opt, GradientTransformation) or not callable(opt):
        raise TypeError(
            "with lrs, opt must be a function of the learning rate, e.g. "
            f"lambda lr: optim.adam(lr), got {_given(opt)}."
        )
    values = lrs.tolist() if isinstance(lrs, Tensor) else lrs
    if not isinstance(values, (list, tuple)):
        raise TypeError(
            f"lrs must be a list or 1-d tensor of {k} learning rates, got {_given(lrs)}."
        )
    if len(values) != k:
        raise ValueError(f"lrs must hold one learning rate per model ({k}), got {lrs!r}.")
    for i, lr in enumerate(values):
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0.0 <= lr < math.inf:
            raise ValueError(f"lrs[{i}] must be a finite number >= 0, got {lr!r}.")
    lrs = torch.tensor(values, dtype=torch.float64, device=device)
    check_lr_factory(opt, lrs)
    return lrs


def check_lr_factory(make_opt: Callable, lrs: Tensor) -> None:
    """make_opt(lr) works as fit_ensemble calls it: inside vmap, with lr a 0-d tensor whose value
    differs between the models, so that Python cannot branch on it."""
    made = []

    def call(lr):
        made.append(make_opt(lr))
        return lr

    try:
        torch.func.vmap(call)(lrs)
    except RuntimeError as e:  # vmap refuses data-dependent control flow and .item()
        raise ValueError(
            f"opt(lr) fails when called as fit_ensemble calls it, inside vmap with lr a 0-d tensor "
            "of a different value for each model: the factory must not branch on lr's value or "
            "read it as a Python number (if lr > ..., float(lr), lr.item()); pass lr to the "
            f"optimizer as it is, e.g. lambda lr: optim.adam(lr). vmap said: {e}"
        ) from e
    if not isinstance(made[0], GradientTransformation):
        raise TypeError(
            f"opt(lr) must return a GradientTransformation, e.g. optim.adam(lr), got {_given(made[0])}."
        )


def check_val(val: Any, params: PyTree, x: Tensor, model: Any) -> None:
    """val is None or (x_val, y_val) that fits like (x, y)."""
    if val is None:
        return
    if not isinstance(val, (tuple, list)) or len(val) != 2:
        raise TypeError(f"val must be a pair (x_val, y_val) of tensors, got {type(val).__name__}.")
    check_data(val[0], val[1], *VAL_NAMES)
    if val[0].device != x.device:
        raise ValueError(
            f"val[0] (x_val) is on {val[0].device} but x is on {x.device}; move it there."
        )
    if val[0].dtype != x.dtype:
        raise TypeError(f"val[0] (x_val) has dtype {val[0].dtype} but x has {x.dtype}; convert it.")
    if isinstance(model, Network):
        try:
            model.check(params, val[0])
        except (TypeError, ValueError) as e:
            # params fit x (checked before), so this is about x_val, which the network's message
            # calls x, its input's name: say x_val there, lest the message blame x.
            message = re.sub(r"\bx\b", "x_val", str(e))
            raise type(e)(f"val[0] (x_val) does not fit the model: {message}") from None


def _given(value: Any) -> str:
    """A value for a message: its type and a short repr."""
    text = repr(value)
    return f"{type(value).__name__} {text[:77] + '...' if len(text) > 80 else text}"
