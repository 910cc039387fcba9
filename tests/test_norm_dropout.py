"""batch_norm, layer_norm, dropout: the numpy oracle against central differences, functional_nn
(torch.func.grad) against the oracle and torch.nn.functional / torch.nn modules, float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from functional_nn import dropout as fdrop
from functional_nn import layers, norm
from oracle import norm as onorm
from oracle.gradcheck import numerical_gradient
from tests.helpers import assert_trees_close, to_numpy

SHAPES = [pytest.param((6, 3), id="1d"), pytest.param((4, 3, 3, 2), id="2d")]


def _bn_case(shape, seed):
    rng = np.random.default_rng(seed)
    x = 2.0 * rng.standard_normal(shape) + 1.0
    gamma, beta = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
    state = {
        "running_mean": rng.standard_normal(shape[1]),
        "running_var": rng.uniform(0.5, 2.0, shape[1]),
        "num_batches_tracked": 3,
    }
    return x, gamma, beta, state


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_batch_norm_oracle_matches_central_differences(shape, train):
    x, gamma, beta, state = _bn_case(shape, 0)
    out, _, cache = onorm.batch_norm_forward(x, gamma, beta, state, train)
    dout = np.random.default_rng(1).standard_normal(out.shape)
    grads = onorm.batch_norm_backward(dout, cache)

    def value():
        return float(np.sum(onorm.batch_norm_forward(x, gamma, beta, state, train)[0] * dout))

    numeric = [numerical_gradient(value, a) for a in (x, gamma, beta)]
    # h = 1e-6: truncation ~1e-12, rounding ~1e-10 relative.
    assert_trees_close(list(grads), numeric, rtol=1e-8, name="oracle vs central differences")


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_batch_norm_three_ways_with_its_running_statistics(shape, train, momentum, device):
    x, gamma, beta, state = _bn_case(shape, 2)
    out, new_state, cache = onorm.batch_norm_forward(x, gamma, beta, state, train, momentum)
    dout = np.random.default_rng(3).standard_normal(out.shape)
    dx, dgamma, dbeta = onorm.batch_norm_backward(dout, cache)
    params = {
        "weight": torch.tensor(gamma, device=device),
        "bias": torch.tensor(beta, device=device),
    }
    tstate = {k: torch.tensor(v, device=device) for k, v in state.items()}
    xt, dt = torch.tensor(x, device=device), torch.tensor(dout, device=device)

    def loss(p, x_):
        y, s = norm.batch_norm(p, tstate, x_, train=train, momentum=momentum)
        return (y * dt).sum(), s

    (gp, gx), got_state = torch.func.grad(loss, argnums=(0, 1), has_aux=True)(params, xt)
    y, _ = norm.batch_norm(params, tstate, xt, train=train, momentum=momentum)
    assert_trees_close(y, out, rtol=1e-13, name="batch_norm vs oracle")
    assert_trees_close([gx, gp["weight"], gp["bias"]], [dx, dgamma, dbeta], rtol=1e-11)
    assert_trees_close(got_state, new_state, rtol=1e-14, name="state vs oracle")
    assert got_state["num_batches_tracked"].dtype == torch.long
    assert torch.equal(tstate["running_mean"], torch.tensor(state["running_mean"], device=device))

    # torch.nn.BatchNorm: the module updates its buffers in place; ours returns them.
    module = (torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d)(
        shape[1], momentum=momentum
    ).to(device=device, dtype=torch.float64)
    module.load_state_dict({**{k: v.clone() for k, v in tstate.items()}, **params}, strict=True)
    module.train(train)
    xr = xt.clone().requires_grad_(True)
    ref = module(xr)
    ref_gx, ref_gw = torch.autograd.grad((ref * dt).sum(), (xr, module.weight))
    assert_trees_close(y, ref, rtol=1e-13, name="batch_norm vs torch")
    assert_trees_close([gx, gp["weight"]], [ref_gx, ref_gw], rtol=1e-11, name="d vs torch")
    buffers = {k: v for k, v in module.state_dict().items() if k in tstate}
    assert_trees_close(got_state, buffers, rtol=1e-14, name="state vs torch")


def test_batch_norm_without_running_stats_and_affine_is_torchs_track_running_stats_false():
    x = torch.tensor(_bn_case((5, 3, 2, 2), 4)[0])
    module = torch.nn.BatchNorm2d(3, affine=False, track_running_stats=False).double().eval()
    for train in (True, False):
        y, state = norm.batch_norm({}, None, x, train=train)
        assert state is None
        assert_trees_close(y, module(x), rtol=1e-14, name=f"train={train}")


def test_batch_norm_state_is_a_fresh_modules_buffers():
    fresh = dict(torch.nn.BatchNorm1d(4).double().named_buffers())
    ours = norm.batch_norm_state(4, dtype=torch.float64)
    assert sorted(ours) == sorted(fresh)
    assert all(torch.equal(ours[k], fresh[k]) and ours[k].dtype == fresh[k].dtype for k in ours)


@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_three_ways(affine, device):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 2, 4, 5))
    gamma, beta = (
        (rng.standard_normal((4, 5)), rng.standard_normal((4, 5))) if affine else (None, None)
    )
    out, cache = onorm.layer_norm_forward(x, gamma, beta, 2)
    dout = rng.standard_normal(out.shape)
    grads = onorm.layer_norm_backward(dout, cache)

    def value():
        return float(np.sum(onorm.layer_norm_forward(x, gamma, beta, 2)[0] * dout))

    checked = (x, gamma, beta) if affine else (x,)
    numeric = [numerical_gradient(value, a) for a in checked]
    assert_trees_close(list(grads[: len(checked)]), numeric, rtol=1e-8, name="oracle vs fd")
    params = (
        {"weight": torch.tensor(gamma, device=device), "bias": torch.tensor(beta, device=device)}
        if affine
        else {}
    )
    xt, dt = torch.tensor(x, device=device), torch.tensor(dout, device=device)
    shape = None if affine else (4, 5)

    def loss(p, x_):
        return (layers.layer_norm(p, x_, shape) * dt).sum()

    gp, gx = torch.func.grad(loss, argnums=(0, 1))(params, xt)
    ref = F.layer_norm(xt, (4, 5), params.get("weight"), params.get("bias"))
    assert_trees_close(layers.layer_norm(params, xt, shape), out, rtol=1e-13, name="layer_norm")
    assert_trees_close(ref, out, rtol=1e-13, name="torch layer_norm")
    ours = [gx] + ([gp["weight"], gp["bias"]] if affine else [])
    assert_trees_close(ours, list(grads[: len(ours)]), rtol=1e-11, name="d layer_norm")


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_dropout_three_ways_given_its_mask(p, device):
    x = np.random.default_rng(6).standard_normal((4, 50))
    key = fdrop.fold_in(fdrop.key(0, device=device), 7)
    mask = to_numpy(fdrop.dropout_mask(key, x.shape, p))
    out, cache = onorm.dropout_forward(x, mask, p)
    dout = np.random.default_rng(7).standard_normal(x.shape)
    xt, dt = torch.tensor(x, device=device), torch.tensor(dout, device=device)
    grad = torch.func.grad(lambda t: (layers.dropout(t, p, key=key, train=True) * dt).sum())(xt)
    assert_trees_close(layers.dropout(xt, p, key=key, train=True), out, rtol=1e-16)
    assert_trees_close(grad, onorm.dropout_backward(dout, cache), rtol=1e-16)
    assert layers.dropout(xt, p, key=key, train=False) is xt
    # torch's dropout: the same scale on what it keeps, and p = 0 or 1 exactly as ours.
    ref = F.dropout(xt, p, training=True)
    kept = ref != 0
    assert torch.allclose(ref[kept], xt[kept] / (1 - p), rtol=1e-15, atol=0)
    if p in (0.0, 1.0):
        assert torch.equal(layers.dropout(xt, p, key=key, train=True), ref)


@pytest.mark.parametrize("p", [0.021, 0.3, 0.625, 0.9])
def test_dropout_keeps_torchs_values_bitwise_in_float32(p):
    # 0.021: one of the probabilities where 1 / (1 - p) rounded to float32 once is not torch's
    x = torch.randn(200, 50, generator=torch.Generator().manual_seed(3))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        theirs = F.dropout(x, p, training=True)
    ours = layers.dropout(x, p, key=fdrop.key(1), train=True)
    both = (theirs != 0) & (ours != 0)
    assert both.sum() > 100 and torch.equal(ours[both], theirs[both])


def test_dropout_is_a_function_of_its_key():
    x = torch.ones(1000, 100, dtype=torch.float64)
    k = fdrop.key(3)
    a, b = (layers.dropout(x, 0.25, key=k, train=True) for _ in range(2))
    other = layers.dropout(x, 0.25, key=fdrop.fold_in(k, 1), train=True)
    assert torch.equal(a, b)
    assert torch.equal(torch.unique(a), torch.tensor([0.0, 4.0 / 3.0], dtype=torch.float64))
    before = torch.random.get_rng_state()
    layers.dropout(x, 0.25, key=k, train=True)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is untouched
    kept, kept_other = a != 0, other != 0
    n = x.numel()
    # Bernoulli(0.75) over 1e5 draws: the kept fraction within 5 sd (sd = sqrt(p q / n) ~ 1.4e-3).
    sd = (0.75 * 0.25 / n) ** 0.5
    assert abs(kept.double().mean().item() - 0.75) < 5 * sd
    # independent keys: both kept with probability 0.75^2, rows and columns uncorrelated.
    assert (
        abs((kept & kept_other).double().mean().item() - 0.5625) < 5 * (0.5625 * 0.4375 / n) ** 0.5
    )
    row_means = kept.double().mean(1)
    assert abs(row_means.std().item() - (0.75 * 0.25 / 100) ** 0.5) < 0.006
    assert not torch.equal(kept[:, :50], kept[:, 50:])


def test_dropout_keys_batch_under_vmap_one_mask_per_key():
    x = torch.ones(8, 16, dtype=torch.float64)
    keys = torch.stack([fdrop.fold_in(fdrop.key(1), t) for t in range(3)])
    batched = torch.func.vmap(lambda k: layers.dropout(x, 0.5, key=k, train=True))(keys)
    each = torch.stack([layers.dropout(x, 0.5, key=k, train=True) for k in keys])
    assert torch.equal(batched, each)
    assert not torch.equal(each[0], each[1])


def test_keys_are_ints_mod_2_64_and_fold_in_separates_steps():
    assert torch.equal(fdrop.key(-1), fdrop.key(2**64 - 1))
    assert not torch.equal(fdrop.key(0), fdrop.key(1))
    steps = torch.stack([fdrop.fold_in(fdrop.key(0), t) for t in range(1000)])
    assert steps.unique().numel() == 1000


def _splitmix64_reference(seed, step, n):
    """key, fold_in and bits in Python ints, from their definitions in dropout.py's docstring."""
    m, gamma = (1 << 64) - 1, 0x9E3779B97F4A7C15

    def mix(z):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        return z ^ (z >> 31)

    k = mix((seed & m) ^ gamma)
    k = mix(k ^ mix(step ^ 0xBF58476D1CE4E5B9))
    return [mix(((k ^ i) * gamma) & m) >> 11 for i in range(n)]


@pytest.mark.parametrize("seed, step", [(0, 0), (7, 3), (-1, 12), (2**63 + 5, 2**40)])
def test_keys_and_bits_are_splitmix64_in_python_ints(seed, step):
    got = fdrop.bits(fdrop.fold_in(fdrop.key(seed), step), (5, 7))
    assert got.flatten().tolist() == _splitmix64_reference(seed, step, 35)


@pytest.mark.slow
def test_compiled_bits_equal_eager_at_odd_sizes_for_input_constant_and_batched_keys():
    # One compiled function per way of making the key, called at sizes that are not a multiple
    # of any vector width: the first call compiles static shapes, the next dynamic ones.
    shapes = [(7,), (8, 7), (3, 5, 7), (1001,)]
    k, keys = fdrop.key(7), torch.stack([fdrop.key(i) for i in range(3)])
    ways = {
        "input key": (lambda s: (k, s), lambda kk, s: fdrop.bits(kk, s)),
        "constant key": (lambda s: (s,), lambda s: fdrop.bits(fdrop.key(7), s)),
        "folded step": (
            lambda s: (torch.tensor(5), s),
            lambda t, s: fdrop.bits(fdrop.fold_in(fdrop.key(3), t), s),
        ),
        "vmapped keys": (
            lambda s: (keys, s),
            lambda ks, s: torch.func.vmap(lambda kk: fdrop.bits(kk, s))(ks),
        ),
        "dropout": (
            lambda s: (torch.randn(s, dtype=torch.float64), k),
            lambda x, kk: layers.dropout(x, 0.3, key=kk, train=True),
        ),
    }
    for name, (args, fn) in ways.items():
        compiled = torch.compile(fn, fullgraph=True)
        for shape in shapes:
            inputs = args(shape)
            assert torch.equal(compiled(*inputs), fn(*inputs)), (name, shape)


@pytest.mark.parametrize(
    "call, error, message",
    [
        pytest.param(
            lambda: layers.dropout(torch.ones(2), 1.5, key=fdrop.key(0), train=True),
            ValueError,
            r"p must lie in \[0, 1\], got 1.5",
            id="p",
        ),
        pytest.param(
            lambda: layers.dropout(torch.ones(2), 0.5, key=0, train=True),
            TypeError,
            "key must be an int64 tensor",
            id="key",
        ),
        pytest.param(
            lambda: fdrop.key(1.0), TypeError, "seed must be an int, got float", id="seed"
        ),
        pytest.param(
            lambda: fdrop.alpha_dropout(torch.ones(2), -0.1, key=fdrop.key(0), train=True),
            ValueError,
            r"alpha_dropout: p must lie in \[0, 1\], got -0.1",
            id="alpha-p",
        ),
        pytest.param(
            lambda: fdrop.rrelu(torch.ones(2), 0.5, 0.25, key=fdrop.key(0), train=True),
            ValueError,
            "rrelu: lower must be <= upper, got 0.5 > 0.25",
            id="rrelu-bounds",
        ),
        pytest.param(
            lambda: layers.dropout(
                torch.ones(2, 3), 0.5, key=fdrop.key(0), train=True, noise_shape=(2, 1, 1)
            ),
            ValueError,
            r"dropout: noise_shape \(2, 1, 1\) does not broadcast to x's shape \(2, 3\)",
            id="noise-shape",
        ),
        pytest.param(
            lambda: fdrop.rrelu(torch.ones(2), key=0, train=False),
            TypeError,
            "rrelu: key must be an int64 tensor",
            id="rrelu-key",
        ),
        pytest.param(
            lambda: norm.batch_norm({}, None, torch.ones(1, 3), train=True),
            ValueError,
            "more than 1 value per channel",
            id="bn-batch",
        ),
        pytest.param(
            lambda: norm.batch_norm({}, None, torch.ones(3), train=True),
            ValueError,
            r"x must be \(N, C, ...\)",
            id="bn-ndim",
        ),
        pytest.param(
            lambda: layers.layer_norm({}, torch.ones(3)),
            ValueError,
            "pass normalized_shape",
            id="ln-shape",
        ),
    ],
)
def test_bad_norm_and_dropout_input_is_rejected(call, error, message):
    with pytest.raises(error, match=message):
        call()
