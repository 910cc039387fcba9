"""L-BFGS, Adafactor and Muon in numpy, from their published algorithms, with torch.optim's
conventions where the papers leave a choice (its documentation's algorithm boxes).

LBFGS steps a flat float64 vector with a function `f(x) -> (loss, grad)`; Adafactor and Muon step a
list of arrays in place from given grads, as the classes of `oracle.optim`.
"""

from __future__ import annotations

import math
import typing

import numpy as np


class LBFGS:
    """L-BFGS (Liu & Nocedal 1989): two-loop recursion (Nocedal & Wright, Algorithm 7.4) with the
    scaling H0 = y.s / y.y, pairs kept when y.s > 1e-10; the first step ever scaled by
    min(1, 1/|g|_1); optional strong Wolfe search (N&W Algorithms 3.5, 3.6, cubic interpolation as
    in minFunc); torch.optim.LBFGS's stopping tests and its state carried between steps."""

    def __init__(self, lr=1.0, max_iter=20, max_eval=None, tolerance_grad=1e-7,
                 tolerance_change=1e-9, history_size=100, line_search_fn=None):  # fmt: skip
        self.lr, self.max_iter = lr, max_iter
        self.max_eval = max_iter * 5 // 4 if max_eval is None else max_eval
        self.tol_grad, self.tol_change, self.m = tolerance_grad, tolerance_change, history_size
        self.wolfe = line_search_fn == "strong_wolfe"
        self.n_iter, self.func_evals, self.ys, self.ss = 0, 0, [], []
        self.d = self.t = self.gamma = self.g_prev = None

    def step(self, x: np.ndarray, f) -> None:
        loss, g = f(x)
        evals, self.func_evals = 1, self.func_evals + 1
        if np.max(np.abs(g)) <= self.tol_grad:
            return
        for k in range(1, self.max_iter + 1):
            self.n_iter += 1
            if self.n_iter == 1:
                self.d, self.ys, self.ss, self.gamma = -g, [], [], 1.0
            else:
                self.d = self._direction(g)
            self.g_prev, loss_prev = g, loss
            t = min(1.0, 1.0 / np.sum(np.abs(g))) * self.lr if self.n_iter == 1 else self.lr
            slope = g @ self.d
            if slope > -self.tol_change:
                self.t = t
                return
            done = False
            if self.wolfe:
                loss, g, t, n = wolfe(lambda s, x=x: f(x + s * self.d), self.d, loss, g, slope,
                                      t, self.max_eval - evals)  # fmt: skip
                x += t * self.d
            else:
                x += t * self.d
                n = 0
                if k != self.max_iter:
                    (loss, g), n = f(x), 1
            done = np.max(np.abs(g)) <= self.tol_grad if (self.wolfe or n) else False
            self.t, evals, self.func_evals = t, evals + n, self.func_evals + n
            if k == self.max_iter or evals >= self.max_eval or done:
                return
            if (
                np.max(np.abs(t * self.d)) <= self.tol_change
                or abs(loss - loss_prev) < self.tol_change
            ):
                return

    def _direction(self, g):
        y, s = g - self.g_prev, self.t * self.d
        if y @ s > 1e-10:
            if len(self.ys) == self.m:
                self.ys.pop(0), self.ss.pop(0)
            self.ys.append(y), self.ss.append(s)
            self.gamma = (y @ s) / (y @ y)
        rho = [1.0 / (yi @ si) for yi, si in zip(self.ys, self.ss)]
        q, alpha = -g, [0.0] * len(self.ys)
        for i in reversed(range(len(self.ys))):
            alpha[i] = rho[i] * (self.ss[i] @ q)
            q = q - alpha[i] * self.ys[i]
        r = self.gamma * q
        for i in range(len(self.ys)):
            r = r + (alpha[i] - rho[i] * (self.ys[i] @ r)) * self.ss[i]
        return r


def cubic_min(a, fa, ga, b, fb, gb, lo=None, hi=None):
    """Minimizer of the cubic Hermite interpolant on [a, b] (N&W eq. 3.59), clamped to [lo, hi]
    (default the interval itself); the midpoint of [lo, hi] when it has no real minimizer."""
    lo, hi = (min(a, b), max(a, b)) if lo is None else (lo, hi)
    d1 = ga + gb - 3 * (fa - fb) / (a - b)
    disc = d1 * d1 - ga * gb
    if disc < 0:
        return (lo + hi) / 2
    d2 = math.sqrt(disc)
    if a > b:
        a, fa, ga, b, fb, gb = b, fb, gb, a, fa, ga
    return min(max(b - (b - a) * (gb + d2 - d1) / (gb - ga + 2 * d2), lo), hi)


def wolfe(phi, d, f0, g0, slope0, t, max_ls, c1=1e-4, c2=0.9, tol=1e-9):
    """Strong Wolfe search along d: phi(t) -> (loss, grad). Returns (loss, grad, t, evaluations)."""
    fs, gs = phi(t)
    n, prev, i = 1, (0.0, f0, g0, slope0), 0
    pts = None
    while i < max_ls:
        cur = (t, fs, gs, gs @ d)
        if fs > f0 + c1 * t * slope0 or (i > 1 and fs >= prev[1]):
            pts = [prev, cur]
            break
        if abs(cur[3]) <= -c2 * slope0:
            return fs, gs, t, n
        if cur[3] >= 0:
            pts = [prev, cur]
            break
        t = cubic_min(prev[0], prev[1], prev[3], t, fs, cur[3], t + 0.01 * (t - prev[0]), 10 * t)
        prev = cur
        (fs, gs), n, i = phi(t), n + 1, i + 1
    if pts is None:
        pts = [(0.0, f0, g0, slope0), (t, fs, gs, gs @ d)]
    lo = 0 if pts[0][1] <= pts[1][1] else 1
    stuck, dmax = False, np.max(np.abs(d))
    while i < max_ls:
        (a, fa, _, ga), (b, fb, _, gb) = pts
        if abs(b - a) * dmax < tol:
            break
        t = cubic_min(a, fa, ga, b, fb, gb)
        top, bot = max(a, b), min(a, b)
        margin = 0.1 * (top - bot)
        if min(top - t, t - bot) < margin:
            if stuck or t >= top or t <= bot:  # twice near an end, or past it: step inside
                t = top - margin if abs(t - top) < abs(t - bot) else bot + margin
                stuck = False
            else:
                stuck = True
        else:
            stuck = False
        (fs, gs), n, i = phi(t), n + 1, i + 1
        new = (t, fs, gs, gs @ d)
        if fs > f0 + c1 * t * slope0 or fs >= pts[lo][1]:
            pts[1 - lo] = new
            lo = 0 if pts[0][1] <= pts[1][1] else 1
            continue
        if abs(new[3]) <= -c2 * slope0:
            pts[lo] = new
            break
        if new[3] * (pts[1 - lo][0] - pts[lo][0]) >= 0:
            pts[1 - lo] = pts[lo]
        pts[lo] = new
    return pts[lo][1], pts[lo][2], pts[lo][0], n


class Adafactor:
    """Adafactor (Shazeer & Stern 2018, Algorithms 4 and 5) with torch.optim.Adafactor's choices:
    beta2_t = 1 - t^beta2_decay, relative step rho_t = min(lr, 1/sqrt(t)), update clipping by d,
    V = R C / mean(R) factored over the last two dims, decoupled decay by lr * weight_decay."""

    def __init__(self, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0,
                 maximize=False, machine_eps=2.0**-52):  # fmt: skip
        self.lr, self.c, self.d, self.wd, self.maximize = lr, beta2_decay, d, weight_decay, maximize
        self.eps1 = machine_eps if eps[0] is None else eps[0]
        self.eps2, self.t, self.state = eps[1], 0, None

    def step(self, params, grads):
        if self.state is None:
            self.state = [{"R": 0.0, "C": 0.0, "V": 0.0} for _ in params]
        self.t += 1
        lr = self.lr(self.t - 1) if callable(self.lr) else self.lr
        w = self.t**self.c  # 1 - beta2_t
        rho = min(lr, 1 / math.sqrt(self.t))
        rms = lambda a: math.sqrt(np.mean(np.square(a))) if np.size(a) else 0.0
        for p, g, s in zip(params, grads, self.state):
            g = -g if self.maximize else g
            alpha = max(self.eps2, rms(p)) * rho
            if p.ndim > 1:
                s["R"] = s["R"] + w * (np.mean(g * g, axis=-1, keepdims=True) - s["R"])
                s["C"] = s["C"] + w * (np.mean(g * g, axis=-2, keepdims=True) - s["C"])
                mean_r = np.maximum(np.mean(s["R"], axis=-2, keepdims=True), self.eps1)
                v = s["R"] @ s["C"] / mean_r
            else:
                s["V"] = s["V"] + w * (g * g - s["V"])
                v = s["V"]
            u = g / np.sqrt(np.maximum(v, self.eps1**2))
            p *= 1 - lr * self.wd
            p -= alpha / max(1.0, rms(u) / self.d) * u


def to_bfloat16(a: np.ndarray) -> np.ndarray:
    """a rounded to bfloat16 (nearest, ties to even: the top 16 bits of its float32), as float64."""
    bits = np.asarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


class Muon:
    """Muon (Jordan et al. 2024, https://kellerjordan.github.io/posts/muon/) as torch.optim.Muon:
    B = mu B + (1 - mu) g, nesterov M = (1 - mu) g + mu B; X = M / max(||M||_F, eps), transposed
    when tall; ns_steps of X <- a X + (b A + c A^2) X, A = X X^T; p <- p (1 - lr wd) - lr ratio X.
    `rounding` rounds after each operation (to_bfloat16 for torch's bfloat16 iteration)."""

    RATIOS: typing.ClassVar[dict] = {
        None: lambda r, c: math.sqrt(max(1, r / c)),
        "original": lambda r, c: math.sqrt(max(1, r / c)),
        "match_rms_adamw": lambda r, c: 0.2 * math.sqrt(max(r, c)),
        "spectral_unclamped": lambda r, c: math.sqrt(r / c),
    }

    def __init__(self, lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
                 ns_coefficients=(3.4445, -4.7750, 2.0315), eps=1e-7, ns_steps=5,
                 adjust_lr_fn=None, rounding=lambda a: a):  # fmt: skip
        self.lr, self.wd, self.mu, self.nesterov = lr, weight_decay, momentum, nesterov
        self.abc, self.eps, self.steps, self.round = ns_coefficients, eps, ns_steps, rounding
        self.ratio, self.t, self.state = self.RATIOS[adjust_lr_fn], 0, None

    def orthogonalize(self, m: np.ndarray) -> np.ndarray:
        a, b, c = self.abc
        rd = self.round
        x = rd(m.T if m.shape[0] > m.shape[1] else m)
        x = rd(x / max(rd(np.sqrt(np.sum(x * x))), self.eps))
        for _ in range(self.steps):
            gram = rd(x @ x.T)
            x = rd(a * x + rd(b * gram + c * gram @ gram) @ x)
        return x.T if m.shape[0] > m.shape[1] else x

    def step(self, params, grads):
        if self.state is None:
            self.state = [np.zeros_like(p) for p in params]
        lr = self.lr(self.t) if callable(self.lr) else self.lr
        self.t += 1
        for p, g, buf in zip(params, grads, self.state):
            buf += (1 - self.mu) * (g - buf)
            m = g + self.mu * (buf - g) if self.nesterov else buf
            p *= 1 - lr * self.wd
            p -= lr * self.ratio(*p.shape) * self.orthogonalize(m)
