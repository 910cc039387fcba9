"""Param groups: masked, multi_transform and param_groups against torch.optim's param_groups."""

from __future__ import annotations

import pytest
import torch

from functional_nn import optim
from functional_nn._pytree import clone, tree_leaves, tree_map
from functional_nn.optim.groups import MaskedNode, param_names
from tests.helpers import assert_trees_close

STEPS = 200


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [{"weight": (4, 3), "bias": (4,)}, {"weight": (2, 4), "bias": (2,)}]
    return [
        {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in layer.items()}
        for layer in shapes
    ]


def _grads(params, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [
        tree_map(lambda p: torch.randn(p.shape, generator=g, dtype=p.dtype), params)
        for _ in range(steps)
    ]


def _run(opt, params, stream, **extra):
    state = opt.init(params)
    for g in stream:
        updates, state = opt.update(g, state, params, **extra)
        params = optim.apply_updates(params, updates)
    return params, state


def _torch_run(torch_opt, groups_of_names, params, stream, **defaults):
    """torch.optim over named tensors, groups given as (names, overrides)."""
    named = dict(
        zip(param_names(params), (p.clone().requires_grad_() for p in tree_leaves(params)))
    )
    groups = [{"params": [named[n] for n in names], **kw} for names, kw in groups_of_names]
    opt = torch_opt(groups, **defaults)
    for g in stream:
        for p, gi in zip(named.values(), tree_leaves(g)):
            p.grad = gi.clone()
        opt.step()
    return [p.detach() for p in named.values()]


def test_param_names_are_dotted_paths():
    assert param_names(_params()) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert param_names({"layer1.bias": torch.zeros(1), "n": {"w": torch.zeros(1)}}) == [
        "layer1.bias",
        "n.w",
    ]


ADAM_GROUPS = [
    (lambda n: n.endswith("weight"), dict(weight_decay=0.1, betas=(0.8, 0.99))),
    (lambda n: n.endswith("bias"), dict(lr=2e-2, weight_decay=0.0, betas=(0.5, 0.9))),
]


@pytest.mark.parametrize(
    "ours, theirs, defaults, groups",
    [
        (optim.adamw, torch.optim.AdamW, dict(lr=1e-2), ADAM_GROUPS),
        (optim.adam, torch.optim.Adam, dict(lr=1e-2, eps=1e-6), ADAM_GROUPS),
        (
            optim.sgd,
            torch.optim.SGD,
            dict(lr=1e-2, momentum=0.9),
            [
                (["0.weight", "1.weight"], dict(weight_decay=1e-2, nesterov=True)),
                (["0.bias", "1.bias"], dict(lr=5e-2, momentum=0.5, dampening=0.1)),
            ],
        ),
    ],
)
def test_param_groups_equal_torch(ours, theirs, defaults, groups):
    params = _params()
    stream = _grads(params, STEPS)
    opt = optim.param_groups(ours, [{"params": s, **kw} for s, kw in groups], **defaults)
    got, state = _run(opt, params, stream)
    names = param_names(params)
    by_names = [([n for n in names if (s(n) if callable(s) else n in s)], kw) for s, kw in groups]
    expected = _torch_run(theirs, by_names, params, stream, **defaults)
    assert_trees_close(tree_leaves(got), expected, 1e-12)
    assert float(optim.current_lr(state, group=0)) == defaults["lr"]
    assert float(optim.current_lr(state, group=1)) == groups[1][1]["lr"]


def test_frozen_group_bitwise_unchanged():
    params = _params()
    params[1]["bias"] = torch.tensor([-0.0, 1.5], dtype=torch.float64)
    opt = optim.param_groups(
        optim.adam,
        [
            {"params": lambda n: n.startswith("0.")},
            {"params": lambda n: n.startswith("1."), "frozen": True},
        ],
    )
    got, _ = _run(opt, params, _grads(params, 5))
    for k in ("weight", "bias"):
        assert torch.equal(got[1][k], params[1][k])
        assert not torch.equal(got[0][k], params[0][k])
    assert torch.signbit(got[1]["bias"][0])  # -0.0 stays -0.0


def test_multi_transform_frozen_with_set_to_zero_and_state_holds_its_group():
    params = _params()
    labels = [{"weight": "train", "bias": "frozen"}, {"weight": "frozen", "bias": "train"}]
    opt = optim.multi_transform(
        {"train": optim.sgd(0.1, momentum=0.9), "frozen": optim.set_to_zero()}, labels
    )
    state = opt.init(params)
    buf = state.inner_states["train"].inner_state[0].momentum_buffer
    assert isinstance(buf[0]["bias"], MaskedNode) and buf[0]["weight"].shape == (4, 3)
    got, _ = _run(opt, params, _grads(params, 3))
    assert torch.equal(got[0]["bias"], params[0]["bias"])
    assert torch.equal(got[1]["weight"], params[1]["weight"])
    # the trained leaves follow sgd alone on them
    alone, _ = _run(
        optim.sgd(0.1, momentum=0.9),
        [params[0]["weight"]],
        [[g[0]["weight"]] for g in _grads(params, 3)],
    )
    assert torch.equal(got[0]["weight"], alone[0])


def test_masked_passes_masked_out_grads_through():
    params = _params()
    g = _grads(params, 1)[0]
    opt = optim.masked(optim.scale(-3.0), lambda p: tree_map(lambda x: x.ndim == 2, p))
    updates, _ = opt.update(g, opt.init(params), params)
    for layer, grad in zip(updates, g):
        assert layer["bias"] is grad["bias"]
        assert torch.equal(layer["weight"], -3.0 * grad["weight"])


def test_masked_tree_mask_equals_inner_on_subtree():
    params = _params()
    mask = [{"weight": True, "bias": False}, {"weight": False, "bias": True}]
    opt = optim.masked(optim.adam(1e-2), mask)
    stream = _grads(params, 10)
    got, _ = _run(opt, params, stream)
    sub = [params[0]["weight"], params[1]["bias"]]
    alone, _ = _run(optim.adam(1e-2), sub, [[g[0]["weight"], g[1]["bias"]] for g in stream])
    assert torch.equal(got[0]["weight"], alone[0]) and torch.equal(got[1]["bias"], alone[1])
    # masked-out leaves get their grads as updates: params + sum of grads
    expected = params[0]["bias"].clone()
    for g in stream:
        expected = expected + g[0]["bias"]
    assert torch.equal(got[0]["bias"], expected)


def test_errors():
    params = _params()
    with pytest.raises(ValueError, match="mask does not match"):
        optim.masked(optim.sgd(), [True, False]).init(params)
    labels = [{"weight": "a", "bias": "b"}, {"weight": "a", "bias": "c"}]
    with pytest.raises(ValueError, match="'c'"):
        optim.multi_transform({"a": optim.sgd(), "b": optim.sgd()}, labels).init(params)
    with pytest.raises(ValueError, match=r"'1\.bias' is in no group"):
        optim.param_groups(optim.sgd, [{"params": lambda n: n != "1.bias"}]).init(params)
    with pytest.raises(ValueError, match=r"'0\.weight' is in groups \[0, 1\]"):
        optim.param_groups(optim.sgd, [{"params": lambda n: True}, {"params": "0.weight"}]).init(
            params
        )
    with pytest.raises(ValueError, match="not params"):
        optim.param_groups(optim.sgd, [{"params": lambda n: True}, {"params": ["2.weight"]}]).init(
            params
        )
    with pytest.raises(ValueError, match='"params" key'):
        optim.param_groups(optim.sgd, [{"lr": 0.1}])
    with pytest.raises(TypeError, match="not called"):
        optim.param_groups(optim.sgd(), [{"params": "0.weight"}])
    with pytest.raises(ValueError, match="Invalid lr"):
        optim.param_groups(optim.sgd, [{"params": lambda n: True, "lr": -1.0}])
    with pytest.raises(ValueError, match="group=5"):
        optim.current_lr(
            optim.param_groups(optim.sgd, [{"params": lambda n: True}]).init(params), group=5
        )
    before = clone(params)
    with pytest.raises(ValueError):
        opt = optim.param_groups(optim.sgd, [{"params": lambda n: True}])
        opt.update(params[:1], opt.init(params), params)
    assert all(torch.equal(a, b) for a, b in zip(tree_leaves(params), tree_leaves(before)))
