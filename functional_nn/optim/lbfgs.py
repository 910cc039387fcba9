"""L-BFGS (Nocedal 1980; Liu & Nocedal 1989) as torch.optim.LBFGS: one update runs up to max_iter
inner iterations, each re-evaluating the loss, so its update reads `value_fn` (see
`GradientTransformationExtraArgs`).

The state has fixed shapes (the (y, s) history is a ring of `history_size` rows over the params
flattened in tree order), so it can be saved and checkpointed; the memory torch.optim reaches at
a full history is allocated by init. The update is eager Python: its loop and line search branch
on values read from the device (as torch.optim's do), so it neither vmaps nor compiles.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .._pytree import register_namedtuple, tree_flatten, tree_leaves, tree_unflatten
from ._checks import flags, integer, non_negative
from ._line_search import strong_wolfe
from ._named import shown_as_call
from .base import GradientTransformationExtraArgs, check_state, param_leaves
from .transforms import as_schedule


@register_namedtuple
class LBFGSState(NamedTuple):
    """State of `lbfgs`, torch.optim.LBFGS's `state` with fixed shapes (n = number of param
    entries, H = history_size). Every tensor is of the params' dtype unless said otherwise.

    count: int64, updates done (what a schedule reads); n_iter, func_evals: int64, torch's counters
    over all updates; d (n,), t (): the last direction and step length; old_dirs, old_stps (H, n),
    ro (H,): the pairs y, s and 1 / y.s, pair k in row k % H; pushes: int64, pairs stored so far;
    H_diag (): the initial inverse Hessian scale; prev_flat_grad (n,); prev_loss: float64.
    """

    count: Tensor
    n_iter: Tensor
    func_evals: Tensor
    d: Tensor
    t: Tensor
    old_dirs: Tensor
    old_stps: Tensor
    ro: Tensor
    pushes: Tensor
    H_diag: Tensor
    prev_flat_grad: Tensor
    prev_loss: Tensor


@shown_as_call
def lbfgs(
    lr=1.0,
    max_iter: int = 20,
    max_eval: int | None = None,
    tolerance_grad: float = 1e-7,
    tolerance_change: float = 1e-9,
    history_size: int = 100,
    line_search_fn: str | None = None,
    *,
    maximize: bool = False,
) -> GradientTransformationExtraArgs:
    """L-BFGS, as torch.optim.LBFGS (maximize as torch >= 2.14's).

    Per inner iteration k (g the flat gradient, f the loss; negated when maximizing):
    y = g_k - g_{k-1}, s = t_{k-1} d_{k-1}, stored when y.s > 1e-10 (H_diag = y.s / y.y);
    d_k = -H_k g_k by the two-loop recursion (Nocedal & Wright, Algorithm 7.4) over the last
    history_size pairs, d_1 = -g_1; t_k = lr (the first iteration ever: min(1, 1/|g|_1) lr), or the
    strong Wolfe line search's t (c1 = 1e-4, c2 = 0.9, cubic interpolation, as minFunc);
    x <- x + t_k d_k. Stops after max_iter iterations or max_eval evaluations, or when
    max|g| <= tolerance_grad, g.d > -tolerance_change, max|t d| <= tolerance_change or
    |f_k - f_{k-1}| < tolerance_change.

    Args:
        lr: a number >= 0, a 0-d tensor or a schedule of the count of updates (read once per update).
        max_iter, max_eval (None: max_iter * 5 // 4), tolerance_grad, tolerance_change,
            history_size, line_search_fn (None or "strong_wolfe"), maximize: torch.optim.LBFGS's.
    Returns:
        A GradientTransformationExtraArgs with an LBFGSState. Its update is
        `update(grads, state, params, value_fn=..., value=None)`: grads and value (the 0-d loss,
        computed by value_fn when not given) at params; value_fn(params) -> 0-d loss on the same
        batch, differentiated with torch.func.grad_and_value. The updates are x - params, x the
        final iterate (so params + updates is x to rounding). Neither vmaps nor compiles.
    """
    schedule = as_schedule(lr)
    if max_eval is None:
        max_eval = max_iter * 5 // 4 if isinstance(max_iter, int) else max_iter
    for name, value in (
        ("max_iter", max_iter),
        ("max_eval", max_eval),
        ("history_size", history_size),
    ):
        integer(name, value, 1)
    non_negative(tolerance_grad=tolerance_grad, tolerance_change=tolerance_change)
    flags(maximize=maximize)
    if line_search_fn not in (None, "strong_wolfe"):
        raise ValueError(
            f"Invalid line_search_fn: {line_search_fn!r} (expected None or 'strong_wolfe', the "
            "only line search torch.optim.LBFGS supports)."
        )

    def init(params):
        leaves = tree_leaves(params)
        _check_leaves(leaves)
        like = leaves[0]
        n = sum(p.numel() for p in leaves)
        zero = lambda *shape, dtype=like.dtype: torch.zeros(shape, dtype=dtype, device=like.device)
        count = lambda: zero(dtype=torch.int64)
        return LBFGSState(
            count(), count(), count(), zero(n), zero(), zero(history_size, n),
            zero(history_size, n), zero(history_size), count(), zero() + 1, zero(n),
            zero(dtype=torch.float64),
        )  # fmt: skip

    def update(grads, state, params=None, *, value_fn=None, value=None, **extra_args):
        if value_fn is None:
            raise ValueError(
                "lbfgs needs value_fn: call update(grads, state, params, value_fn=f), f(params) -> "
                "the 0-d loss on this batch (fit passes it); L-BFGS re-evaluates the loss."
            )
        g, spec = tree_flatten(grads)
        check_state(state, LBFGSState, g, spec)
        p = param_leaves(params, g, spec, "lbfgs")
        _check_leaves(p)
        if state.d.shape != (sum(x.numel() for x in p),) or state.ro.shape != (history_size,):
            raise ValueError(
                f"state does not fit these params: d has shape {tuple(state.d.shape)} and ro "
                f"{tuple(state.ro.shape)}, expected ({sum(x.numel() for x in p)},) and "
                f"({history_size},); use the state this optimizer's init made from the params."
            )
        sign = -1.0 if maximize else 1.0
        shapes = [x.shape for x in p]

        def unflat(flat):
            parts = torch.split(flat, [s.numel() for s in shapes])
            return tree_unflatten([v.view(s) for v, s in zip(parts, shapes)], spec)

        def evaluate(x):
            grad_tree, loss = torch.func.grad_and_value(value_fn)(unflat(x))
            return sign * float(loss), _flat(tree_leaves(grad_tree), maximize)

        if value is None:
            value = value_fn(params)
        x0 = _flat(p, False)
        run = _Run(state, float(schedule(state.count)), evaluate, history_size)
        x = run.minimize(
            x0.clone(), sign * float(value), _flat(g, maximize), max_iter, max_eval,
            tolerance_grad, tolerance_change, line_search_fn,
        )  # fmt: skip
        return unflat(x - x0), run.state(state.count + 1)

    return GradientTransformationExtraArgs(init, update)


def _check_leaves(leaves: list[Tensor]) -> None:
    if not leaves:
        raise ValueError("lbfgs needs at least one parameter tensor; the params tree is empty.")
    dtypes = {x.dtype for x in leaves}
    if len(dtypes) > 1 or not leaves[0].is_floating_point():
        raise TypeError(
            f"lbfgs needs real floating params all of one dtype (they are optimized as one flat "
            f"vector), got {sorted(map(str, dtypes))}; convert them to one floating dtype."
        )


def _flat(leaves: list[Tensor], negate: bool) -> Tensor:
    flat = torch.cat([x.reshape(-1) for x in leaves])
    return flat.neg_() if negate else flat


class _Run:
    """One update's working copy of the state (cloned: the caller's is never written), and
    torch.optim.LBFGS.step's loop over it."""

    def __init__(self, state: LBFGSState, lr: float, evaluate, history_size: int):
        self.lr, self.evaluate, self.size = lr, evaluate, history_size
        self.n_iter, self.func_evals = int(state.n_iter), int(state.func_evals)
        self.pushes, self.prev_loss = int(state.pushes), float(state.prev_loss)
        self.d, self.t, self.H_diag = state.d.clone(), state.t.clone(), state.H_diag.clone()
        self.old_dirs, self.old_stps = state.old_dirs.clone(), state.old_stps.clone()
        self.ro, self.prev_flat_grad = state.ro.clone(), state.prev_flat_grad.clone()

    def state(self, count: Tensor) -> LBFGSState:
        like = self.d
        as_tensor = lambda v, dtype=like.dtype: torch.tensor(v, dtype=dtype, device=like.device)
        ints = [as_tensor(v, torch.int64) for v in (self.n_iter, self.func_evals, self.pushes)]
        return LBFGSState(
            count, ints[0], ints[1], self.d, as_tensor(float(self.t)), self.old_dirs,
            self.old_stps, self.ro, ints[2], as_tensor(float(self.H_diag)), self.prev_flat_grad,
            as_tensor(self.prev_loss, torch.float64),
        )  # fmt: skip

    def direction(self, flat_grad: Tensor) -> Tensor:
        """-H g by the two-loop recursion, after storing the newest pair (torch's op order)."""
        y = flat_grad.sub(self.prev_flat_grad)
        s = self.d.mul(self.t)
        ys = y.dot(s)
        if ys > 1e-10:
            row = self.pushes % self.size
            self.old_dirs[row], self.old_stps[row], self.ro[row] = y, s, 1.0 / ys
            self.pushes += 1
            self.H_diag = ys / y.dot(y)
        num_old = min(self.pushes, self.size)
        rows = [(self.pushes - num_old + i) % self.size for i in range(num_old)]
        al = [None] * num_old
        q = flat_grad.neg()
        for i in reversed(range(num_old)):
            al[i] = self.old_stps[rows[i]].dot(q) * self.ro[rows[i]]
            q.add_(self.old_dirs[rows[i]], alpha=-al[i])
        r = torch.mul(q, self.H_diag)
        for i in range(num_old):
            be_i = self.old_dirs[rows[i]].dot(r) * self.ro[rows[i]]
            r.add_(self.old_stps[rows[i]], alpha=al[i] - be_i)
        return r

    def minimize(self, x, loss, flat_grad, max_iter, max_eval, tol_grad, tol_change, line_search):
        """torch.optim.LBFGS.step from (x, loss, flat_grad); returns the final x (written in place)."""
        self.func_evals += 1
        current_evals = 1
        if flat_grad.abs().max() <= tol_grad:
            return x
        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            self.n_iter += 1
            if self.n_iter == 1:
                self.d, self.pushes, self.H_diag = flat_grad.neg(), 0, torch.ones_like(self.H_diag)
            else:
                self.d = self.direction(flat_grad)
            self.prev_flat_grad = flat_grad.clone()
            self.prev_loss = loss
            t = min(1.0, 1.0 / flat_grad.abs().sum()) * self.lr if self.n_iter == 1 else self.lr
            gtd = flat_grad.dot(self.d)
            if gtd > -tol_change:
                self.t = t
                break
            evals, opt_cond = 0, False
            if line_search is not None:
                # torch.optim.LBFGS leaves the search's tolerance_change at its default, 1e-9.
                loss, flat_grad, t, evals = strong_wolfe(
                    lambda t_: self.evaluate(x.add(self.d, alpha=t_)),
                    t, self.d, loss, flat_grad, gtd, 1e-9, max_eval - current_evals,
                )  # fmt: skip
                x.add_(self.d, alpha=t)
                opt_cond = flat_grad.abs().max() <= tol_grad
            else:
                x.add_(self.d, alpha=t)
                if n_iter != max_iter:  # as torch: no evaluation after the last iteration
                    loss, flat_grad = self.evaluate(x)
                    opt_cond, evals = flat_grad.abs().max() <= tol_grad, 1
            self.t = t
            current_evals += evals
            self.func_evals += evals
            if n_iter == max_iter or current_evals >= max_eval or opt_cond:
                break
            if self.d.mul(t).abs().max() <= tol_change or abs(loss - self.prev_loss) < tol_change:
                break
        return x
