"""The building blocks: clipping against torch.nn.utils and the oracle, chain, lr forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import oracle.optim
from functional_nn import optim
from functional_nn._pytree import tree_leaves, tree_map
from tests.helpers import assert_trees_close, to_numpy
from tests.tables import SHAPES, mlp_tree

DTYPES = [torch.float64, torch.float32]
RTOL = {torch.float64: 1e-15, torch.float32: 1e-6}


def draw(seed, dtype, device, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return mlp_tree([scale * torch.randn(s, generator=gen, dtype=dtype).to(device) for s in SHAPES])


def torch_clipped(grads, clip):
    """Apply torch.nn.utils' in-place clipping to params whose .grad are copies of `grads`."""
    params = [torch.zeros_like(g, requires_grad=True) for g in tree_leaves(grads)]
    for p, g in zip(params, tree_leaves(grads)):
        p.grad = g.clone()
    clip(params)
    return [p.grad for p in params]


@pytest.mark.parametrize("max_norm", [0.5, 100.0], ids=["clips", "leaves-alone"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_clip_by_global_norm_equals_clip_grad_norm(max_norm, dtype, device):
    grads = draw(0, dtype, device)
    t = optim.clip_by_global_norm(max_norm)
    ours, _ = t.update(grads, t.init(grads))
    theirs = torch_clipped(
        grads, lambda ps: torch.nn.utils.clip_grad_norm_(ps, max_norm, foreach=False)
    )
    reference = oracle.optim.clip_grad_norm(tree_leaves(to_numpy(grads)), max_norm)
    assert_trees_close(tree_leaves(ours), theirs, RTOL[dtype], "vs clip_grad_norm_")
    assert_trees_close(tree_leaves(ours), reference, RTOL[dtype], "vs oracle")
    norm = lambda tree: np.sqrt(sum(float((g.double() ** 2).sum()) for g in tree_leaves(tree)))
    if norm(grads) > max_norm:
        assert norm(ours) == pytest.approx(max_norm, rel=1e-5)
    else:
        assert all(torch.equal(a, b) for a, b in zip(tree_leaves(ours), tree_leaves(grads)))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_clip_by_value_equals_clip_grad_value(dtype, device):
    grads = draw(1, dtype, device)
    t = optim.clip_by_value(0.5)
    ours, _ = t.update(grads, t.init(grads))
    theirs = torch_clipped(
        grads, lambda ps: torch.nn.utils.clip_grad_value_(ps, 0.5, foreach=False)
    )
    reference = oracle.optim.clip_grad_value(tree_leaves(to_numpy(grads)), 0.5)
    assert_trees_close(tree_leaves(ours), theirs, 0.0, "vs clip_grad_value_")
    assert_trees_close(tree_leaves(ours), reference, 0.0, "vs oracle")
    assert max(float(g.abs().max()) for g in tree_leaves(ours)) == 0.5


def _tree_level(t):
    """The same transform, hiding its list-level update, so chain takes its tree-level path."""
    return optim.GradientTransformation(t.init, lambda g, s, p=None: t.update(g, s, p))


def test_chain_of_tree_level_transforms_equals_the_list_level_chain(device):
    parts = lambda: [
        optim.clip_by_global_norm(1.0),
        optim.add_decayed_weights(0.1),
        optim.scale_by_adam(),
        optim.scale_by_learning_rate(1e-2),
    ]
    fast, slow = optim.chain(*parts()), optim.chain(*map(_tree_level, parts()))
    params = draw(2, torch.float64, device)
    fast_state, slow_state = fast.init(params), slow.init(params)
    for seed in range(3, 8):
        g = draw(seed, torch.float64, device)
        fast_updates, fast_state = fast.update(g, fast_state, params)
        slow_updates, slow_state = slow.update(g, slow_state, params)
        assert all(
            torch.equal(a, b) for a, b in zip(tree_leaves(fast_updates), tree_leaves(slow_updates))
        )
        params = optim.apply_updates(params, fast_updates)
    assert all(torch.equal(a, b) for a, b in zip(tree_leaves(fast_state), tree_leaves(slow_state)))


def test_chain_applies_transforms_in_order(device):
    g = draw(3, torch.float64, device)
    params = draw(4, torch.float64, device)
    t = optim.chain(optim.add_decayed_weights(0.5), optim.scale(3.0))
    updates, state = t.update(g, t.init(params), params)
    expected = [3.0 * (a + 0.5 * p) for a, p in zip(tree_leaves(g), tree_leaves(params))]
    assert_trees_close(tree_leaves(updates), expected, 1e-15)
    assert state == (optim.EmptyState(), optim.EmptyState())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_learning_rate_as_number_tensor_or_schedule_give_the_same_step(dtype, device):
    g = draw(5, dtype, device)
    forms = [
        0.25,
        torch.tensor(0.25, dtype=torch.float64, device=device),
        optim.schedules.constant(0.25),
    ]
    results = []
    for lr in forms:
        t = optim.scale_by_learning_rate(lr)
        updates, state = t.update(g, t.init(g))
        results.append(tree_leaves(updates))
        assert float(optim.current_lr(state)) == 0.25 and int(state.count) == 1
    expected = [-0.25 * x for x in tree_leaves(g)]
    for r in results:
        assert all(torch.equal(a, b) for a, b in zip(r, expected))


def test_apply_updates_adds_and_keeps_the_tree(device):
    params, updates = draw(6, torch.float64, device), draw(7, torch.float64, device)
    new = optim.apply_updates(params, updates)
    assert [list(layer) for layer in new] == [["weight", "bias"], ["weight", "bias"]]
    assert all(torch.equal(n, p + u) for n, p, u in zip(*map(tree_leaves, (new, params, updates))))


def test_chain_forwards_extra_args_to_the_transforms_that_take_them():
    seen = []

    def reads_value(grads, state, params=None, **extra_args):
        seen.append(sorted(extra_args))
        return tree_map(lambda g: g * extra_args["value"], grads), state

    takes = optim.GradientTransformationExtraArgs(lambda p: optim.EmptyState(), reads_value)
    # A plain transform's update takes no extra arguments: chain must not pass it any.
    opt = optim.chain(optim.scale(2.0), takes, optim.scale(-1.0))
    assert isinstance(opt, optim.GradientTransformationExtraArgs)
    assert not isinstance(optim.chain(optim.scale(2.0)), optim.GradientTransformationExtraArgs)
    params = {"w": torch.ones(3, dtype=torch.float64)}
    updates, _ = opt.update(
        params, opt.init(params), params, value=torch.tensor(3.0), value_fn=None
    )
    assert seen == [["value", "value_fn"]]
    assert torch.equal(updates["w"], torch.full((3,), -6.0, dtype=torch.float64))
