"""Donation: fit's eager loop writes a step's new params and optimizer state into the old ones
when it made them itself (see optim/_foreach.py and _loop.py), and no caller tensor ever changes.

Each test could fail: a donating step that wrote elsewhere than into its inputs, or rounded
differently from the pure step, or a loop that donated the caller's tensors (or a callback's, or
a result passed back in), would show here as a moved data pointer or a changed bit.
"""

from __future__ import annotations

import pytest
import torch

import functional_nn as fnn
from functional_nn import blocks, optim
from functional_nn._pytree import tree_leaves, tree_map
from functional_nn._step import make_step
from functional_nn.callbacks import EarlyStopping
from functional_nn.optim.base import leafwise

# The optimizers whose updates donate, in their variants (each a different code path).
DONATING = {
    "sgd": lambda: optim.sgd(0.05),
    "sgd weight_decay maximize": lambda: optim.sgd(1e-3, weight_decay=0.1, maximize=True),
    "momentum": lambda: optim.sgd(0.05, momentum=0.9),
    "momentum dampening": lambda: optim.sgd(0.05, momentum=0.9, dampening=0.3),
    "nesterov": lambda: optim.sgd(0.05, momentum=0.9, nesterov=True),
    "adam": lambda: optim.adam(0.01),
    "adam amsgrad": lambda: optim.adam(0.01, amsgrad=True),
    "adamw": lambda: optim.adamw(0.01),
    "rmsprop": lambda: optim.rmsprop(0.01),
    "rmsprop centered momentum": lambda: optim.rmsprop(0.01, momentum=0.5, centered=True),
    "nadam": lambda: optim.nadam(0.01),
}
MODEL = fnn.mlp([5, 7, 3], init="torch")


def _data(seed=0, n=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g), torch.randn(n, 3, generator=g)


def _clone(tree):
    return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, tree)


def _bitwise_equal(a, b) -> bool:
    la, lb = tree_leaves(a), tree_leaves(b)
    return len(la) == len(lb) and all(torch.equal(x, y) for x, y in zip(la, lb))


def _ptrs(tree) -> list[int]:
    return [t.data_ptr() for t in tree_leaves(tree) if isinstance(t, torch.Tensor) and t.ndim]


@pytest.mark.parametrize("name", list(DONATING))
def test_a_donating_step_writes_into_its_inputs_bitwise_as_the_pure_step(name):
    opt = DONATING[name]()
    x, y = _data()
    step = make_step(MODEL.apply, fnn.losses.mse, opt)
    assert step.donating is not None
    params, state = MODEL.init(0), opt.init(MODEL.init(0))
    with torch.no_grad():
        for _ in range(3):  # a few steps, so every buffer is non-zero and the count > 1
            params, state, _, _ = step(params, state, x, y)
        pure = step(_clone(params), _clone(state), x, y)
        before = _ptrs(params), _ptrs(state)
        donated = step.donating(params, state, x, y)
    assert _bitwise_equal(donated, pure)
    # The new params and every moment buffer are the old tensors, written in place.
    assert _ptrs(donated[0]) == before[0]
    assert _ptrs(donated[1]) == before[1]
    # Given the state only, the step writes its state in place, its params anew.
    with torch.no_grad():
        again = step(_clone(pure[0]), _clone(pure[1]), x, y)
        before = _ptrs(pure[0]), _ptrs(pure[1])
        state_only = step.donating_state(pure[0], pure[1], x, y)
    assert _bitwise_equal(state_only, again)
    assert _ptrs(state_only[1]) == before[1] and _ptrs(state_only[0]) != before[0]


def test_an_optimizer_with_a_part_that_does_not_donate_is_never_donated_to():
    keep = leafwise(lambda p: (), lambda g, s, p, spec: (g, s))  # donates=False
    by_hand = optim.GradientTransformation(lambda p: (), lambda g, s, p=None: (g, s))
    for part in (keep, by_hand):
        opt = optim.chain(part, optim.scale_by_learning_rate(0.1))
        assert not hasattr(make_step(MODEL.apply, fnn.losses.mse, opt), "donating")
    assert hasattr(make_step(MODEL.apply, fnn.losses.mse, optim.sgd(0.1)), "donating")


@pytest.mark.parametrize("name", list(DONATING))
def test_fit_donating_equals_the_pure_loop_bitwise(name):
    """fit (donating from each segment's second step) against make_step's pure step by hand,
    over two segments of the loop (CHECK_EVERY steps each) and a short third."""
    opt = DONATING[name]()
    x, y = _data()
    steps = 2 * fnn.train.CHECK_EVERY + 7
    result = fnn.fit(MODEL.init(0), x, y, opt, model=MODEL, loss="mse", steps=steps)
    step = make_step(MODEL.apply, fnn.losses.mse, opt)
    params, state = MODEL.init(0), opt.init(MODEL.init(0))
    with torch.no_grad():
        for _ in range(steps):
            params, state, _, _ = step(params, state, x, y)
    assert _bitwise_equal(result.params, params)
    assert _bitwise_equal(result.opt_state, state)


@pytest.mark.parametrize("name", ["momentum", "adam", "rmsprop centered momentum"])
def test_fit_never_changes_the_callers_params_or_state_even_passed_back_in(name):
    opt = DONATING[name]()
    x, y = _data()
    params, opt_state = MODEL.init(1), opt.init(MODEL.init(1))
    kept = _clone((params, opt_state, x, y))
    first = fnn.fit(params, x, y, opt, model=MODEL, loss="mse", steps=150, opt_state=opt_state)
    assert _bitwise_equal((params, opt_state, x, y), kept)
    fnn.fit(params, x, y, opt, model=MODEL, loss="mse", steps=150)  # fit's own fresh state
    assert _bitwise_equal((params, opt_state, x, y), kept)
    held = _clone((first.params, first.opt_state))
    again = fnn.fit(
        first.params, x, y, opt, model=MODEL, loss="mse", steps=150, opt_state=first.opt_state,
        start_step=first.steps, batch_size=4,
    )  # fmt: skip
    assert _bitwise_equal((first.params, first.opt_state), held)
    assert not _bitwise_equal(again.params, held[0])  # it trained on


def test_params_a_callback_holds_never_change():
    opt, (x, y) = optim.adam(0.01), _data()
    seen = []

    def hold(step, loss, params):
        seen.append((params, _clone(params)))  # the loop's tensors themselves, and a copy
        return False

    stopper = EarlyStopping(patience=1000, restore_best=True)
    result = fnn.fit(
        MODEL.init(2), x, y, opt, model=MODEL, steps=60, eval_every=7, val=_data(1),
        callbacks=[hold, stopper],
    )  # fmt: skip
    assert len(seen) == 9  # at 7, 14, ..., 56 and the end, 60
    for held, copy in seen:
        assert _bitwise_equal(held, copy)
    assert _bitwise_equal(result.params, stopper.best_params)


def test_a_stateful_networks_model_state_and_params_never_change():
    net = fnn.serial(fnn.dense(5, 6, init="torch"), blocks.batch_norm(6), "relu", fnn.dense(6, 3))
    x, y = _data()
    params, model_state = net.init(0), net.init_state()
    kept = _clone((params, model_state))
    r = fnn.fit(params, x, y, optim.adam(0.01), model=net, steps=120, model_state=model_state)
    assert _bitwise_equal((params, model_state), kept)
    r2 = fnn.fit(
        r.params, x, y, optim.adam(0.01), model=net, steps=5, opt_state=r.opt_state,
        model_state=r.model_state, start_step=r.steps,
    )  # fmt: skip
    assert r2.steps == r.steps + 5 and r.model_state is not None


@pytest.mark.parametrize("at", [20, fnn.train.CHECK_EVERY + 20])
def test_stop_replays_from_a_mark_the_donating_steps_left_intact(at):
    """on_nonfinite="stop" replays from the last look (a segment's start, the first one's being
    the caller's params and fit's fresh state): donation after it must not have written into the
    params and state kept there."""
    x, y = _data()
    # Finite until step `at` (a huge lr, as a schedule), non-finite one step later.
    boom = lambda count: torch.where(count >= at, 1e30, 0.05)
    opt = optim.sgd(boom, momentum=0.9)
    r = fnn.fit(
        MODEL.init(0), x, y, opt, model=MODEL, loss="mse", steps=fnn.train.CHECK_EVERY + 30,
        on_nonfinite="stop",
    )  # fmt: skip
    assert r.stop_reason == "nonfinite" and r.steps == r.nonfinite_step > at
    step = make_step(MODEL.apply, fnn.losses.mse, opt)
    params, state = MODEL.init(0), opt.init(MODEL.init(0))
    with torch.no_grad():
        for _ in range(r.steps):
            params, state, _, _ = step(params, state, x, y)
    assert _bitwise_equal((r.params, r.opt_state), (params, state))
