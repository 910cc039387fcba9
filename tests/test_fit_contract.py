"""The optimizer contract inside fit and fit_ensemble: a transform's init runs once on the user's
params tree and its update sees the user's trees, exactly as in a hand-written loop; an
ExtraArgs transform gets value= and value_fn=, and only it does."""

from __future__ import annotations

import pytest
import torch

import functional_nn as fnn
from functional_nn import optim
from functional_nn._pytree import tree_index, tree_leaves, tree_map, tree_structure
from functional_nn.data import batches
from functional_nn.optim.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    apply_updates,
)
from tests.helpers import assert_trees_close

N, D_IN, H, D_OUT = 20, 5, 8, 3
NET = fnn.mlp([D_IN, H, D_OUT])
STEPS, BATCH = 9, 6  # minibatches, shuffled: the short last batch and a new epoch are crossed
K = 3  # models of the ensembles


def problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D_IN, generator=g, dtype=torch.float64)
    y = torch.randn(N, D_OUT, generator=g, dtype=torch.float64)
    return NET.init(seed, dtype=torch.float64), x, y


def recording_momentum(log: list, lr: float = 1e-2, beta: float = 0.9) -> GradientTransformation:
    """Heavy-ball momentum written by hand over trees, logging the trees init and update get."""

    def init(params):
        log.append(("init", tree_structure(params), tree_leaves(params)[0].device.type))
        return {"velocity": tree_map(torch.zeros_like, params)}

    def update(grads, state, params=None):
        log.append(("update", tree_structure(grads), tree_structure(state), tree_structure(params)))
        velocity = tree_map(lambda v, g: beta * v + g, state["velocity"], grads)
        return tree_map(lambda v: -lr * v, velocity), {"velocity": velocity}

    return GradientTransformation(init, update)


def hand_loop(params, x, y, opt, steps, seed=0, state=None, extra=False):
    """fit's work written out: the same batches, torch.func.grad, opt.update, apply_updates."""
    state = opt.init(params) if state is None else state
    losses = []
    data = batches(x, y, BATCH, True, seed)
    for _ in range(steps):
        xb, yb = next(data)
        value_fn = lambda p, xb=xb, yb=yb: fnn.sse(NET.apply(p, xb), yb)
        grads, value = torch.func.grad_and_value(value_fn)(params)
        kw = dict(value=value, value_fn=value_fn) if extra else {}
        updates, state = opt.update(grads, state, params, **kw)
        params = apply_updates(params, updates)
        losses.append(value)
    return params, state, torch.stack(losses)


def test_a_custom_transform_gives_in_fit_what_it_gives_by_hand():
    params, x, y = problem()
    fit_log, hand_log = [], []
    r = fnn.fit(params, x, y, recording_momentum(fit_log), model=NET, steps=STEPS, batch_size=BATCH)
    p, s, losses = hand_loop(params, x, y, recording_momentum(hand_log), STEPS)
    assert_trees_close(r.params, p, 0.0, "params")
    assert_trees_close(r.opt_state, s, 0.0, "opt_state")
    assert torch.equal(r.losses, losses)
    assert fit_log == hand_log  # the same trees: init's and every update's
    spec = tree_structure(params)
    assert fit_log[0] == ("init", spec, "cpu")
    assert [entry[0] for entry in fit_log] == ["init"] + ["update"] * STEPS  # init runs once
    assert fit_log[1] == ("update", spec, tree_structure({"velocity": params}), spec)
    assert tree_structure(r.opt_state) == tree_structure({"velocity": params})


def decay_weights_only(weight_decay: float) -> GradientTransformation:
    """updates = grads + weight_decay * params for the "weight" leaves, grads alone for "bias":
    a transform keyed by the params' dict keys, which fit's flat lists used to break."""

    def update(grads, state, params=None):
        decayed = [
            {k: g + weight_decay * layer[k] if k == "weight" else g for k, g in grad.items()}
            for grad, layer in zip(grads, params)
        ]
        return decayed, state

    return GradientTransformation(lambda params: (), update)


def test_weight_decay_on_weights_only_matches_torch_param_groups():
    params, x, y = problem(1)
    lr, wd, steps = 1e-3, 0.5, 12
    opt = optim.chain(decay_weights_only(wd), optim.sgd(lr))
    r = fnn.fit(params, x, y, opt, model=NET, steps=steps)
    # torch.optim.SGD with two param groups: weight_decay on the weights, none on the biases.
    leaves = [t.clone().requires_grad_(True) for t in tree_leaves(params)]
    weights, biases = leaves[0::2], leaves[1::2]
    groups = [{"params": weights, "weight_decay": wd}, {"params": biases, "weight_decay": 0.0}]
    torch_opt = torch.optim.SGD(groups, lr, foreach=False)
    for _ in range(steps):
        torch_opt.zero_grad()
        shaped = [{"weight": w, "bias": b} for w, b in zip(weights, biases)]
        fnn.sse(NET.apply(shaped, x), y).backward()
        torch_opt.step()
    expected = [{"weight": w.detach(), "bias": b.detach()} for w, b in zip(weights, biases)]
    assert_trees_close(r.params, expected, 1e-13)
    # and the biases were not decayed: fit without decay moves them differently
    plain = fnn.fit(params, x, y, optim.sgd(lr), model=NET, steps=steps)
    assert not torch.equal(plain.params[0]["weight"], r.params[0]["weight"])


def recording_line_search(log: list | None, lr: float = 1e-2) -> GradientTransformationExtraArgs:
    """A step of -lr * grads, halved when it would not lower value_fn below value (a one-step
    backtracking line search); logs the value it gets (unless log is None: under vmap it is a
    batched tensor, which must not leave the step)."""

    def update(grads, state, params=None, *, value, value_fn, **extra_args):
        if log is not None:
            log.append(value)
        full = tree_map(lambda g: -lr * g, grads)
        better = value_fn(apply_updates(params, full)) < value
        return tree_map(lambda u: torch.where(better, u, 0.5 * u), full), state

    return GradientTransformationExtraArgs(lambda params: (), update)


def strict(update_log: list) -> GradientTransformation:
    """The identity, with an update that takes no extra keyword arguments (a TypeError if given)."""

    def update(grads, state, params=None):
        update_log.append(True)
        return grads, state

    return GradientTransformation(lambda params: (), update)


def test_an_extra_args_transform_gets_the_steps_loss_and_its_loss_function():
    params, x, y = problem(2)
    values, calls = [], []
    opt = optim.chain(strict(calls), recording_line_search(values))
    r = fnn.fit(params, x, y, opt, model=NET, steps=STEPS, batch_size=BATCH)
    assert isinstance(opt, GradientTransformationExtraArgs)
    assert len(values) == STEPS and len(calls) == STEPS  # the plain transform got no extras
    assert torch.equal(torch.stack(values), r.losses)  # value: the step's loss, before its update
    hand_values = []
    p, _, losses = hand_loop(params, x, y, recording_line_search(hand_values), STEPS, extra=True)
    assert_trees_close(r.params, p, 0.0, "params")
    assert torch.equal(torch.stack(hand_values), losses)


def test_the_compiled_step_passes_value_too():
    params, x, y = problem(3)
    opt = recording_line_search([])
    eager = fnn.fit(params, x, y, opt, model=NET, steps=4, batch_size=BATCH)
    compiled = fnn.fit(params, x, y, opt, model=NET, steps=4, batch_size=BATCH, compile="default")
    assert_trees_close(compiled.params, eager.params, 1e-12)
    assert_trees_close(compiled.losses, eager.losses, 1e-12)


def test_resuming_passes_the_state_back_in_the_users_tree():
    params, x, y = problem(4)
    log = []
    opt = recording_momentum(log)
    whole = fnn.fit(params, x, y, opt, model=NET, steps=STEPS, batch_size=BATCH)
    first = fnn.fit(params, x, y, opt, model=NET, steps=4, batch_size=BATCH)
    rest = fnn.fit(
        first.params,
        x,
        y,
        opt,
        model=NET,
        steps=STEPS - 4,
        batch_size=BATCH,
        opt_state=first.opt_state,
        start_step=first.steps,
    )
    assert_trees_close(rest.params, whole.params, 0.0, "params")
    assert_trees_close(rest.opt_state, whole.opt_state, 0.0, "opt_state")
    # The resumed fit made no state of its own: its one init ran on meta tensors (no data), to
    # check opt_state's structure before any work.
    assert [e[2] for e in log if e[0] == "init"] == ["cpu", "cpu", "meta"]
    adam = fnn.fit(params, x, y, optim.adam(1e-2), model=NET, steps=2)
    assert tree_structure(adam.opt_state[0].mu) == tree_structure(params)


def test_fit_ensemble_gives_each_model_its_own_trees():
    stacked = [problem(seed)[0] for seed in range(K)]
    _, x, y = problem()
    log = []
    r = fnn.fit_ensemble(
        stacked, x, y, recording_momentum(log), model=NET, steps=STEPS, batch_size=BATCH
    )
    spec = tree_structure(stacked[0])
    inits = [e for e in log if e[0] == "init"]
    assert inits == [("init", spec, "cpu")] * K  # once per model, on that model's tree
    updates = [e for e in log if e[0] == "update"]
    assert updates and all(e == updates[0] for e in updates)
    assert updates[0] == ("update", spec, tree_structure({"velocity": stacked[0]}), spec)
    for k in range(K):
        one = fnn.fit(
            stacked[k], x, y, recording_momentum([]), model=NET, steps=STEPS, batch_size=BATCH
        )
        assert_trees_close(tree_index(r.params, k), one.params, 1e-12, f"model {k}")


@pytest.mark.parametrize("compile", [False, "default"])
def test_fit_ensemble_passes_value_to_extra_args_transforms(compile):
    stacked = [problem(seed)[0] for seed in range(K)]
    _, x, y = problem()
    opt = optim.chain(strict([]), recording_line_search(None))
    r = fnn.fit_ensemble(stacked, x, y, opt, model=NET, steps=4, batch_size=BATCH, compile=compile)
    for k in range(K):
        one = fnn.fit(stacked[k], x, y, opt, model=NET, steps=4, batch_size=BATCH)
        assert_trees_close(tree_index(r.params, k), one.params, 1e-12, f"model {k}")
        assert_trees_close(r.losses[:, k], one.losses, 1e-12, f"model {k}'s losses")


def test_a_loss_by_name_trains_as_the_loss_itself():
    net = fnn.mlp([3, 4, 2])
    params = net.init(0, dtype=torch.float64)
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    by_name = fnn.fit(params, x, y, fnn.sgd(0.1), model=net, loss="cross_entropy", steps=5)
    by_callable = fnn.fit(params, x, y, fnn.sgd(0.1), model=net, loss=fnn.cross_entropy, steps=5)
    assert torch.equal(by_name.losses, by_callable.losses)
