"""Stateful networks (batch_norm + dropout) under fit(compile=True) and fit_ensemble(compile=True):
the compiled step is the eager one, running statistics and keyed masks included."""

from __future__ import annotations

import pytest
import torch

import functional_nn as fnn
from functional_nn import blocks, optim
from tests.helpers import assert_trees_close

pytestmark = pytest.mark.slow  # each new (model, loss, opt) compiles for seconds on CPU

STEPS = 6


# Full batches of 9 and 7 hidden units: dropout masks of 63 elements, not a multiple of any vector
# width (the compiled mask at such sizes once came out wrong and corrupted the heap: dropout.py).
def _net():
    return fnn.serial(
        fnn.dense(5, 7, bias=False, init="torch"),  # batch_norm cancels a bias
        blocks.batch_norm(7),
        "relu",
        blocks.dropout(0.3),
        fnn.dense(7, 3, init="torch"),
    )


def _data(n=9):
    g = torch.Generator().manual_seed(4)
    return (
        torch.randn(n, 5, generator=g, dtype=torch.float64),
        torch.randn(n, 3, generator=g, dtype=torch.float64),
    )


def _assert_results_close(compiled, eager, tol):
    for field in ("params", "opt_state", "model_state", "losses"):
        worst = assert_trees_close(
            getattr(compiled, field), getattr(eager, field), tol, f"compiled {field}"
        )
        assert worst <= tol


def test_compiled_stateful_fit_equals_eager_and_leaves_the_global_rng_alone():
    net, (x, y) = _net(), _data()
    params = net.init(0, dtype=torch.float64)
    # SGD, not Adam: the bias before batch_norm has a zero gradient up to rounding, which Adam
    # would scale up to steps of lr
    opt = optim.sgd(0.1, momentum=0.9)
    kwargs = dict(model=net, steps=STEPS, loss="mse", seed=7)
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    eager = fnn.fit(params, x, y, opt, **kwargs)
    compiled = fnn.fit(params, x, y, opt, compile=True, **kwargs)
    assert torch.equal(torch.get_rng_state(), rng)  # neither fit read nor advanced it
    # float64: the compiled kernels fuse and reorder the same arithmetic, rounding only
    _assert_results_close(compiled, eager, 1e-12)
    assert int(compiled.model_state[1]["num_batches_tracked"]) == STEPS
    assert compiled.compile_time > 0.0 and eager.compile_time == 0.0
    # the masks are the seed's: another seed trains to other params
    other = fnn.fit(params, x, y, opt, compile=True, **{**kwargs, "seed": 8})
    assert not torch.allclose(other.params[0]["weight"], compiled.params[0]["weight"])


def test_compiled_stateful_ensemble_equals_eager_ensemble():
    net, (x, y) = _net(), _data()
    params = [net.init(k, dtype=torch.float64) for k in range(3)]
    kwargs = dict(model=net, steps=STEPS, loss="mse", lrs=[1e-2, 3e-2, 1e-1])
    torch.manual_seed(5)
    rng = torch.get_rng_state()
    eager = fnn.fit_ensemble(params, x, y, lambda lr: optim.sgd(lr, momentum=0.9), **kwargs)
    compiled = fnn.fit_ensemble(
        params, x, y, lambda lr: optim.sgd(lr, momentum=0.9), compile=True, **kwargs
    )
    assert torch.equal(torch.get_rng_state(), rng)
    _assert_results_close(compiled, eager, 1e-12)
    counts = compiled.model_state[1]["num_batches_tracked"]
    assert counts.tolist() == [STEPS] * 3
    assert compiled.compile_time > 0.0 and eager.compile_time == 0.0


def test_compiled_fit_of_a_from_module_dropout_network_equals_eager():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = torch.nn.Sequential(
            torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(7, 3)
        ).double()
    net, params = fnn.from_module(module)
    x, y = _data()
    kwargs = dict(model=net, steps=STEPS, loss="mse", seed=4)
    rng = torch.get_rng_state()
    eager = fnn.fit(params, x, y, optim.sgd(0.1, momentum=0.9), **kwargs)
    compiled = fnn.fit(params, x, y, optim.sgd(0.1, momentum=0.9), compile=True, **kwargs)
    assert torch.equal(torch.get_rng_state(), rng)  # the masks are keyed, never torch's RNG
    _assert_results_close(compiled, eager, 1e-12)
