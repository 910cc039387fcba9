"""The checks of trees, data and models, for fit, fit_ensemble and grads: run before any work.

Each message names the argument, what was given, what was expected and how to fix it: ValueError
for bad values and shapes, TypeError for wrong types (the wording of `_checks.py`, whose checks of
single arguments these build on).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from . import losses
from ._pytree import (
    PyTree,
    assert_same_structure,
    describe,
    leaf_paths,
    tree_index,
    tree_leaves,
    tree_map,
)
from .networks import Network
from .optim.base import GradientTransformation

VAL_NAMES = ("val[0] (x_val)", "val[1] (y_val)")


def check_opt(opt: Any) -> None:
    if not isinstance(opt, GradientTransformation):
        raise TypeError(
            f"opt must be a GradientTransformation, e.g. optim.adam(1e-3), got {given(opt)}."
        )


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
            f"model must be a Network or a callable apply(params, x), got {given(model)}."
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
    try:
        value = _on_meta(f"loss(pred, {y_name})", shapes, lambda: loss(pred, meta(yb)))
    except ValueError as e:
        raise ValueError(f"{e}{_labels_hint(loss, yb, y_name)}") from e.__cause__
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


def check_metrics(model: Any, metrics: tuple, params: PyTree, x: Tensor, y: Tensor) -> None:
    """Each metric runs on meta tensors of the model's output on val and y_val (no arithmetic)."""
    apply = model.apply if isinstance(model, Network) else model
    meta = lambda t: t.to("meta") if isinstance(t, Tensor) else t
    if not metrics:
        return
    pred = _on_meta("model(params, x_val)", "val", lambda: apply(tree_map(meta, params), meta(x)))
    for name, metric in metrics if pred is not None else ():
        shapes = f"pred {_spec(pred)} and y_val {_spec(y)}"
        value = _on_meta(
            f"metrics[{name!r}](pred, y_val)", shapes, lambda m=metric: m(pred, meta(y))
        )
        if value is not None and not (isinstance(value, Tensor) and value.ndim == 0):
            raise ValueError(
                f"metrics[{name!r}](pred, y_val) must return a 0-d tensor, got {_spec(value)}."
            )


def _labels_hint(loss: Any, y: Tensor, y_name: str) -> str:
    """For integer targets that a regression loss refuses: they look like class labels."""
    base = loss.func if isinstance(loss, functools.partial) else loss
    regression = (losses.sse, losses.mse, losses.l1, losses.huber, losses.smooth_l1)
    if y.is_floating_point() or base not in regression:
        return ""
    return (
        f"\n{y_name} holds integers ({y.dtype}), which look like class labels, and "
        f"{base.__name__} is a regression loss: for classification pass "
        'loss="cross_entropy" (pred: (N, C) logits, y: (N,) labels in 0..C-1).'
    )


def check_pred(pred: Any, call: str) -> None:
    """A model's output must be a tensor (a loss of a tuple has no meaning fit can check)."""
    if not isinstance(pred, Tensor):
        raise TypeError(f"{call} must return a tensor, got {given(pred)}.")


def check_loss_value(value: Any, call: str) -> None:
    """A loss must be a 0-d real floating tensor: grad needs a scalar, and an integer loss would
    train with zero gradients."""
    if not isinstance(value, Tensor):
        raise TypeError(
            f"{call} must return a 0-d floating tensor, got {given(value)}; compute the loss with "
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
    return f"of shape {tuple(t.shape)} ({t.dtype})" if isinstance(t, Tensor) else given(t)


def state_shapes(init: Callable[[PyTree], PyTree], params: PyTree) -> PyTree:
    """The state `init(params)` would make, built on the meta device so nothing is allocated."""
    return init(tree_map(lambda t: torch.empty_like(t, device="meta"), params))


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


def given(value: Any) -> str:
    """A value for a message: its type and a short repr."""
    text = repr(value)
    return f"{type(value).__name__} {text[:77] + '...' if len(text) > 80 else text}"
