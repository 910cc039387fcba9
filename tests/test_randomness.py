"""Randomness through fit: keys from (seed, step), never torch's global RNG; bitwise repeatable,
resumable, per model in fit_ensemble; from_module's torch dropout on a key-seeded scoped RNG."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import functional_nn as fnn
from functional_nn import blocks, optim
from functional_nn._pytree import tree_index
from functional_nn.dropout import fold_in, key
from tests.helpers import assert_trees_close


def _net(p=0.5):
    return fnn.serial(
        fnn.dense(4, 8, init="torch"),
        blocks.batch_norm(8),
        "relu",
        blocks.dropout(p),
        fnn.dense(8, 2, init="torch"),
    )


def _data(n=16):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    return x, torch.randn(n, 2, generator=g, dtype=torch.float64)


def _fit(seed=0, steps=8, **kw):
    net, (x, y) = _net(), _data()
    params = net.init(0, dtype=torch.float64)
    return fnn.fit(
        params,
        x,
        y,
        optim.adam(1e-2),
        model=net,
        steps=steps,
        batch_size=8,
        loss="mse",
        seed=seed,
        **kw,
    )


def _torch_dropout_module():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 2)).double()


def test_fit_never_touches_torchs_global_rng():
    before = torch.get_rng_state()
    _fit()
    net, params = fnn.from_module(_torch_dropout_module())
    x, y = _data()
    fnn.fit(params, x, y, optim.sgd(0.1), model=net, steps=3, loss="mse")
    assert torch.equal(torch.get_rng_state(), before)


def test_the_same_seed_gives_bitwise_the_same_fit_and_another_seed_another():
    a, b, c = _fit(0), _fit(0), _fit(1)
    assert torch.equal(a.losses, b.losses)
    assert_trees_close(a.params, b.params, 0.0, "same seed")
    assert not torch.equal(a.losses, c.losses)


def test_a_resumed_fit_equals_the_uninterrupted_one_bitwise():
    whole = _fit(steps=10)
    first = _fit(steps=4)
    net, (x, y) = _net(), _data()
    rest = fnn.fit(
        first.params,
        x,
        y,
        optim.adam(1e-2),
        model=net,
        steps=6,
        batch_size=8,
        loss="mse",
        opt_state=first.opt_state,
        model_state=first.model_state,
        start_step=first.steps,
    )
    assert torch.equal(torch.cat([first.losses, rest.losses]), whole.losses)
    assert_trees_close(rest.params, whole.params, 0.0, "params")
    assert_trees_close(rest.model_state, whole.model_state, 0.0, "model state")
    assert_trees_close(rest.opt_state, whole.opt_state, 0.0, "opt state")


def test_each_dropout_layer_draws_its_own_mask_and_eval_draws_none():
    net = fnn.serial(blocks.dropout(0.5), blocks.dropout(0.5))
    x = torch.ones(1, 64, dtype=torch.float64)
    state = net.init_state()
    once = fnn.serial(blocks.dropout(0.5))
    y1, _ = once([{}], x, state=[{}], train=True, key=key(0))
    y2, _ = net([{}, {}], x, state=state, train=True, key=key(0))
    # layer 0 of both draws from fold_in(key, 0); layer 1 of net from fold_in(key, 1), another mask
    assert not torch.equal((y2 != 0), (y1 != 0))
    assert torch.equal(net([{}, {}], x, state=state, train=False)[0], x)
    with pytest.raises(ValueError, match="dropout in training needs a key"):
        net([{}, {}], x, state=state, train=True)


def test_fit_ensemble_draws_per_model_and_k_seeds_draw_as_fit_does():
    net, (x, y) = _net(), _data()
    params = net.init(0, dtype=torch.float64)
    opt = optim.adam(1e-2)
    shared = fnn.fit_ensemble([params, params], x, y, opt, model=net, steps=6, loss="mse")
    assert not torch.equal(shared.losses[:, 0], shared.losses[:, 1])  # same params, own masks
    seeds = fnn.fit_ensemble(
        [params, params], x, y, opt, model=net, steps=6, loss="mse", seed=[3, 5]
    )
    for k, s in enumerate((3, 5)):
        one = fnn.fit(params, x, y, opt, model=net, steps=6, loss="mse", seed=s)
        # to rounding: batched matrix products round differently (measured 5e-11 worst)
        assert_trees_close(seeds.losses[:, k], one.losses, 1e-9, f"model {k} losses")
        assert_trees_close(tree_index(seeds.model_state, k), one.model_state, 1e-9, "state")


def test_from_module_dropout_draws_from_the_key_in_a_scoped_rng():
    module = _torch_dropout_module()
    net, params = fnn.from_module(module)
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    before = torch.get_rng_state()
    a, _ = net(params, x, state={}, train=True, key=fold_in(key(0), 1))
    b, _ = net(params, x, state={}, train=True, key=fold_in(key(0), 1))
    c, _ = net(params, x, state={}, train=True, key=fold_in(key(0), 2))
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(net(params, x, state={}, train=False)[0], module.eval()(x))
    # the torch draw it makes: the module in training mode after manual_seed of the key's value
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(fold_in(key(0), 1)) % (1 << 63))
        assert torch.equal(a, module.train()(x))
