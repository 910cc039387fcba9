"""Optimizer states and updates as values: purity, fixed structure, checkpoints, vmap, both paths.

Every optimizer of the library, each with its stateful options on, crossed with dtypes and devices.
"""

from __future__ import annotations

import io

import pytest
import torch
from torch.func import vmap

from functional_nn import optim
from functional_nn._pytree import clone, tree_flatten, tree_leaves, tree_map, tree_structure
from functional_nn.optim import _foreach
from tests.helpers import assert_trees_close
from tests.tables import OPTIMIZERS, SHAPES, mlp_tree

DTYPES = [torch.float64, torch.float32]
TIGHT = {torch.float64: 1e-14, torch.float32: 1e-6}  # same ops, maybe fused differently
STEPS = 8  # RAdam switches to its rectified branch at step 6


def draw(gen, dtype, device, batch=()):
    return mlp_tree(
        [torch.randn(*batch, *s, generator=gen, dtype=dtype).to(device) for s in SHAPES]
    )


def run(opt, params, grads, state=None):
    """Params and state after applying `opt` to each grads tree in turn."""
    state = opt.init(params) if state is None else state
    for g in grads:
        updates, state = opt.update(g, state, params)
        params = optim.apply_updates(params, updates)
    return params, state


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_update_mutates_nothing(name, dtype, device):
    gen = torch.Generator().manual_seed(0)
    opt = OPTIMIZERS[name](1e-2)
    params, g = draw(gen, dtype, device), draw(gen, dtype, device)
    _, state = run(opt, params, [draw(gen, dtype, device) for _ in range(3)])
    copies = clone((params, g, state))
    updates, new_state = opt.update(g, state, params)
    new_params = optim.apply_updates(params, updates)
    for before, after in zip(tree_leaves(copies), tree_leaves((params, g, state))):
        assert torch.equal(before, after)
    # ...and the update did something: params and state moved.
    assert not all(torch.equal(a, b) for a, b in zip(tree_leaves(new_params), tree_leaves(params)))
    assert not all(torch.equal(a, b) for a, b in zip(tree_leaves(new_state), tree_leaves(state)))


def _layout(tree):
    leaves, spec = tree_flatten(tree)
    return spec, [(t.shape, t.dtype, t.device) for t in leaves]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_structure_is_fixed_and_on_the_params_device(name, dtype, device):
    gen = torch.Generator().manual_seed(1)
    opt = OPTIMIZERS[name](optim.schedules.exponential_decay(1e-2, 0.9))
    params = draw(gen, dtype, device)
    state = opt.init(params)
    layouts = [_layout(state)]
    for _ in range(STEPS):
        params, state = run(opt, params, [draw(gen, dtype, device)], state)
        layouts.append(_layout(state))
    assert all(layout == layouts[0] for layout in layouts)
    assert {leaf.device for leaf in tree_leaves(state)} == {params[0]["weight"].device}
    counted = lambda s: "count" in getattr(type(s), "_fields", ())
    counts = [s.count for s in tree_leaves(state, is_leaf=counted) if counted(s)]
    assert counts and all(
        c.dtype == torch.int64 and c.ndim == 0 and int(c) == STEPS for c in counts
    )


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_survives_torch_save_and_safe_load(name, device):
    gen = torch.Generator().manual_seed(2)
    opt = OPTIMIZERS[name](torch.tensor(1e-2, dtype=torch.float64, device=device))
    params = draw(gen, torch.float64, device)
    params, state = run(opt, params, [draw(gen, torch.float64, device) for _ in range(3)])
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert tree_structure(loaded) == tree_structure(state)
    assert all(torch.equal(a, b) for a, b in zip(tree_leaves(loaded), tree_leaves(state)))
    grads = [draw(gen, torch.float64, device) for _ in range(3)]
    went_on, resumed = run(opt, params, grads, state), run(opt, params, grads, loaded)
    assert all(torch.equal(a, b) for a, b in zip(tree_leaves(went_on), tree_leaves(resumed)))


def _stack(trees):
    return tree_map(lambda *xs: torch.stack(xs), *trees)


def _unstack(tree, k):
    return tree_map(lambda x: x[k], tree)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_vmap_over_params_equals_separate_runs(name, dtype, device):
    """K models in one vmapped update, each with its own learning rate: a batched 0-d tensor lr,
    with the optimizer built inside the vmapped function."""
    gen, k = torch.Generator().manual_seed(3), 3
    lrs = torch.tensor([1e-2, 3e-2, 1e-1], dtype=torch.float64, device=device)
    params = [draw(gen, dtype, device) for _ in range(k)]
    grads = [[draw(gen, dtype, device) for _ in range(k)] for _ in range(STEPS)]
    make = OPTIMIZERS[name]

    def step(p, s, g, lr):
        updates, s = make(lr).update(g, s, p)
        return optim.apply_updates(p, updates), s

    batched = _stack(params)
    state = vmap(lambda p, lr: make(lr).init(p))(batched, lrs)
    for g in grads:
        batched, state = vmap(step)(batched, state, _stack(g), lrs)
    for i in range(k):
        alone, alone_state = run(make(float(lrs[i])), params[i], [g[i] for g in grads])
        assert_trees_close(_unstack(batched, i), alone, TIGHT[dtype], f"model {i} under vmap")
        assert_trees_close(_unstack(state, i), alone_state, TIGHT[dtype], f"state {i} under vmap")
        assert float(optim.current_lr(_unstack(state, i))) == pytest.approx(
            float(optim.current_lr(alone_state)), rel=1e-15
        )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_multi_tensor_and_per_tensor_paths_agree(name, dtype, device, monkeypatch):
    """Outside vmap the update runs torch._foreach_* kernels; inside (a batch of one) it falls back
    to one op per tensor. Both must give the same trajectory."""
    paths = []
    real = _foreach.multi_tensor
    monkeypatch.setattr(_foreach, "multi_tensor", lambda ts: paths.append(real(ts)) or paths[-1])
    gen = torch.Generator().manual_seed(4)
    opt = OPTIMIZERS[name](1e-2)
    params = draw(gen, dtype, device)
    grads = [draw(gen, dtype, device) for _ in range(STEPS)]
    multi, multi_state = run(opt, params, grads)
    assert paths and all(paths)
    paths.clear()
    one = lambda tree: tree_map(lambda x: x.unsqueeze(0), tree)
    single, single_state = vmap(lambda p, *gs: run(opt, p, gs))(one(params), *map(one, grads))
    assert paths and not any(paths)
    assert_trees_close(_unstack(single, 0), multi, TIGHT[dtype], "per-tensor path")
    assert_trees_close(_unstack(single_state, 0), multi_state, TIGHT[dtype], "per-tensor state")


@pytest.mark.parametrize("lr", ["number", "tensor", "schedule"])
def test_current_lr_reports_the_next_updates_rate(lr, device):
    gen = torch.Generator().manual_seed(5)
    schedule = optim.schedules.step_decay(0.1, step_size=2, gamma=0.5)
    given = {"number": 0.1, "tensor": torch.tensor(0.1, device=device), "schedule": schedule}[lr]
    opt = optim.adam(given)
    params = draw(gen, torch.float64, device)
    state = opt.init(params)
    for count in range(6):
        expected = 0.1 * 0.5 ** (count // 2) if lr == "schedule" else 0.1
        reported = optim.current_lr(state)
        assert reported.dtype == torch.float64 and reported.device == params[0]["weight"].device
        assert float(reported) == pytest.approx(expected, rel=1e-7 if lr == "tensor" else 1e-15)
        params, state = run(opt, params, [draw(gen, torch.float64, device)], state)


@pytest.mark.parametrize("name", ["sgd", "adam", "radam"])
def test_update_compiles_to_one_graph_without_recompiling(name, device):
    """torch.compile traces a whole step (the multi-tensor path, step counts and schedules as
    tensors) with no graph break, and the changing count does not trigger a recompile."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(6)
    opt = OPTIMIZERS[name](optim.schedules.warmup_cosine_decay(0.0, 1e-2, 3, 20))
    params = draw(gen, torch.float64, device)
    grads = [draw(gen, torch.float64, device) for _ in range(STEPS)]

    def step(p, s, g):
        updates, s = opt.update(g, s, p)
        return optim.apply_updates(p, updates), s

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    eager, traced = (params, opt.init(params)), (params, opt.init(params))
    with torch._dynamo.config.patch(error_on_recompile=True):
        for g in grads:
            eager, traced = step(*eager, g), compiled(*traced, g)
    assert_trees_close(traced, eager, 1e-15, "compiled")


def test_vmapped_update_with_per_model_lr_compiles(device):
    """An ensemble step (vmap over params, state and lr) compiles too: under vmap the traced update
    takes the per-tensor path, as _foreach ops have no batching rule."""
    torch._dynamo.reset()
    gen, k = torch.Generator().manual_seed(7), 3
    lrs = torch.tensor([1e-2, 3e-2, 1e-1], dtype=torch.float64, device=device)
    params = _stack([draw(gen, torch.float64, device) for _ in range(k)])
    grads = [_stack([draw(gen, torch.float64, device) for _ in range(k)]) for _ in range(3)]

    def step(p, s, g, lr):
        updates, s = optim.adam(lr, amsgrad=True).update(g, s, p)
        return optim.apply_updates(p, updates), s

    state = vmap(lambda p, lr: optim.adam(lr, amsgrad=True).init(p))(params, lrs)
    compiled = torch.compile(vmap(step), backend="aot_eager", fullgraph=True)
    eager, traced = (params, state), (params, state)
    for g in grads:
        eager, traced = vmap(step)(*eager, g, lrs), compiled(*traced, g, lrs)
    assert_trees_close(traced, eager, 1e-15, "compiled ensemble step")


def test_grad_through_an_update_with_respect_to_a_tensor_lr(device):
    """A tensor lr is an ordinary input: torch.func.grad differentiates an update with respect to
    it (a hyper-gradient). First Adam step: p' = p - lr g / (|g| + eps), so d sum(p') / d lr =
    -sum(g / (|g| + eps))."""
    gen = torch.Generator().manual_seed(8)
    params, g = draw(gen, torch.float64, device), draw(gen, torch.float64, device)

    def total_after_one_step(lr):
        opt = optim.adam(lr)
        updates, _ = opt.update(g, opt.init(params), params)
        return sum(t.sum() for t in tree_leaves(optim.apply_updates(params, updates)))

    lr = torch.tensor(1e-2, dtype=torch.float64, device=device)
    expected = -sum((t / (t.abs() + 1e-8)).sum() for t in tree_leaves(g))
    assert float(torch.func.grad(total_after_one_step)(lr)) == pytest.approx(
        float(expected), rel=1e-14
    )
