"""lbfgs three ways: functional_nn, the numpy oracle, torch.optim.LBFGS stepped with a closure.

L-BFGS re-evaluates the loss, so there is no fixed gradient stream: each test runs 10 real steps
(up to max_iter inner iterations each) on a convex least-squares problem and on a tanh mlp, with
configs whose trajectories are not chaotic: on the mlp, 20 inner iterations per step amplify a
rounding (here of params + (x - params) against torch's x) about a hundredfold per step, to 1e-8
after 10 steps with strong_wolfe, at the same iteration and evaluation counts; 4-5 iterations keep
it below 1e-12.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

import functional_nn as fnn
import oracle.losses
import oracle.networks
import oracle.optim_more
from functional_nn import optim
from functional_nn._pytree import tree_flatten, tree_leaves, tree_unflatten
from tests.helpers import assert_trees_close, to_numpy

STEPS = 10
TORCH_HAS_MAXIMIZE = "maximize" in inspect.signature(torch.optim.LBFGS).parameters
CONFIGS = [
    ("lsq", {}),
    ("lsq", {"line_search_fn": "strong_wolfe"}),
    ("lsq", {"lr": 0.5, "history_size": 2, "max_iter": 4, "line_search_fn": "strong_wolfe"}),
    ("lsq", {"history_size": 3, "max_iter": 5, "lr": 0.8, "tolerance_grad": 1e-6}),
    ("mlp", {"line_search_fn": "strong_wolfe", "max_iter": 5}),
    ("mlp", {"max_iter": 4}),
    ("mlp", {"max_iter": 4, "line_search_fn": "strong_wolfe", "history_size": 3}),
    ("mlp", {"lr": 0.5, "history_size": 2, "max_iter": 4, "line_search_fn": "strong_wolfe"}),
]


def problem(name: str, dtype: torch.dtype):
    """(params, loss_fn(params) -> 0-d tensor, numpy f(flat x) -> (loss, flat grad), unflatten)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 6, generator=g, dtype=torch.float64)
    sizes, activation = ([6, 3], "identity") if name == "lsq" else ([6, 4, 2], "tanh")
    y = torch.randn(32, sizes[-1], generator=g, dtype=torch.float64)
    net = fnn.mlp(sizes, activation=activation)
    params = fnn._pytree.tree_map(lambda t: t.to(dtype), net.init(1))
    x_t, y_t = x.to(dtype), y.to(dtype)
    loss_fn = lambda p: fnn.losses.mse(net.apply(p, x_t), y_t)
    spec = tree_flatten(params)[1]
    shapes = [t.shape for t in tree_leaves(params)]

    def unflatten(flat):
        parts = np.split(flat, np.cumsum([int(np.prod(s)) for s in shapes])[:-1])
        return tree_unflatten([a.reshape(s) for a, s in zip(parts, shapes)], spec)

    def f(flat):
        loss, grads = oracle.networks.loss_and_grads(
            unflatten(flat), x.numpy(), y.numpy(), oracle.losses.mse, activation
        )
        return loss, np.concatenate([a.ravel() for a in tree_leaves(grads)])

    return params, loss_fn, f, unflatten


def run_ours(opt, params, loss_fn, steps=STEPS):
    state = opt.init(params)
    for _ in range(steps):
        grads, value = torch.func.grad_and_value(loss_fn)(params)
        updates, state = opt.update(grads, state, params, value_fn=loss_fn, value=value)
        params = optim.apply_updates(params, updates)
    return params, state


def run_torch(kwargs, params, loss_fn, steps=STEPS):
    leaves, spec = tree_flatten(params)
    leaves = [t.clone().requires_grad_() for t in leaves]
    tree = tree_unflatten(leaves, spec)
    opt = torch.optim.LBFGS(leaves, **kwargs)

    def closure():
        opt.zero_grad()
        loss = loss_fn(tree)
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    return fnn._pytree.tree_map(lambda t: t.detach(), tree), opt.state[leaves[0]]


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=lambda c: str(c))
def test_lbfgs_matches_torch_and_oracle_float64(name, kwargs):
    params, loss_fn, f, unflatten = problem(name, torch.float64)
    ours, state = run_ours(optim.lbfgs(**kwargs), params, loss_fn)
    theirs, torch_state = run_torch(kwargs, params, loss_fn)
    assert_trees_close(ours, theirs, 1e-10, "lbfgs vs torch")
    # The same iterations and evaluations, not only nearby params.
    assert (int(state.n_iter), int(state.func_evals)) == (
        torch_state["n_iter"],
        torch_state["func_evals"],
    )
    flat = np.concatenate([a.ravel() for a in tree_leaves(to_numpy(params))])
    reference = oracle.optim_more.LBFGS(**kwargs)
    for _ in range(STEPS):
        reference.step(flat, f)
    assert_trees_close(ours, unflatten(flat), 1e-8, "lbfgs vs oracle")
    assert reference.n_iter == int(state.n_iter)


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_lbfgs_float32_close_to_torch(line_search_fn):
    kwargs = {"max_iter": 4, "line_search_fn": line_search_fn}
    params, loss_fn, _, _ = problem("mlp", torch.float32)
    ours, _ = run_ours(optim.lbfgs(**kwargs), params, loss_fn, steps=5)
    theirs, _ = run_torch(kwargs, params, loss_fn, steps=5)
    assert_trees_close(ours, theirs, 1e-4, "lbfgs float32 vs torch")


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_lbfgs_maximize_is_minimizing_the_negated_loss(line_search_fn):
    params, loss_fn, _, _ = problem("mlp", torch.float64)
    kwargs = {"max_iter": 4, "line_search_fn": line_search_fn}
    up, _ = run_ours(optim.lbfgs(**kwargs, maximize=True), params, lambda p: -loss_fn(p))
    down, _ = run_ours(optim.lbfgs(**kwargs), params, loss_fn)
    assert_trees_close(up, down, 1e-12, "maximize")
    if TORCH_HAS_MAXIMIZE:  # torch >= 2.14
        theirs, _ = run_torch({**kwargs, "maximize": True}, params, lambda p: -loss_fn(p))
        assert_trees_close(up, theirs, 1e-10, "maximize vs torch")


def test_lbfgs_tensor_lr_and_schedule_match_torch():
    params, loss_fn, _, _ = problem("lsq", torch.float64)
    ours, _ = run_ours(optim.lbfgs(lr=torch.tensor(0.3), max_iter=3), params, loss_fn)
    theirs, _ = run_torch({"lr": torch.tensor(0.3), "max_iter": 3}, params, loss_fn)
    assert_trees_close(ours, theirs, 1e-12, "tensor lr")
    scheduled, _ = run_ours(
        optim.lbfgs(lr=optim.schedules.constant(0.3), max_iter=3), params, loss_fn
    )
    theirs, _ = run_torch({"lr": 0.3, "max_iter": 3}, params, loss_fn)
    assert_trees_close(scheduled, theirs, 1e-12, "schedule")


def test_lbfgs_is_pure_and_its_state_round_trips(tmp_path):
    params, loss_fn, _, _ = problem("mlp", torch.float64)
    before = fnn._pytree.tree_map(torch.clone, params)
    opt = optim.lbfgs(max_iter=3, history_size=4)
    _, state = run_ours(opt, params, loss_fn, steps=3)
    assert_trees_close(params, before, 0.0, "params after update")
    saved = fnn._pytree.tree_map(torch.clone, state)
    grads, value = torch.func.grad_and_value(loss_fn)(params)
    once, _ = opt.update(grads, state, params, value_fn=loss_fn, value=value)
    assert_trees_close(state, saved, 0.0, "state after update")
    torch.save(state, tmp_path / "s.pt")
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)
    again, _ = opt.update(grads, loaded, params, value_fn=loss_fn)  # value computed by value_fn
    assert_trees_close(again, once, 0.0, "update from a loaded state")
    assert state.old_dirs.shape == (4, sum(t.numel() for t in tree_leaves(params)))


BAD = [
    (dict(lr=-1.0), ValueError, "Invalid lr"),
    (dict(max_iter=0), ValueError, "Invalid max_iter"),
    (dict(max_iter=2.5), TypeError, "max_iter must be an int"),
    (dict(max_eval=0), ValueError, "Invalid max_eval"),
    (dict(history_size=0), ValueError, "Invalid history_size"),
    (dict(tolerance_grad=-1.0), ValueError, "Invalid tolerance_grad"),
    (dict(tolerance_change=float("nan")), ValueError, "Invalid tolerance_change"),
    (dict(line_search_fn="armijo"), ValueError, "Invalid line_search_fn: 'armijo'"),
    (dict(maximize=1), TypeError, "maximize must be a bool"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD, ids=lambda b: str(b))
def test_lbfgs_rejects_bad_hyperparameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        optim.lbfgs(**kwargs)


def test_torch_rejects_the_learning_rate_with_the_same_type():
    with pytest.raises(ValueError):
        torch.optim.LBFGS([torch.zeros(2, requires_grad=True)], lr=-1.0)


def test_lbfgs_update_needs_value_fn_and_params():
    params, loss_fn, _, _ = problem("lsq", torch.float64)
    opt = optim.lbfgs()
    state = opt.init(params)
    grads = torch.func.grad(loss_fn)(params)
    with pytest.raises(ValueError, match="lbfgs needs value_fn"):
        opt.update(grads, state, params)
    with pytest.raises(ValueError, match="lbfgs needs params"):
        opt.update(grads, state, value_fn=loss_fn)
    with pytest.raises(TypeError, match="all of one dtype"):
        opt.init([torch.zeros(2), torch.zeros(2, dtype=torch.float64)])
    small = opt.init([torch.zeros(2, dtype=torch.float64)])
    with pytest.raises(ValueError, match="state does not fit these params"):
        opt.update(grads, small, params, value_fn=loss_fn)


def test_lbfgs_in_fit():
    """fit passes value and value_fn to a GradientTransformationExtraArgs: lbfgs trains in fit."""
    params, loss_fn, _, _ = problem("lsq", torch.float64)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 6, generator=g, dtype=torch.float64)
    y = torch.randn(32, 3, generator=g, dtype=torch.float64)
    net = fnn.mlp([6, 3], activation="identity")
    result = fnn.fit(params, x, y, optim.lbfgs(max_iter=3), model=net, loss=fnn.losses.mse, steps=4)
    theirs, _ = run_torch({"max_iter": 3}, params, loss_fn, steps=4)
    assert_trees_close(result.params, theirs, 1e-10, "fit with lbfgs")
