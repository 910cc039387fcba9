"""Wrappers around an optimizer, each against torch or its definition."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from functional_nn import optim
from functional_nn._pytree import tree_leaves, tree_map
from tests.helpers import assert_trees_close


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "weight": torch.randn(3, 4, generator=g, dtype=torch.float64),
        "bias": torch.randn(3, generator=g, dtype=torch.float64),
    }


def _stream(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [
        tree_map(lambda p: torch.randn(p.shape, generator=g, dtype=p.dtype), _params())
        for _ in range(n)
    ]


def _module(params):
    m = torch.nn.Linear(4, 3).double()
    with torch.no_grad():
        m.weight.copy_(params["weight"])
        m.bias.copy_(params["bias"])
    return m


def _set_grads(module, g):
    module.weight.grad, module.bias.grad = g["weight"].clone(), g["bias"].clone()


@pytest.mark.parametrize("k", [1, 4])
def test_multi_steps_equals_torch_accumulate_then_step(k):
    params, micro = _params(), _stream(40 * k)
    opt = optim.multi_steps(optim.adamw(1e-2, weight_decay=0.1), k)
    state, p = opt.init(params), params
    module = _module(params)
    torch_opt = torch.optim.AdamW(module.parameters(), lr=1e-2, weight_decay=0.1)
    for i, g in enumerate(micro):
        before = p
        updates, state = opt.update(g, state, p)
        p = optim.apply_updates(p, updates)
        for t, gi in zip(module.parameters(), (g["weight"], g["bias"])):  # (loss / k).backward()
            t.grad = gi / k if t.grad is None else t.grad + gi / k
        if (i + 1) % k == 0:
            torch_opt.step()
            torch_opt.zero_grad(set_to_none=True)
        else:
            assert all(torch.equal(a, b) for a, b in zip(tree_leaves(p), tree_leaves(before)))
    assert int(state.gradient_step) == 40 and int(state.mini_step) == 0
    assert_trees_close(p, dict(module.named_parameters()), 1e-12)


def _swa_run(transform, torch_avg, start, steps=30):
    params, stream = _params(), _stream(steps)
    opt = optim.chain(optim.sgd(0.05, momentum=0.9), transform)
    state, p = opt.init(params), params
    module = _module(params)
    averaged = torch_avg(module)
    torch_opt = torch.optim.SGD(module.parameters(), lr=0.05, momentum=0.9)
    for i, g in enumerate(stream):
        updates, state = opt.update(g, state, p)
        p = optim.apply_updates(p, updates)
        _set_grads(module, g)
        torch_opt.step()
        if i >= start:
            averaged.update_parameters(module)
    assert_trees_close(p, dict(module.named_parameters()), 1e-13)  # swa passes updates through
    assert int(state[1].n_averaged) == steps - start
    return optim.averaged_params(state), dict(averaged.module.named_parameters())


@pytest.mark.parametrize("start", [0, 10])
def test_swa_equals_averaged_model(start):
    ours, theirs = _swa_run(optim.swa(start=start), AveragedModel, start)
    assert_trees_close(ours, theirs, 1e-13)


def test_ema_and_torch_multi_avg_fn_equal_averaged_model_ema():
    make = lambda m: AveragedModel(m, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    for transform in (optim.ema(0.9), optim.swa(multi_avg_fn=get_ema_multi_avg_fn(0.9))):
        ours, theirs = _swa_run(transform, make, 0)
        assert_trees_close(ours, theirs, 1e-13)


def test_swa_custom_avg_fn():
    fn = lambda avg, p, n: 0.7 * avg + 0.3 * p
    ours, theirs = _swa_run(optim.swa(avg_fn=fn, start=5), lambda m: AveragedModel(m, avg_fn=fn), 5)
    assert_trees_close(ours, theirs, 1e-13)


def test_lookahead_follows_its_definition():
    params, stream, k, a = _params(), _stream(23), 5, 0.5
    inner = optim.adam(1e-2)
    opt = optim.lookahead(inner, sync_period=k, slow_step_size=a)
    state, p = opt.init(params), params
    fast, slow, inner_state = params, params, inner.init(params)
    for t, g in enumerate(stream):
        updates, state = opt.update(g, state, p)
        p = optim.apply_updates(p, updates)
        u, inner_state = inner.update(g, inner_state, fast)
        fast = optim.apply_updates(fast, u)
        if (t + 1) % k == 0:
            slow = tree_map(lambda s, f: s + a * (f - s), slow, fast)
            fast = slow
            assert_trees_close(state.slow, slow, 0.0)
        assert_trees_close(p, fast, 1e-13)
    assert int(state.steps_since_sync) == 23 % k


def test_apply_if_finite_skips_and_counts():
    params, stream = _params(), _stream(12)
    bad = {2, 5, 6, 9, 10, 11}  # 9, 10, 11: the third in a row goes through (max 2)
    for i in bad:
        stream[i] = tree_map(lambda g: g.clone(), stream[i])
        stream[i]["bias"][0] = math.nan if i % 2 else math.inf
    opt = optim.apply_if_finite(optim.adam(1e-2), max_consecutive_errors=2)
    state, p = opt.init(params), params
    ref, ref_state = params, optim.adam(1e-2).init(params)
    for i, g in enumerate(stream):
        updates, state = opt.update(g, state, p)
        p = optim.apply_updates(p, updates)
        if i not in bad:
            u, ref_state = optim.adam(1e-2).update(g, ref_state, ref)
            ref = optim.apply_updates(ref, u)
        if i < 11:
            assert all(torch.equal(x, y) for x, y in zip(tree_leaves(p), tree_leaves(ref))), i
        assert bool(state.last_finite) == (i not in bad)
    assert int(state.notfinite_count) == 3 and int(state.total_notfinite) == len(bad)
    assert torch.isnan(p["bias"][0])  # the 3rd consecutive one went through
    assert int(state.inner_state[0].count) == len(stream) - len(bad) + 1


LOSSES = [1.0, 0.9, 0.95, 0.95, 0.96, 0.97, 0.89, 0.9, 0.9, 0.9, 0.9, 0.9, 0.5, 0.6, 0.6] * 3


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(patience=2, factor=0.5, cooldown=1, threshold=0.05, min_lr=0.01),
        dict(mode="max", patience=1, threshold_mode="abs", threshold=0.02, factor=0.3),
        dict(patience=0, factor=0.9, eps=0.005),
    ],
)
def test_reduce_on_plateau_equals_torch(kw):
    losses = LOSSES if kw.get("mode") != "max" else [-x for x in LOSSES]
    module = _module(_params())
    torch_opt = torch.optim.SGD(module.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scheduler = ReduceLROnPlateau(torch_opt, **kw)
    params, g = _params(), _stream(1)[0]
    opt = optim.chain(optim.sgd(0.1), optim.reduce_on_plateau(0.1, **kw))
    state = opt.init(params)
    seen = set()
    for loss in losses:
        lr = torch_opt.param_groups[0]["lr"]
        seen.add(lr)
        updates, state = opt.update(g, state, params, value=torch.tensor(loss, dtype=torch.float64))
        assert_trees_close(updates, tree_map(lambda x, lr=lr: -lr * x, g), 1e-15)
        scheduler.step(loss)
        assert float(state[1].lr) == torch_opt.param_groups[0]["lr"]
    assert len(seen) > 1  # the lr was reduced


def test_reduce_on_plateau_needs_value_and_wrappers_check_arguments():
    opt = optim.reduce_on_plateau(0.1)
    params = _params()
    with pytest.raises(ValueError, match="value=loss"):
        opt.update(params, opt.init(params), params)
    with pytest.raises(ValueError, match="mode"):
        optim.reduce_on_plateau(0.1, mode="lowest")
    with pytest.raises(ValueError, match="every_k"):
        optim.multi_steps(optim.sgd(), 0)
    with pytest.raises(TypeError, match="inner"):
        optim.lookahead(optim.sgd)
    with pytest.raises(ValueError, match="decay"):
        optim.ema(1.5)
    with pytest.raises(ValueError, match="swa needs params"):
        s = optim.swa()
        s.update(params, s.init(params))
    with pytest.raises(ValueError, match="max_consecutive_errors"):
        optim.apply_if_finite(optim.sgd(), -1)
