"""The strong Wolfe line search of torch.optim.LBFGS (Nocedal & Wright, Algorithms 3.5 and 3.6,
as Mark Schmidt's minFunc and torch/optim's lswolfe.lua implement it), with its branch order, so
that the same iterates are tried on the same values.

Scalars keep the types torch.optim gives them (the loss a Python float, slopes 0-d tensors of the
params' dtype): a comparison then rounds as it does there.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor


def cubic_minimizer(x1, f1, g1, x2, f2, g2, bounds=None):
    """The minimizer of the cubic through (x1, f1, slope g1) and (x2, f2, slope g2), clamped into
    `bounds` (default: between x1 and x2); their midpoint when the cubic has no real minimizer."""
    lo, hi = bounds if bounds is not None else ((x1, x2) if x1 <= x2 else (x2, x1))
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    if d2_square < 0:
        return (lo + hi) / 2.0
    d2 = d2_square.sqrt()
    if x1 <= x2:
        at = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    else:
        at = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    return min(max(at, lo), hi)


def strong_wolfe(
    evaluate: Callable, t, d: Tensor, f: float, g: Tensor, gtd: Tensor, tolerance_change: float,
    max_ls: int, c1: float = 1e-4, c2: float = 0.9,
):  # fmt: skip
    """A step t along d with f(t) <= f + c1 t gtd and |f'(t)| <= -c2 gtd, or the best one found.

    Args:
        evaluate: t -> (loss float, flat gradient (n,)) at x + t d.
        t: the first trial step; d: (n,) the direction; f, g, gtd: loss, gradient, slope g.d at t=0.
        tolerance_change: stop refining once the bracket times max|d| is below it.
        max_ls: the most evaluations.
    Returns:
        (f_t, g_t, t, evaluations).
    """
    d_norm = d.abs().max()
    f_new, g_new = evaluate(t)
    evals, gtd_new = 1, g_new.dot(d)
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done, it = False, 0
    bracket = None
    while it < max_ls:  # bracketing (Algorithm 3.5)
        if f_new > (f + c1 * t * gtd) or (it > 1 and f_new >= f_prev):
            bracket = [[t_prev, f_prev, g_prev, gtd_prev], [t, f_new, g_new, gtd_new]]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, done = [[t, f_new, g_new, None]], True
            break
        if gtd_new >= 0:
            bracket = [[t_prev, f_prev, g_prev, gtd_prev], [t, f_new, g_new, gtd_new]]
            break
        t_next = cubic_minimizer(
            t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(t + 0.01 * (t - t_prev), t * 10)
        )
        t_prev, f_prev, g_prev, gtd_prev = t, f_new, g_new, gtd_new
        t = t_next
        f_new, g_new = evaluate(t)
        evals, gtd_new, it = evals + 1, g_new.dot(d), it + 1
    if it == max_ls:
        bracket = [[0, f, g, None], [t, f_new, g_new, None]]
    low, high = (0, 1) if bracket[0][1] <= bracket[-1][1] else (1, 0)
    insufficient = False
    while not done and it < max_ls:  # zoom (Algorithm 3.6)
        (t0, f0, _, s0), (t1, f1, _, s1) = bracket
        if abs(t1 - t0) * d_norm < tolerance_change:
            break
        t = cubic_minimizer(t0, f0, s0, t1, f1, s1)
        top, bottom = max(t0, t1), min(t0, t1)
        eps = 0.1 * (top - bottom)
        if (
            min(top - t, t - bottom) < eps
        ):  # too close to an end: move it in, unless it is the first time
            if insufficient or t >= top or t <= bottom:
                t = top - eps if abs(t - top) < abs(t - bottom) else bottom + eps
                insufficient = False
            else:
                insufficient = True
        else:
            insufficient = False
        f_new, g_new = evaluate(t)
        evals, gtd_new, it = evals + 1, g_new.dot(d), it + 1
        if f_new > (f + c1 * t * gtd) or f_new >= bracket[low][1]:
            bracket[high] = [t, f_new, g_new, gtd_new]
            low, high = (0, 1) if bracket[0][1] <= bracket[1][1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high][0] - bracket[low][0]) >= 0:
                bracket[high] = list(bracket[low])
            bracket[low] = [t, f_new, g_new, gtd_new]
    t, f_new, g_new, _ = bracket[low]
    return f_new, g_new, t, evals
