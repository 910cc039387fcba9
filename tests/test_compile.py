"""fit(compile=...): the whole step compiled by torch.compile equals the eager path."""

import pytest
import torch

import functional_nn as fnn
from functional_nn.train import compiled_step
from tests.helpers import assert_trees_close

pytestmark = pytest.mark.slow  # each new (model, loss, opt) compiles for seconds on CPU

NET = fnn.mlp([6, 5, 3], init="torch")
OPTS = {"sgd": fnn.sgd(0.01, momentum=0.9), "adam": fnn.adam(0.01)}


def _data(device, dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    x, y = (
        torch.randn(20, 6, generator=g, dtype=dtype),
        torch.randn(20, 3, generator=g, dtype=dtype),
    )
    return x.to(device), y.to(device), NET.init(1, dtype=dtype, device=device)


@pytest.mark.parametrize("name", sorted(OPTS))
def test_compiled_fit_equals_eager_fit(name, device):
    x, y, params = _data(device)
    kwargs = dict(model=NET, steps=12, batch_size=8, seed=5)  # includes the short last batch
    eager = fnn.fit(params, x, y, OPTS[name], **kwargs)
    compiled = fnn.fit(params, x, y, OPTS[name], compile=True, **kwargs)
    # float32, 12 steps: the compiled kernels fuse and reorder the same arithmetic.
    assert_trees_close(compiled.params, eager.params, 1e-5, "compiled params")
    assert_trees_close(compiled.opt_state, eager.opt_state, 1e-5, "compiled opt_state")
    assert_trees_close(compiled.losses, eager.losses, 1e-5, "compiled losses")
    assert compiled.compile_time > 0.0 and eager.compile_time == 0.0


def test_the_compiled_step_is_reused_across_fits(device):
    x, y, params = _data(device)
    opt = OPTS["adam"]
    first = fnn.fit(params, x, y, opt, model=NET, steps=3, compile=True)
    hits = compiled_step.cache_info().hits
    again = fnn.fit(
        first.params,
        x,
        y,
        opt,
        model=NET,
        steps=3,
        compile=True,
        opt_state=first.opt_state,
        start_step=first.steps,
    )
    assert compiled_step.cache_info().hits == hits + 1
    whole = fnn.fit(params, x, y, opt, model=NET, steps=6)
    assert_trees_close(again.params, whole.params, 1e-5, "resumed compiled params")


def test_compile_rejects_an_unknown_mode():
    x, y, params = _data("cpu")
    with pytest.raises(
        ValueError, match=r"Invalid compile: 'fastest' \(expected one of \(True, False, 'default'"
    ):
        fnn.fit(params, x, y, OPTS["sgd"], model=NET, compile="fastest")


def test_more_compiled_steps_than_dynamos_recompile_limit():
    # torch.compile keeps 8 variants per code object; a sweep over 9 learning rates must not fail.
    x, y, params = _data("cpu")
    limit = torch._dynamo.config.recompile_limit
    for i in range(limit + 1):
        lr = 1e-3 * (i + 1)
        compiled = fnn.fit(params, x, y, fnn.sgd(lr), model=NET, steps=2, compile=True)
        eager = fnn.fit(params, x, y, fnn.sgd(lr), model=NET, steps=2)
        assert_trees_close(compiled.params, eager.params, 1e-6, f"params at lr {lr}")


def test_compiled_ensemble_equals_eager_ensemble():
    x, y, _ = _data("cpu")
    params = [NET.init(k) for k in range(3)]
    kwargs = dict(model=NET, steps=6, batch_size=8, seed=[1, 2, 3], lrs=[1e-3, 1e-2, 3e-2])
    eager = fnn.fit_ensemble(params, x, y, lambda lr: fnn.adam(lr), **kwargs)
    compiled = fnn.fit_ensemble(params, x, y, lambda lr: fnn.adam(lr), compile=True, **kwargs)
    assert_trees_close(compiled.params, eager.params, 1e-5, "compiled ensemble params")
    assert_trees_close(compiled.losses, eager.losses, 1e-5, "compiled ensemble losses")
    assert compiled.compile_time > 0.0 and eager.compile_time == 0.0


def test_fit_compiled_with_cuda_graphs_equals_eager(device):
    # On CUDA each replay of a graph overwrites its outputs, so the step hands the loop clones;
    # on CPU torch.compile runs the same mode without graphs, and the same wrapper.
    x, y, params = _data(device)
    kwargs = dict(model=NET, steps=12, batch_size=8, seed=5)
    eager = fnn.fit(params, x, y, OPTS["adam"], **kwargs)
    graphed = fnn.fit(params, x, y, OPTS["adam"], compile="reduce-overhead", **kwargs)
    assert_trees_close(graphed.params, eager.params, 1e-5, "graphed params")
    assert_trees_close(graphed.losses, eager.losses, 1e-5, "graphed losses")
