"""Adadelta, ASGD and Rprop three ways: functional_nn, the numpy oracle, torch.optim (foreach=False).

Driven by one fixed stream of gradients (no feedback, so rounding is not amplified) over a small
mlp-shaped params tree, as tests/test_optim.py drives the other optimizers; then the state torch
exposes (ASGD's eta and ax, Rprop's step sizes) against ours, and the hyper-parameter checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torch.optim.lr_scheduler as lrs

import oracle.optim
from functional_nn import apply_updates, optim
from functional_nn._pytree import tree_leaves, tree_structure, tree_unflatten
from oracle.gradcheck import rel_error
from tests.helpers import assert_trees_close, default_dtype

TORCH = {"adadelta": torch.optim.Adadelta, "asgd": torch.optim.ASGD, "rprop": torch.optim.Rprop}
ORACLE = {"adadelta": oracle.optim.Adadelta, "asgd": oracle.optim.ASGD, "rprop": oracle.optim.Rprop}
STEPS = 200
SHAPES = [(5, 4), (5,), (3, 5), (3,)]  # the leaves of a 4 -> 5 -> 3 mlp's params
RTOL = {torch.float64: 1e-12, torch.float32: 1e-5}


@dataclass
class Case:
    """One config; `schedule` = (our schedule's name, its kwargs, torch scheduler factory), with
    the base lr in kwargs["lr"]; `tensor_lr` passes lr as a float64 0-d tensor to both."""

    name: str
    kwargs: dict = field(default_factory=dict)
    schedule: tuple | None = None
    tensor_lr: bool = False

    def __str__(self):
        extra = [f"{k}={v}" for k, v in self.kwargs.items()]
        extra += [self.schedule[0]] if self.schedule else []
        extra += ["tensor_lr"] if self.tensor_lr else []
        return "-".join([self.name, *extra])

    def lr(self, kind):
        if self.schedule:
            return getattr(kind, self.schedule[0])(**self.schedule[1])
        if self.tensor_lr and kind is optim.schedules:
            return torch.tensor(self.kwargs.get("lr", 1e-2), dtype=torch.float64)
        return self.kwargs.get("lr", ORACLE_DEFAULT_LR[self.name])


ORACLE_DEFAULT_LR = {"adadelta": 1.0, "asgd": 1e-2, "rprop": 1e-2}

CASES = [
    Case("adadelta"),
    Case("adadelta", dict(lr=0.5, rho=0.95, eps=1e-5)),
    Case("adadelta", dict(lr=0.5, weight_decay=0.1, maximize=True)),
    Case("asgd", dict(lr=0.05)),
    Case("asgd", dict(lr=0.05, lambd=0.01, alpha=0.5, t0=20)),
    Case("asgd", dict(lr=0.05, weight_decay=0.1, t0=0, maximize=True)),
    Case("rprop"),
    Case("rprop", dict(lr=0.05, etas=(0.3, 1.5), step_sizes=(1e-3, 0.2))),
    Case("rprop", dict(lr=1e-3, maximize=True)),
    Case(
        "adadelta",
        dict(lr=0.5),
        (
            "exponential_decay",
            dict(init_value=0.5, gamma=0.99),
            lambda o: lrs.ExponentialLR(o, 0.99),
        ),
    ),
    Case(
        "asgd",
        dict(lr=0.05, lambd=0.01, t0=50),
        (
            "step_decay",
            dict(init_value=0.05, step_size=30, gamma=0.5),
            lambda o: lrs.StepLR(o, 30, 0.5),
        ),
    ),
    Case("adadelta", dict(lr=0.5), tensor_lr=True),
    Case("asgd", dict(lr=0.05, lambd=0.01, t0=20), tensor_lr=True),
    Case("rprop", dict(lr=0.05), tensor_lr=True),
]


def mlp_tree(leaves):
    return [{"weight": leaves[0], "bias": leaves[1]}, {"weight": leaves[2], "bias": leaves[3]}]


def gradient_stream(dtype, seed=0):
    """(params0, [grads_1 .. grads_STEPS]): float64 trees rounded to `dtype`."""
    gen = torch.Generator().manual_seed(seed)
    draw = lambda: mlp_tree(
        [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).double() for s in SHAPES]
    )
    return draw(), [draw() for _ in range(STEPS)]


def run_ours(case, params, grads, dtype):
    """Params after each step, and the optimizer's states after each step."""
    kwargs = {**case.kwargs, "lr": case.lr(optim.schedules)}
    opt = getattr(optim, case.name)(**kwargs)
    cast = lambda tree: [{k: v.to(dtype) for k, v in layer.items()} for layer in tree]
    params = cast(params)
    with default_dtype(dtype):
        state = opt.init(params)
    trajectory, states = [], []
    for g in grads:
        updates, state = opt.update(cast(g), state, params)
        params = apply_updates(params, updates)
        trajectory.append(params)
        states.append(state)
    return trajectory, states


def run_torch(case, params, grads, dtype):
    """torch.optim's params after each step, and its per-param state after each step."""
    leaves = [t.to(dtype).clone().requires_grad_(True) for t in tree_leaves(params)]
    spec, kwargs = tree_structure(params), dict(case.kwargs)
    if case.tensor_lr:
        kwargs["lr"] = torch.tensor(kwargs["lr"], dtype=torch.float64)
    with default_dtype(dtype):
        opt = TORCH[case.name](leaves, **kwargs, foreach=False)
        scheduler = case.schedule[2](opt) if case.schedule else None
        trajectory, states = [], []
        for g in grads:
            for p, gi in zip(leaves, tree_leaves(g)):
                p.grad = gi.to(dtype).clone()
            opt.step()
            if scheduler is not None:
                scheduler.step()
            trajectory.append(tree_unflatten([p.detach().clone() for p in leaves], spec))
            states.append([{k: v.clone() for k, v in opt.state[p].items()} for p in leaves])
    return trajectory, states


def run_oracle(case, params, grads):
    kwargs = {**case.kwargs, "lr": case.lr(oracle.optim)}
    opt, arrays = ORACLE[case.name](**kwargs), [t.numpy().copy() for t in tree_leaves(params)]
    trajectory, spec = [], tree_structure(params)
    for g in grads:
        opt.step(arrays, [t.numpy() for t in tree_leaves(g)])
        trajectory.append(tree_unflatten([torch.from_numpy(a.copy()) for a in arrays], spec))
    return trajectory, opt


def find(state, state_type):
    """The one `state_type` inside an optimizer's (chain's) state."""
    is_it = lambda s: isinstance(s, state_type)
    (found,) = [s for s in tree_leaves(state, is_leaf=is_it) if is_it(s)]
    return found


def stacked(trajectory):
    """One (steps, *shape) tensor per leaf."""
    return [torch.stack(leaf).double() for leaf in zip(*map(tree_leaves, trajectory))]


@pytest.mark.parametrize("dtype", list(RTOL), ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_stream_three_ways(case, dtype):
    params, grads = gradient_stream(dtype)
    ours, _ = run_ours(case, params, grads, dtype)
    theirs, _ = run_torch(case, params, grads, dtype)
    reference, _ = run_oracle(case, params, grads)
    rtol = RTOL[dtype]
    assert_trees_close(stacked(ours), stacked(theirs), rtol, "functional_nn vs torch.optim")
    assert_trees_close(stacked(ours), stacked(reference), rtol, "functional_nn vs oracle")
    assert_trees_close(stacked(theirs), stacked(reference), rtol, "torch.optim vs oracle")
    flat = lambda tree: np.concatenate([t.numpy().ravel() for t in tree_leaves(tree)])
    assert rel_error(flat(reference[-1]), flat(params)) > 1e-3, "the stream moved nothing"


ASGD_CASES = [c for c in CASES if c.name == "asgd"]


@pytest.mark.parametrize("case", ASGD_CASES, ids=str)
def test_asgd_eta_and_average_match_torch_and_oracle(case):
    """current_lr is torch's eta (the next step's), averaged_params torch's ax, at every step."""
    params, grads = gradient_stream(torch.float64)
    _, states = run_ours(case, params, grads, torch.float64)
    _, torch_states = run_torch(case, params, grads, torch.float64)
    etas = [optim.current_lr(s).item() for s in states]
    torch_etas = [s[0]["eta"].item() for s in torch_states]
    assert_trees_close(np.array(etas), np.array(torch_etas), 1e-14, "eta vs torch's")
    for step in (0, 30, STEPS - 1):
        ax = tree_leaves(optim.averaged_params(states[step]))
        assert_trees_close(ax, [s["ax"] for s in torch_states[step]], 1e-12, f"ax at {step}")
    _, opt = run_oracle(case, params, grads)
    ax = tree_leaves(optim.averaged_params(states[-1]))
    assert_trees_close(ax, [s["ax"] for s in opt.state], 1e-12, "ax vs oracle")
    ours, _ = run_ours(case, params, grads, torch.float64)
    last = tree_leaves(ours[-1])
    moved_apart = rel_error(
        torch.cat([a.ravel() for a in ax]).numpy(), torch.cat([p.ravel() for p in last]).numpy()
    )
    if case.kwargs.get("t0", 1e6) < STEPS:  # averaging started: ax is not the last iterate
        assert moved_apart > 1e-4
    else:  # mu stays 1: ax is the last iterate
        assert moved_apart < 1e-15


@pytest.mark.parametrize("case", [c for c in CASES if c.name == "rprop"], ids=str)
def test_rprop_step_sizes_match_torch(case):
    """Our step sizes are in units of lr: times lr they are torch's, bounds reached included."""
    params, grads = gradient_stream(torch.float64)
    _, states = run_ours(case, params, grads, torch.float64)
    _, torch_states = run_torch(case, params, grads, torch.float64)
    lr = case.kwargs.get("lr", 1e-2)
    for step in (0, 1, 10, STEPS - 1):
        sizes = [s * lr for s in tree_leaves(find(states[step], optim.ScaleByRpropState).step_size)]
        expected = [s["step_size"] for s in torch_states[step]]
        assert_trees_close(sizes, expected, 1e-12, f"step sizes at {step}")
    low, high = case.kwargs.get("step_sizes", (1e-6, 50))
    every = torch.cat(
        [
            s.ravel()
            for state in states
            for s in tree_leaves(find(state, optim.ScaleByRpropState).step_size)
        ]
    )
    if high < 1:  # the config whose bounds bind: both are reached, none passed
        assert torch.isclose(every.max() * lr, torch.tensor(high, dtype=every.dtype), rtol=1e-14)
        assert torch.isclose(every.min() * lr, torch.tensor(low, dtype=every.dtype), rtol=1e-14)


def test_rprop_schedule_scales_its_steps():
    """With a schedule, each update is the constant-lr update times lr_t / lr_0 (torch's Rprop reads
    lr once, so this is our definition: the step sizes are in units of lr)."""
    params, grads = gradient_stream(torch.float64)
    constant = optim.rprop(0.05, step_sizes=(1e-3, 0.2))
    decayed = optim.rprop(optim.schedules.exponential_decay(0.05, 0.98), step_sizes=(1e-3, 0.2))
    states = [constant.init(params), decayed.init(params)]
    for t, g in enumerate(grads):
        (u, states[0]), (v, states[1]) = (
            constant.update(g, states[0], params),
            decayed.update(g, states[1], params),
        )
        expected = [x * 0.98**t for x in tree_leaves(u)]
        assert_trees_close(tree_leaves(v), expected, 1e-14, f"update {t}")


def test_rprop_gradient_at_the_step_size_bound_is_the_interior_one():
    """At s = max exactly, d(update)/d(lr) is that of the unclipped branch (torch.where's choice,
    not a kernel's): s does not depend on lr there, so the update -lr s sign(g) gives -s sign(g)."""
    lr = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    opt = optim.rprop(lr, etas=(0.5, 1.25), step_sizes=(1e-6, 1.25))
    params = {"w": torch.zeros(3, dtype=torch.float64)}
    g = {"w": torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)}
    state = opt.init(params)
    _, state = opt.update(g, state, params)
    updates, _ = opt.update(g, state, params)  # s = 1 * 1.25: exactly the bound
    (dlr,) = torch.autograd.grad(updates["w"].sum(), lr)
    assert dlr.item() == -1.25  # -1.25 * (sign(1) + sign(-2) + sign(3))


ERRORS = [
    ("adadelta", dict(lr=-1.0), ValueError, "lr"),
    ("adadelta", dict(rho=1.1), ValueError, "rho"),
    ("adadelta", dict(eps=-1e-6), ValueError, "eps"),
    ("adadelta", dict(weight_decay=-0.1), ValueError, "weight_decay"),
    ("adadelta", dict(maximize=1), TypeError, "maximize"),
    ("asgd", dict(lr=-1.0), ValueError, "lr"),
    ("asgd", dict(weight_decay=-0.5), ValueError, "weight_decay"),
    ("asgd", dict(t0="soon"), TypeError, "t0"),
    ("asgd", dict(lambd=float("nan")), ValueError, "lambd"),
    ("rprop", dict(lr=-1.0), ValueError, "lr"),
    ("rprop", dict(lr=0.0), ValueError, "lr"),
    ("rprop", dict(etas=(1.0, 0.5)), ValueError, "eta values"),
    ("rprop", dict(etas=(0.5,)), ValueError, "etas"),
    ("rprop", dict(step_sizes=(1.0, 0.5)), ValueError, r"step_sizes\[1\]"),
    ("rprop", dict(step_sizes=(-1.0, 1.0)), ValueError, r"step_sizes\[0\]"),
]


@pytest.mark.parametrize("name,kwargs,error,match", ERRORS, ids=lambda v: str(v))
def test_bad_hyper_parameters_are_rejected_when_built(name, kwargs, error, match):
    with pytest.raises(error, match=match):
        getattr(optim, name)(**kwargs)
