"""on_nonfinite: a NaN or inf loss or gradient raises, stops or is ignored, found at the exact step
although fit only looks every CHECK_EVERY steps."""

from __future__ import annotations

import math
import re

import pytest
import torch

import functional_nn as fnn
from functional_nn import optim
from functional_nn._pytree import tree_leaves
from functional_nn.train import CHECK_EVERY
from tests.helpers import assert_trees_close

NET = fnn.mlp([2, 3, 1])


def diverging_problem():
    g = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(16, 2, generator=g, dtype=torch.float64),
        torch.randn(16, 1, generator=g, dtype=torch.float64),
    )
    return NET.init(0, dtype=torch.float64), x, y


def first_nonfinite_step_by_autograd(params, x, y, lr, steps):
    """An independent look: plain SGD with autograd, checking the loss and gradients every step."""
    leaves = [t.clone().requires_grad_(True) for t in tree_leaves(params)]
    shaped = [{"weight": leaves[0], "bias": leaves[1]}, {"weight": leaves[2], "bias": leaves[3]}]
    for t in range(steps):
        loss = fnn.sse(NET.apply(shaped, x), y)
        grads = torch.autograd.grad(loss, leaves)
        if not all(bool(torch.isfinite(v).all()) for v in (loss, *grads)):
            return t
        with torch.no_grad():
            for p, g in zip(leaves, grads):
                p -= lr * g
    return None


LR = 0.2  # far beyond what sse on 16 examples tolerates: the loss overflows float64 in a few steps


def test_a_huge_learning_rate_raises_naming_the_first_bad_step():
    params, x, y = diverging_problem()
    bad = first_nonfinite_step_by_autograd(params, x, y, LR, 50)
    assert bad is not None and 0 < bad < 50
    with pytest.raises(
        FloatingPointError,
        match=rf"diverged at step {bad}: the loss is (inf|nan)\. Lower the learning rate",
    ):
        fnn.fit(params, x, y, optim.sgd(LR), model=NET, steps=50)


def test_stop_returns_the_last_finite_params_and_ignore_goes_on():
    params, x, y = diverging_problem()
    bad = first_nonfinite_step_by_autograd(params, x, y, LR, 50)
    stopped = fnn.fit(
        params, x, y, optim.sgd(LR), model=NET, steps=50, on_nonfinite="stop", val=(x, y)
    )
    assert (stopped.stop_reason, stopped.nonfinite_step, stopped.steps) == ("nonfinite", bad, bad)
    assert stopped.losses.shape == (bad,) and bool(torch.isfinite(stopped.losses).all())
    # Evaluated on the training data, the loss at step count s is step s's training loss; the
    # evaluations after the bad step are dropped with it.
    assert stopped.val_steps == tuple(range(1, bad + 1))
    assert_trees_close(stopped.val_losses[:-1], stopped.losses[1:], 0.0)
    assert all(bool(torch.isfinite(t).all()) for t in tree_leaves(stopped.params))
    before_bad = fnn.fit(params, x, y, optim.sgd(LR), model=NET, steps=bad)
    assert_trees_close(
        (stopped.params, stopped.opt_state), (before_bad.params, before_bad.opt_state), 0.0
    )
    ignored = fnn.fit(params, x, y, optim.sgd(LR), model=NET, steps=50, on_nonfinite="ignore")
    assert (ignored.stop_reason, ignored.nonfinite_step, ignored.steps) == ("done", bad, 50)
    assert not bool(torch.isfinite(ignored.losses[bad]))
    assert_trees_close(ignored.losses[:bad], stopped.losses, 0.0)


def test_finite_training_is_the_same_in_every_mode():
    params, x, y = diverging_problem()
    results = [
        fnn.fit(params, x, y, optim.sgd(1e-3), model=NET, steps=30, on_nonfinite=mode)
        for mode in ("raise", "stop", "ignore")
    ]
    for r in results:
        assert (r.stop_reason, r.nonfinite_step, r.steps) == ("done", None, 30)
        assert_trees_close((r.params, r.losses), (results[0].params, results[0].losses), 0.0)


def poisoned(kind: str):
    """sse on y[:, :1], plus a term that is non-finite exactly on batches holding a row whose
    marker y[:, 1] is 1: in the loss value ("loss"), or only in the gradient ("grad":
    sqrt(0 * pred + 0) is 0, but its derivative is 0 * inf = nan)."""

    def loss(pred, y):
        marker = y[:, 1:]
        if kind == "loss":
            return fnn.sse(pred, y[:, :1]) + (torch.log1p(-marker) * 0.0).sum()
        return fnn.sse(pred, y[:, :1]) + torch.sqrt(pred * 0.0 + (1.0 - marker)).sum()

    return loss


@pytest.mark.parametrize("row", [0, CHECK_EVERY - 1, CHECK_EVERY, CHECK_EVERY + 37])
@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_the_first_bad_step_is_exact_wherever_it_falls_in_a_check(kind, row):
    # One example per step, in order: step t sees row t, so row `row` poisons step `row` exactly.
    n = CHECK_EVERY + 40
    g = torch.Generator().manual_seed(1)
    net = fnn.mlp([1, 1])
    x = torch.randn(n, 1, generator=g, dtype=torch.float64)
    y = torch.cat(
        [
            torch.randn(n, 1, generator=g, dtype=torch.float64),
            torch.zeros(n, 1, dtype=torch.float64),
        ],
        1,
    )
    y[row, 1] = 1.0
    params = net.init(0, dtype=torch.float64)
    kwargs = dict(model=net, loss=poisoned(kind), batch_size=1, shuffle=False, steps=row + 3)
    what = (
        "the loss is nan"
        if kind == "loss"
        else "the gradients or the updated params are not all finite"
    )
    with pytest.raises(FloatingPointError, match=rf"step {row}: .*{what}"):
        fnn.fit(params, x, y, optim.sgd(1e-3), **kwargs)
    stopped = fnn.fit(params, x, y, optim.sgd(1e-3), on_nonfinite="stop", **kwargs)
    assert (stopped.steps, stopped.nonfinite_step, stopped.losses.shape) == (row, row, (row,))
    if row:
        clean = fnn.fit(params, x, y, optim.sgd(1e-3), **{**kwargs, "steps": row})
        assert_trees_close(stopped.params, clean.params, 0.0)
    ignored = fnn.fit(params, x, y, optim.sgd(1e-3), on_nonfinite="ignore", **kwargs)
    assert (ignored.steps, ignored.nonfinite_step) == (row + 3, row)


def test_stop_at_the_first_step_returns_copies_not_the_callers_tensors():
    net = fnn.mlp([3, 4, 2])
    params = net.init(0)
    x, y = torch.randn(5, 3), torch.randn(5, 2) * 1e30  # finite data; the loss overflows at step 0
    r = fnn.fit(
        params,
        x,
        y,
        fnn.sgd(0.1),
        model=net,
        steps=3,
        on_nonfinite="stop",
        loss=lambda p, t: (p * t).pow(4).sum(),
    )
    assert r.stop_reason == "nonfinite" and r.nonfinite_step == 0
    for got, given in zip(tree_leaves(r.params), tree_leaves(params)):
        assert got is not given and torch.equal(got, given)


def test_stop_in_float16_returns_finite_params_when_the_update_overflows():
    # Adam's eps (1e-8) is 0 in float16, so a gradient entry of 0 (a dead ReLU unit) makes its
    # update 0 / 0 = nan although the loss and every gradient are finite.
    net = fnn.mlp([3, 16, 2])
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, generator=g).half(), torch.randn(8, 2, generator=g).half()
    params = net.init(0, dtype=torch.float16)
    r = fnn.fit(params, x, y, optim.adam(1e-3), model=net, steps=5, on_nonfinite="stop")
    assert r.stop_reason == "nonfinite" and r.steps == r.nonfinite_step
    assert all(bool(torch.isfinite(t).all()) for t in tree_leaves(r.params))
    assert_trees_close(
        r.params,
        fnn.fit(params, x, y, optim.adam(1e-3), model=net, steps=r.steps).params
        if r.steps
        else params,
        0.0,
    )
    with pytest.raises(
        FloatingPointError,
        match=rf"step {r.nonfinite_step}: the loss is \S+ but the gradients or the updated params",
    ):
        fnn.fit(params, x, y, optim.adam(1e-3), model=net, steps=5)


def test_large_finite_float16_params_are_not_taken_for_divergence():
    # 40000 params of 2.0 sum to 80000, past float16's largest finite value (65504).
    params = {"w": torch.full((40000,), 2.0, dtype=torch.float16)}
    x, y = torch.ones(4, 1, dtype=torch.float16), torch.zeros(4, 1, dtype=torch.float16)
    model = lambda p, x: x * p["w"][:1] * 0.0
    r = fnn.fit(params, x, y, optim.sgd(1e-3), model=model, steps=3)
    assert (r.stop_reason, r.nonfinite_step, r.steps) == ("done", None, 3)


def test_a_progress_line_and_the_divergence_error_name_the_same_step(capsys):
    params, x, y = diverging_problem()
    with pytest.raises(FloatingPointError) as raised:
        fnn.fit(params, x, y, optim.sgd(LR), model=NET, steps=50)
    error_step = int(re.search(r"diverged at step (\d+)", str(raised.value))[1])
    fnn.fit(params, x, y, optim.sgd(LR), model=NET, steps=50, on_nonfinite="ignore", log_every=1)
    lines = capsys.readouterr().err.splitlines()
    first_bad_line = next(
        line for line in lines if not math.isfinite(float(line.split("loss ")[1].split()[0]))
    )
    assert int(re.match(r"step +(\d+) ", first_bad_line)[1]) == error_step
