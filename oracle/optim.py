"""Optimizer steps in numpy, from their published formulas, in torch.optim's op order.

Each optimizer is a class with `step(params, grads)` that updates a list of float64 arrays in place
and keeps its own state: the plain imperative form, so it reads like the papers and torch's docs.
"""

from __future__ import annotations

import numpy as np


class SGD:
    """torch.optim.SGD: L2 decay, momentum with dampening (ignored on the first step), nesterov."""

    def __init__(self, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False):
        self.lr, self.momentum, self.dampening = lr, momentum, dampening
        self.weight_decay, self.nesterov, self.maximize = weight_decay, nesterov, maximize
        self.buf = None

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        if self.buf is None:
            self.buf = [None] * len(params)
        for i, (p, g) in enumerate(zip(params, grads)):
            g = -g if self.maximize else g
            if self.weight_decay:
                g = g + self.weight_decay * p
            if self.momentum:
                if self.buf[i] is None:
                    self.buf[i] = g.copy()
                else:
                    self.buf[i] = self.momentum * self.buf[i] + (1 - self.dampening) * g
                g = g + self.momentum * self.buf[i] if self.nesterov else self.buf[i]
            p -= self.lr * g


class Adam:
    """torch.optim.Adam (Kingma & Ba 2015, Algorithm 1, with eps outside the root as torch):
    bias corrections in Python floats, amsgrad on the raw second moment."""

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False):
        self.lr, self.b1, self.b2, self.eps = lr, betas[0], betas[1], eps
        self.weight_decay, self.amsgrad, self.maximize = weight_decay, amsgrad, maximize
        self.t = 0
        self.m = self.v = self.vmax = None

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        if self.m is None:
            self.m = [np.zeros_like(p) for p in params]
            self.v = [np.zeros_like(p) for p in params]
            self.vmax = [np.zeros_like(p) for p in params]
        self.t += 1
        bias_correction1 = 1 - self.b1**self.t
        bias_correction2 = 1 - self.b2**self.t
        for i, (p, g) in enumerate(zip(params, grads)):
            g = -g if self.maximize else g
            if self.weight_decay:
                g = g + self.weight_decay * p
            self.m[i] = self.m[i] + (1 - self.b1) * (g - self.m[i])
            self.v[i] = self.b2 * self.v[i] + (1 - self.b2) * g * g
            v = self.v[i]
            if self.amsgrad:
                self.vmax[i] = np.maximum(self.vmax[i], self.v[i])
                v = self.vmax[i]
            denom = np.sqrt(v) / np.sqrt(bias_correction2) + self.eps
            p -= (self.lr / bias_correction1) * self.m[i] / denom
