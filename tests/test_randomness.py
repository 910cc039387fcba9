"""Randomness through fit: keys from (seed, step), never torch's global RNG; bitwise repeatable,
resumable, per model in fit_ensemble; from_module's torch.nn random layers keyed, other random
ops refused."""

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


def test_from_module_dropout_is_the_keyed_dropout_of_its_layer():
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
    # the module's layers by hand, its one random layer (index 0) drawing from fold_in(key, 0)
    h = torch.relu(module[0](x))
    h = fnn.layers.dropout(h, 0.5, key=fold_in(fold_in(key(0), 1), 0), train=True)
    assert torch.equal(a, module[3](h))


P = 0.4
_SELU_MIN = 1.6732632423543772 * 1.0507009873554805  # SELU's alpha * scale (Klambauer et al.)
_A = ((_SELU_MIN**2 * P + 1) * (1 - P)) ** -0.5  # alpha dropout's affine map a x + b


def _dropout_values(x, out):
    """Each element: True where dropped (0), False where kept (x / (1 - p)); fails otherwise."""
    dropped = out == 0
    assert torch.allclose(out[~dropped], x[~dropped] / (1 - P), rtol=1e-15, atol=0)
    return dropped


def _alpha_values(x, out):
    """Dropped: -alpha a + alpha a p; kept: a x + alpha a p (torch's AlphaDropout)."""
    shift = _SELU_MIN * _A * P
    dropped = torch.isclose(out, torch.full_like(out, shift - _SELU_MIN * _A), rtol=1e-14)
    assert torch.allclose(out[~dropped], _A * x[~dropped] + shift, rtol=1e-14, atol=1e-15)
    return dropped


def _rrelu_values(x, out):
    """x where x > 0, a x with a in [1/8, 1/3] elsewhere; the slopes are the draw."""
    assert torch.equal(out[x > 0], x[x > 0])
    slope = out[x <= 0] / x[x <= 0]
    assert bool(((slope >= 1 / 8 - 1e-15) & (slope <= 1 / 3 + 1e-15)).all())
    return torch.where(x > 0, torch.ones_like(x), out / x)


# (module, input shape, how each output element relates to x, dims one draw spans)
RANDOM_MODULES = [
    pytest.param(nn.Dropout(P), (40, 30), _dropout_values, (), id="Dropout"),
    pytest.param(nn.Dropout1d(P), (30, 20, 5), _dropout_values, (2,), id="Dropout1d"),
    pytest.param(nn.Dropout1d(P), (40, 5), _dropout_values, (1,), id="Dropout1d-unbatched"),
    pytest.param(nn.Dropout2d(P), (30, 20, 3, 2), _dropout_values, (2, 3), id="Dropout2d"),
    pytest.param(nn.Dropout3d(P), (20, 20, 2, 2, 2), _dropout_values, (2, 3, 4), id="Dropout3d"),
    pytest.param(nn.Dropout3d(P), (40, 2, 3, 2), _dropout_values, (1, 2, 3), id="Dropout3d-ub"),
    pytest.param(nn.Dropout3d(P), (60, 3, 2), _dropout_values, (1, 2), id="Dropout3d-3d"),
    pytest.param(nn.AlphaDropout(P), (40, 30), _alpha_values, (), id="AlphaDropout"),
    pytest.param(nn.FeatureAlphaDropout(P), (30, 20, 6), _alpha_values, (2,), id="FeatureAlpha"),
    pytest.param(nn.RReLU(), (40, 30), _rrelu_values, None, id="RReLU"),
]


@pytest.mark.parametrize("module, shape, values, spans", RANDOM_MODULES)
def test_from_module_random_modules_draw_keyed_what_torch_draws(module, shape, values, spans):
    net, params = fnn.from_module(module)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(shape, dtype=torch.float64, generator=g) + 0.5
    x = x * torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0)  # |x| >= 0.5
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        theirs = values(x, module.train()(x))
    before = torch.get_rng_state()
    ours = values(x, net(params, x, state={}, train=True, key=key(3))[0])
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(
        net(params, x, state={}, train=True, key=key(3))[0],
        net(params, x, state={}, train=True, key=key(3))[0],
    )
    for draw in (theirs, ours):  # both draw both outcomes, one per element or per channel
        assert len(torch.unique(draw)) > 1
        if spans:
            assert torch.equal(draw.amax(spans), draw.amin(spans))
    if spans is not None:  # the fraction dropped: p, within 5 sd of a Bernoulli mean
        n = ours.numel() // max(1, torch.Size([shape[d] for d in spans]).numel())
        assert abs(ours.double().mean().item() - P) < 5 * (P * (1 - P) / n) ** 0.5
    assert torch.equal(net(params, x, state={}, train=False)[0], module.eval()(x))


class _Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x):
        return self.linear(x + 0.1 * torch.randn_like(x))


class _Attention(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.attention = nn.MultiheadAttention(4, 2, dropout=p, batch_first=True)
        self.linear = nn.Linear(4, 2)

    def forward(self, x):
        return self.linear(self.attention(x, x, x)[0].mean(1))


@pytest.mark.parametrize(
    "make, x_shape, refused",
    [
        pytest.param(_Noisy, (8, 4), "randn_like", id="randn_like"),
        pytest.param(lambda: _Attention(0.1), (8, 3, 4), "random op", id="attention-dropout"),
        pytest.param(lambda: _Attention(0.0), (8, 3, 4), None, id="attention-no-dropout"),
    ],
)
def test_fit_refuses_torch_random_ops_that_from_module_cannot_key(make, x_shape, refused):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = make().double()
    net, params = fnn.from_module(module)
    x = torch.randn(x_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(8, 2, dtype=torch.float64)
    kept = {name: p.clone() for name, p in params.items()}
    rng = torch.get_rng_state()
    run = lambda: fnn.fit(params, x, y, optim.sgd(0.1), model=net, steps=2, loss="mse")
    if refused is None:
        run()
    else:
        with pytest.raises(ValueError, match=f"{type(module).__name__}: it calls .*{refused}"):
            run()
    assert torch.equal(torch.get_rng_state(), rng)
    assert_trees_close(params, kept, 0.0, "params")


def test_fit_ensemble_draws_from_module_dropout_per_model_as_fit_does():
    net, params = fnn.from_module(_torch_dropout_module())
    x, y = _data()
    opt = optim.adam(1e-2)
    kwargs = dict(model=net, steps=5, loss="mse")
    both = fnn.fit_ensemble([params, params], x, y, opt, seed=[3, 5], **kwargs)
    assert not torch.equal(both.losses[:, 0], both.losses[:, 1])
    for k, s in enumerate((3, 5)):
        one = fnn.fit(params, x, y, opt, seed=s, **kwargs)
        assert_trees_close(both.losses[:, k], one.losses, 1e-9, f"model {k} losses")


def test_a_dropout_module_used_twice_draws_anew_at_each_use():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        shared = nn.Dropout(0.5)
        module = nn.Sequential(nn.Linear(4, 8), shared, nn.Linear(8, 8), shared).double()
    net, params = fnn.from_module(module)
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    rng = torch.get_rng_state()
    got, _ = net(params, x, state={}, train=True, key=key(2))
    again, _ = net(params, x, state={}, train=True, key=key(2))
    assert torch.equal(torch.get_rng_state(), rng) and torch.equal(got, again)
    # one module, key fold_in(key, 0); its n-th call in a forward draws from fold_in(that, n)
    k = fold_in(key(2), 0)
    drop = lambda h, kk: fnn.layers.dropout(h, 0.5, key=kk, train=True)
    assert torch.equal(got, drop(module[2](drop(module[0](x), k)), fold_in(k, 1)))
    # the module stays itself: its attributes, class and hooks are torch.nn.Dropout's
    seen = []
    module[1].register_forward_hook(lambda m, i, o: seen.append(m.p))
    net, params = fnn.from_module(module)
    net(params, x, state={}, train=True, key=key(2))
    assert seen == [0.5, 0.5]


def test_fork_rng_runs_unkeyed_random_ops_on_a_key_seeded_fork_in_eager_fit_only():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = _Attention(0.1).double()
    net, params = fnn.from_module(module, fork_rng=True)
    x = torch.randn(8, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(8, 2, dtype=torch.float64)
    run = lambda **kw: fnn.fit(params, x, y, optim.sgd(0.1), model=net, steps=3, **kw)
    rng = torch.get_rng_state()
    a, b, c = run(seed=1), run(seed=1), run(seed=2)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(a.losses, b.losses) and not torch.equal(a.losses, c.losses)
    with pytest.raises(ValueError, match=r"fork_rng=True\) networks .* torch.compile and vmap"):
        fnn.fit_ensemble([params, params], x, y, optim.sgd(0.1), model=net, steps=3)


def test_a_from_module_random_layer_in_training_wants_a_key_and_torchs_input_rank():
    net, params = fnn.from_module(_torch_dropout_module())
    x = torch.ones(3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"Sequential has random layers: .* pass key=dropout.key"):
        net(params, x, state={}, train=True)
    net, params = fnn.from_module(nn.Dropout1d(0.5))
    with pytest.raises(RuntimeError, match="dropout1d: Expected 2D or 3D input, but received a 4D"):
        net(params, torch.ones(2, 3, 4, 5), state={}, train=True, key=key(0))
