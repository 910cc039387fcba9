"""Optimizer steps in numpy, from their published formulas, in torch.optim's op order.

Each optimizer is a class with `step(params, grads)` that updates a list of float64 arrays in place
and keeps its own state: the plain imperative form, so it reads like the papers and the algorithm
boxes of torch.optim's documentation (https://pytorch.org/docs/stable/optim.html), which fix the
conventions the papers leave open (where eps goes, how weight decay enters, dampening).

`lr` is a number or a schedule `t -> lr` (t = steps done before this one; see the schedules below).
"""

from __future__ import annotations

import math

import numpy as np


class _Optimizer:
    """The loop every optimizer shares: count the step, read the lr, then per parameter
    negate the gradient when maximizing and add L2 decay (torch's first two steps)."""

    decoupled = False

    def __init__(self, lr, weight_decay=0.0, maximize=False):
        self.lr, self.weight_decay, self.maximize = lr, weight_decay, maximize
        self.t = 0
        self.state = None

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        if self.state is None:
            self.state = [self.init_state(p) for p in params]
        lr = self.lr(self.t) if callable(self.lr) else self.lr
        self.t += 1
        for p, g, s in zip(params, grads, self.state):
            g = -g if self.maximize else g
            if self.weight_decay and self.decoupled:
                p *= 1 - lr * self.weight_decay
            elif self.weight_decay:
                g = g + self.weight_decay * p
            p -= lr * self.direction(g, s)

    def init_state(self, p: np.ndarray) -> dict:
        return {}

    def direction(self, g: np.ndarray, s: dict) -> np.ndarray:
        raise NotImplementedError


class SGD(_Optimizer):
    """SGD with momentum (Sutskever et al. 2013, torch's form): b_1 = g_1 (dampening ignored),
    b_t = mu b_{t-1} + (1 - dampening) g_t; nesterov: g_t + mu b_t."""

    def __init__(
        self, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False
    ):
        super().__init__(lr, weight_decay, maximize)
        self.momentum, self.dampening, self.nesterov = momentum, dampening, nesterov

    def direction(self, g, s):
        if not self.momentum:
            return g
        s["b"] = g.copy() if "b" not in s else self.momentum * s["b"] + (1 - self.dampening) * g
        return g + self.momentum * s["b"] if self.nesterov else s["b"]


class RMSprop(_Optimizer):
    """RMSprop (Hinton, Neural Networks for ML, lecture 6e; centered: Graves 2013, eq. 38-41):
    v_t = alpha v + (1 - alpha) g^2; eps added after the root; optional momentum buffer."""

    def __init__(
        self,
        lr=1e-2,
        alpha=0.99,
        eps=1e-8,
        weight_decay=0.0,
        momentum=0.0,
        centered=False,
        maximize=False,
    ):
        super().__init__(lr, weight_decay, maximize)
        self.alpha, self.eps, self.momentum, self.centered = alpha, eps, momentum, centered

    def init_state(self, p):
        return {"v": np.zeros_like(p), "m": np.zeros_like(p), "b": np.zeros_like(p)}

    def direction(self, g, s):
        s["v"] = self.alpha * s["v"] + (1 - self.alpha) * g * g
        v = s["v"]
        if self.centered:
            s["m"] = self.alpha * s["m"] + (1 - self.alpha) * g
            v = v - s["m"] ** 2
        d = g / (np.sqrt(v) + self.eps)
        if self.momentum > 0:
            s["b"] = self.momentum * s["b"] + d
            return s["b"]
        return d


class Adagrad(_Optimizer):
    """Adagrad (Duchi, Hazan & Singer 2011): s_t = s_{t-1} + g^2, step lr / (1 + (t - 1) lr_decay)
    times g / (sqrt(s_t) + eps)."""

    def __init__(
        self,
        lr=1e-2,
        lr_decay=0.0,
        weight_decay=0.0,
        initial_accumulator_value=0.0,
        eps=1e-10,
        maximize=False,
    ):
        super().__init__(lr, weight_decay, maximize)
        self.lr_decay, self.init_value, self.eps = lr_decay, initial_accumulator_value, eps

    def init_state(self, p):
        return {"s": np.full_like(p, self.init_value)}

    def direction(self, g, s):
        s["s"] = s["s"] + g * g
        return g / (np.sqrt(s["s"]) + self.eps) / (1 + (self.t - 1) * self.lr_decay)


class Adam(_Optimizer):
    """Adam (Kingma & Ba 2015, Algorithm 1; eps outside the root as torch): bias-corrected moments;
    amsgrad (Reddi et al. 2018) takes the max of the raw second moment, before its correction."""

    def __init__(
        self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False
    ):
        super().__init__(lr, weight_decay, maximize)
        (self.b1, self.b2), self.eps, self.amsgrad = betas, eps, amsgrad

    def init_state(self, p):
        return {"m": np.zeros_like(p), "v": np.zeros_like(p), "vmax": np.zeros_like(p)}

    def direction(self, g, s):
        s["m"] = self.b1 * s["m"] + (1 - self.b1) * g
        s["v"] = self.b2 * s["v"] + (1 - self.b2) * g * g
        s["vmax"] = np.maximum(s["vmax"], s["v"])
        v = s["vmax"] if self.amsgrad else s["v"]
        m_hat = s["m"] / (1 - self.b1**self.t)
        return m_hat / (np.sqrt(v) / math.sqrt(1 - self.b2**self.t) + self.eps)


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019, Algorithm 2): p <- p (1 - lr wd), then Adam's step."""

    decoupled = True

    def __init__(
        self,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=1e-2,
        amsgrad=False,
        maximize=False,
    ):
        super().__init__(lr, betas, eps, weight_decay, amsgrad, maximize)


class Adamax(_Optimizer):
    """Adamax (Kingma & Ba 2015, Algorithm 2): u_t = max(b2 u, |g| + eps) (eps as torch),
    step m_t / u_t / (1 - b1^t)."""

    def __init__(self, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, maximize=False):
        super().__init__(lr, weight_decay, maximize)
        (self.b1, self.b2), self.eps = betas, eps

    def init_state(self, p):
        return {"m": np.zeros_like(p), "u": np.zeros_like(p)}

    def direction(self, g, s):
        s["m"] = self.b1 * s["m"] + (1 - self.b1) * g
        s["u"] = np.maximum(self.b2 * s["u"], np.abs(g) + self.eps)
        return s["m"] / s["u"] / (1 - self.b1**self.t)


class NAdam(_Optimizer):
    """NAdam (Dozat 2016, with torch's momentum schedule mu_t = b1 (1 - 0.96^(t psi) / 2)):
    a Nesterov step (1 - mu_t) / (1 - prod mu) g + mu_{t+1} / (1 - prod mu * mu_{t+1}) m
    over sqrt(v / (1 - b2^t)) + eps."""

    def __init__(
        self,
        lr=2e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
        momentum_decay=4e-3,
        decoupled_weight_decay=False,
        maximize=False,
    ):
        super().__init__(lr, weight_decay, maximize)
        (self.b1, self.b2), self.eps, self.psi = betas, eps, momentum_decay
        self.decoupled = decoupled_weight_decay
        self.mu_product = 1.0

    def init_state(self, p):
        return {"m": np.zeros_like(p), "v": np.zeros_like(p)}

    def step(self, params, grads):
        # The momentum schedule is shared by all parameters: advance its product once per step.
        self.mu_product *= self._mu(self.t + 1)
        super().step(params, grads)

    def _mu(self, t):
        return self.b1 * (1 - 0.5 * 0.96 ** (t * self.psi))

    def direction(self, g, s):
        t = self.t
        s["m"] = self.b1 * s["m"] + (1 - self.b1) * g
        s["v"] = self.b2 * s["v"] + (1 - self.b2) * g * g
        denom = np.sqrt(s["v"] / (1 - self.b2**t)) + self.eps
        mu, mu_next = self._mu(t), self._mu(t + 1)
        grad_part = (1 - mu) / (1 - self.mu_product) * g
        momentum_part = mu_next / (1 - self.mu_product * mu_next) * s["m"]
        return (grad_part + momentum_part) / denom


class RAdam(_Optimizer):
    """RAdam (Liu et al. 2020, Algorithm 2; eps outside the root as torch): rectified adaptive step
    when rho_t > 5, plain bias-corrected momentum before."""

    def __init__(
        self,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
        decoupled_weight_decay=False,
        maximize=False,
    ):
        super().__init__(lr, weight_decay, maximize)
        (self.b1, self.b2), self.eps = betas, eps
        self.decoupled = decoupled_weight_decay

    def init_state(self, p):
        return {"m": np.zeros_like(p), "v": np.zeros_like(p)}

    def direction(self, g, s):
        t, b1, b2 = self.t, self.b1, self.b2
        s["m"] = b1 * s["m"] + (1 - b1) * g
        s["v"] = b2 * s["v"] + (1 - b2) * g * g
        m_hat = s["m"] / (1 - b1**t)
        rho_inf = 2 / (1 - b2) - 1
        rho_t = rho_inf - 2 * t * b2**t / (1 - b2**t)
        if rho_t <= 5:
            return m_hat
        rect = math.sqrt(
            (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
        )
        return m_hat * rect * math.sqrt(1 - b2**t) / (np.sqrt(s["v"]) + self.eps)


class Adadelta(_Optimizer):
    """Adadelta (Zeiler 2012, Algorithm 1; lr scales the step, as in torch):
    v = rho v + (1 - rho) g^2, d = sqrt(u + eps) / sqrt(v + eps) g, u = rho u + (1 - rho) d^2."""

    def __init__(self, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=False):
        super().__init__(lr, weight_decay, maximize)
        self.rho, self.eps = rho, eps

    def init_state(self, p):
        return {"v": np.zeros_like(p), "u": np.zeros_like(p)}

    def direction(self, g, s):
        rho, eps = self.rho, self.eps
        s["v"] = rho * s["v"] + (1 - rho) * g * g
        d = np.sqrt(s["u"] + eps) / np.sqrt(s["v"] + eps) * g
        s["u"] = rho * s["u"] + (1 - rho) * d * d
        return d


class ASGD(_Optimizer):
    """Averaged SGD (Polyak & Juditsky 1992), torch's algorithm box: p = p (1 - lambd eta) - eta g,
    ax = p if mu = 1 else ax + mu (p - ax); then eta = lr / (1 + lambd lr t)^alpha and
    mu = 1 / max(1, t - t0), from the lr of the step just done (eta starts at lr, mu at 1)."""

    def __init__(self, lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0.0, maximize=False):
        super().__init__(lr, weight_decay, maximize)
        self.lambd, self.alpha, self.t0 = lambd, alpha, t0
        self.eta = self.mu = None

    def init_state(self, p):
        return {"ax": np.zeros_like(p)}

    def step(self, params, grads):
        lr = self.lr(self.t) if callable(self.lr) else self.lr
        if self.state is None:
            self.state, self.eta, self.mu = [self.init_state(p) for p in params], lr, 1.0
        self.t += 1
        for p, g, s in zip(params, grads, self.state):
            g = -g if self.maximize else g
            g = g + self.weight_decay * p
            p[...] = p * (1 - self.lambd * self.eta) - self.eta * g
            s["ax"] = p.copy() if self.mu == 1 else s["ax"] + self.mu * (p - s["ax"])
        self.eta = lr / (1 + self.lambd * lr * self.t) ** self.alpha
        self.mu = 1 / max(1, self.t - self.t0)


class Rprop(_Optimizer):
    """Rprop (Riedmiller & Braun 1993), torch's variant: per entry, s = s * etaplus where
    g g_prev > 0, s * etaminus where < 0, clipped to step_sizes; g = 0 where g g_prev < 0 (and
    kept as g_prev); p = p - sign(g) s. s starts at lr."""

    def __init__(self, lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50), maximize=False):
        super().__init__(lr, 0.0, maximize)
        self.etas, self.step_sizes = etas, step_sizes

    def step(self, params, grads):
        lr = self.lr(self.t) if callable(self.lr) else self.lr
        if self.state is None:
            self.state = [{"prev": np.zeros_like(p), "s": np.full_like(p, lr)} for p in params]
        self.t += 1
        (etaminus, etaplus), (low, high) = self.etas, self.step_sizes
        for p, g, s in zip(params, grads, self.state):
            g = -g if self.maximize else g
            c = g * s["prev"]
            s["s"] = np.clip(
                s["s"] * np.where(c > 0, etaplus, np.where(c < 0, etaminus, 1)), low, high
            )
            g = np.where(c < 0, 0.0, g)
            p -= np.sign(g) * s["s"]
            s["prev"] = g


def clip_grad_norm(grads: list[np.ndarray], max_norm: float) -> list[np.ndarray]:
    """g * min(1, max_norm / (||g|| + 1e-6)), ||g|| the 2-norm of all entries of all grads
    (torch.nn.utils.clip_grad_norm_'s definition, its 1e-6 included)."""
    total = math.sqrt(sum(float(np.sum(g * g)) for g in grads))
    return [g * min(1.0, max_norm / (total + 1e-6)) for g in grads]


def clip_grad_value(grads: list[np.ndarray], clip_value: float) -> list[np.ndarray]:
    """Every entry clamped into [-clip_value, clip_value]."""
    return [np.clip(g, -clip_value, clip_value) for g in grads]


# Schedules t -> lr, t = updates done; closed forms from torch.optim.lr_scheduler's documentation.


def constant(value):
    return lambda t: value


def step_decay(init_value, step_size, gamma=0.1):
    """StepLR: init gamma^floor(t / step_size)."""
    return lambda t: init_value * gamma ** (t // step_size)


def exponential_decay(init_value, gamma):
    """ExponentialLR: init gamma^t."""
    return lambda t: init_value * gamma**t


def cosine_decay(init_value, decay_steps, end_value=0.0):
    """CosineAnnealingLR (SGDR, Loshchilov & Hutter 2017, eq. 5, one cycle), held at the end."""

    def schedule(t):
        return (
            end_value
            + (init_value - end_value)
            * (1 + math.cos(math.pi * min(t, decay_steps) / decay_steps))
            / 2
        )

    return schedule


def linear(init_value, end_value, transition_steps):
    """LinearLR: from init to end over transition_steps, then held."""
    return lambda t: (
        init_value + (end_value - init_value) * min(t, transition_steps) / transition_steps
    )


def join(schedules, boundaries):
    """SequentialLR: schedules[i] from boundaries[i - 1] on, restarted at 0 there."""

    def schedule(t):
        i = sum(t >= b for b in boundaries)
        return schedules[i](t - (boundaries[i - 1] if i else 0))

    return schedule


def warmup_cosine_decay(init_value, peak_value, warmup_steps, decay_steps, end_value=0.0):
    """Linear warmup to peak over warmup_steps, then cosine decay to end at decay_steps."""
    cosine = cosine_decay(peak_value, decay_steps - warmup_steps, end_value)
    if not warmup_steps:
        return cosine
    return join([linear(init_value, peak_value, warmup_steps), cosine], [warmup_steps])
