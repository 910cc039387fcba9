"""adafactor and muon three ways: functional_nn, the numpy oracle, torch.optim (single-tensor),
driven by one fixed stream of gradients; then their validation.

Muon iterates in bfloat16 as torch does: functional_nn runs torch's ops, so it matches torch to
float64 rounding, while the oracle emulates bfloat16 rounding op by op (its matmuls accumulate in
another order), so it agrees to a few bfloat16 ulps; with ns_dtype=float64 the oracle's float64
iteration is matched tightly.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

import oracle.optim_more
from functional_nn import optim
from tests.helpers import assert_trees_close, to_numpy

STEPS = 60
HAS_SPECTRAL = "spectral_unclamped" in inspect.getsource(torch.optim.Muon.__init__)
ADAFACTOR = [
    {},
    {"weight_decay": 0.1, "lr": 0.01},
    {"weight_decay": 0.1, "maximize": True},
    {"beta2_decay": -1.0},
    {"d": 1.5},
    {"eps": (1e-30, 1e-3)},
    {"lr": 0.5},  # rho_t = 1/sqrt(t) from the start
]
MUON = [
    {},
    {"lr": 0.01},
    {"weight_decay": 0.2},
    {"momentum": 0.8},
    {"ns_steps": 6},
    {"ns_coefficients": (3.4, -4.7, 2.0)},
    {"nesterov": False},
    {"adjust_lr_fn": "match_rms_adamw"},
    pytest.param(
        {"adjust_lr_fn": "spectral_unclamped"},
        marks=pytest.mark.skipif(not HAS_SPECTRAL, reason="torch < 2.14 has no spectral_unclamped"),
    ),
]
TOL = {torch.float64: 1e-12, torch.float32: 2e-5}


def stream(shapes, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]
    grads = [
        [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]
        for _ in range(STEPS)
    ]
    return params, grads


def run_ours(opt, params, grads):
    state = opt.init(params)
    for g in grads:
        updates, state = opt.update(g, state, params)
        params = optim.apply_updates(params, updates)
    return params


def run_torch(cls, kwargs, params, grads):
    params = [p.clone() for p in params]
    opt = cls(params, **kwargs)
    for g in grads:
        for p, gi in zip(params, g):
            p.grad = gi.clone()
        opt.step()
    return params


def run_oracle(reference, params, grads):
    params = [np.array(a) for a in to_numpy(params)]  # copies: to_numpy shares float64 memory
    for g in grads:
        reference.step(params, to_numpy(g))
    return params


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kwargs", ADAFACTOR, ids=str)
def test_adafactor_three_ways(kwargs, dtype):
    params, grads = stream([(4, 5), (3,), (2, 3, 4), ()], dtype)
    ours = run_ours(optim.adafactor(**kwargs), params, grads)
    theirs = run_torch(torch.optim.Adafactor, {**kwargs, "foreach": False}, params, grads)
    assert_trees_close(ours, theirs, TOL[dtype], "adafactor vs torch")
    eps = torch.finfo(dtype).eps
    reference = oracle.optim_more.Adafactor(**kwargs, machine_eps=eps)
    assert_trees_close(ours, run_oracle(reference, params, grads), 1e3 * TOL[dtype], "vs oracle")


def test_adafactor_schedule_equals_torch_lambda_lr():
    params, grads = stream([(4, 5), (3,)], torch.float64)
    schedule = optim.schedules.exponential_decay(0.05, 0.97)
    ours = run_ours(optim.adafactor(lr=schedule), params, grads)
    ps = [p.clone() for p in params]
    opt = torch.optim.Adafactor(ps, lr=0.05, foreach=False)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, 0.97)
    for g in grads:
        for p, gi in zip(ps, g):
            p.grad = gi.clone()
        opt.step()
        sched.step()
    assert_trees_close(ours, ps, 1e-12, "scheduled adafactor")


def test_adafactor_state_is_factored():
    state = optim.adafactor().init({"w": torch.zeros(2, 3, 4), "b": torch.zeros(4)})
    assert state.row_var["w"].shape == (2, 3, 1) and state.col_var["w"].shape == (2, 1, 4)
    assert state.variance["b"].shape == (4,) and state.variance["w"].numel() == 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kwargs", MUON, ids=str)
def test_muon_three_ways(kwargs, dtype):
    params, grads = stream([(4, 5), (6, 3)], dtype)
    ours = run_ours(optim.muon(**kwargs), params, grads)
    theirs = run_torch(torch.optim.Muon, kwargs, params, grads)
    assert_trees_close(ours, theirs, TOL[dtype], "muon vs torch")
    reference = oracle.optim_more.Muon(**kwargs, rounding=oracle.optim_more.to_bfloat16)
    assert_trees_close(ours, run_oracle(reference, params, grads), 5e-3, "vs bf16 oracle")
    exact = run_ours(optim.muon(**kwargs, ns_dtype=torch.float64), params, grads)
    reference = oracle.optim_more.Muon(**kwargs)
    assert_trees_close(exact, run_oracle(reference, params, grads), 1e3 * TOL[dtype], "float64")


def test_muon_orthogonalizes():
    """The property Muon is built on: ns_steps iterations leave singular values in ~(0.5, 1.5)."""
    m = torch.randn(8, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    reference = oracle.optim_more.Muon()
    s = np.linalg.svd(reference.orthogonalize(m.numpy()), compute_uv=False)
    assert 0.5 < s.min() and s.max() < 1.5


def test_muon_schedule_scales_the_whole_step():
    params, grads = stream([(4, 5)], torch.float64)
    schedule = optim.schedules.exponential_decay(0.02, 0.9)
    ours = run_ours(optim.muon(lr=schedule), params, grads)
    reference = oracle.optim_more.Muon(
        lr=lambda t: 0.02 * 0.9**t, rounding=oracle.optim_more.to_bfloat16
    )
    assert_trees_close(ours, run_oracle(reference, params, grads), 5e-3, "scheduled muon")


BAD = [
    (lambda: optim.adafactor(lr=-1.0), ValueError, "Invalid lr"),
    (lambda: optim.adafactor(beta2_decay=0.8), ValueError, "Invalid beta2_decay: 0.8"),
    (lambda: optim.adafactor(eps=(-1e-30, 1e-3)), ValueError, "epsilon1"),
    (lambda: optim.adafactor(eps=(None, -1.0)), ValueError, "epsilon2"),
    (lambda: optim.adafactor(eps=1e-3), ValueError, "Invalid eps"),
    (lambda: optim.adafactor(d=0.0), ValueError, "clipping threshold"),
    (lambda: optim.adafactor(weight_decay=-0.1), ValueError, "Invalid weight_decay"),
    (lambda: optim.adafactor(maximize="yes"), TypeError, "maximize must be a bool"),
    (lambda: optim.muon(lr=-1.0), ValueError, "Invalid lr"),
    (lambda: optim.muon(momentum=-0.1), ValueError, "Invalid momentum"),
    (lambda: optim.muon(weight_decay=-0.1), ValueError, "Invalid weight_decay"),
    (lambda: optim.muon(adjust_lr_fn="arbitrary"), ValueError, "arbitrary is not supported"),
    (lambda: optim.muon(ns_steps=100), ValueError, "less than 100"),
    (lambda: optim.muon(ns_coefficients=(1.0, 2.0)), ValueError, "3 numbers"),
    (lambda: optim.muon().init([torch.zeros(2, 3, 4)]), ValueError, "only supports 2D"),
]


@pytest.mark.parametrize(("build", "error", "match"), BAD)
def test_bad_input_is_rejected(build, error, match):
    with pytest.raises(error, match=match):
        build()


TORCH_BAD = [
    (torch.optim.Adafactor, {"lr": -1.0}, ValueError),
    (torch.optim.Adafactor, {"beta2_decay": 0.8}, ValueError),
    (torch.optim.Adafactor, {"eps": (-1e-30, 1e-3)}, ValueError),
    (torch.optim.Adafactor, {"d": 0.0}, ValueError),
    (torch.optim.Adafactor, {"weight_decay": -0.1}, ValueError),
    (torch.optim.Muon, {"lr": -1.0}, ValueError),
    (torch.optim.Muon, {"momentum": -0.1}, ValueError),
    (torch.optim.Muon, {"adjust_lr_fn": "arbitrary"}, ValueError),
]


@pytest.mark.parametrize(("cls", "kwargs", "error"), TORCH_BAD, ids=str)
def test_torch_raises_the_same_types(cls, kwargs, error):
    """The types above are torch's: the same inputs fail there with them."""
    with pytest.raises(error):
        cls([torch.zeros(2, 3)], **kwargs)
