"""Gradients at kinks: the value each one takes there, stated, on every torch release.

Where a function is not differentiable at a point (relu and |x| at 0, huber where |d| = delta, a
clip at its bound), the gradient there is a convention. A convention left to a kernel's choice at
a tie can change between releases (torch 2.14's clamp drops the gradient at its bound, 2.13's
passed it), so each row states the value, and the test checks functional_nn gives it, with
`torch.func.grad` and with `torch.autograd.grad`, and that torch.nn.functional agrees where it has
the same function.
"""

import functools

import pytest
import torch
import torch.nn.functional as F

import functional_nn as fnn
from functional_nn.optim import clip_by_global_norm, clip_by_value


def _transform_output(transform, g):
    """The updates a stateless transform makes from the gradient `g` (a one-leaf tree)."""
    updates, _ = transform.update([g], transform.init([g]), [g])
    return updates[0]


def _zeros_target(fn):
    return lambda x: fn(x, torch.zeros_like(x), reduction="sum")


def _halves_target(fn):
    return lambda x: fn(x, torch.full_like(x, 0.5), reduction="sum")


# (name, ours: x -> tensor, torch.nn.functional's or None, the kinks, the gradient stated there)
KINKS = [
    ("relu at 0", fnn.relu, F.relu, [0.0], [0.0]),
    ("leaky_relu at 0", fnn.leaky_relu, F.leaky_relu, [0.0], [0.01]),
    ("l1 at 0", _zeros_target(fnn.l1), _zeros_target(F.l1_loss), [0.0], [0.0]),
    (
        "huber at |d| = delta",
        _zeros_target(functools.partial(fnn.huber, delta=0.5)),
        _zeros_target(functools.partial(F.huber_loss, delta=0.5)),
        [-0.5, 0.0, 0.5],
        [-0.5, 0.0, 0.5],
    ),
    # sigmoid(0) - target: the smooth function's true derivative, not a kink's convention.
    (
        "bce_with_logits at logit 0",
        _halves_target(fnn.binary_cross_entropy_with_logits),
        _halves_target(F.binary_cross_entropy_with_logits),
        [0.0, 0.0],
        [0.0, 0.0],
    ),
    (
        "bce_with_logits at logit 0, target 0",
        _zeros_target(fnn.binary_cross_entropy_with_logits),
        _zeros_target(F.binary_cross_entropy_with_logits),
        [0.0],
        [0.5],
    ),
    # A bound is inside the closed interval: it passes its gradient.
    (
        "clip_by_value at its bounds",
        functools.partial(_transform_output, clip_by_value(1.0)),
        None,
        [-1.0, 1.0, 2.0],
        [1.0, 1.0, 0.0],
    ),
    # ||g|| + 1e-6 = max_norm exactly (||(3, 4)|| = 5): the scale's branch, whose derivative of
    # sum(g * max_norm / (||g|| + 1e-6)) is 1 - (g_1 + g_2) g_i / (||g|| (||g|| + 1e-6)).
    (
        "clip_by_global_norm at max_norm",
        functools.partial(_transform_output, clip_by_global_norm(5 + 1e-6)),
        None,
        [3.0, 4.0],
        [1 - 7 * 3 / (5 * (5 + 1e-6)), 1 - 7 * 4 / (5 * (5 + 1e-6))],
    ),
]


@pytest.mark.parametrize("name, ours, reference, at, stated", KINKS, ids=[k[0] for k in KINKS])
def test_gradient_at_a_kink_is_the_stated_one(name, ours, reference, at, stated):
    x = torch.tensor(at, dtype=torch.float64)
    expected = torch.tensor(stated, dtype=torch.float64)
    by_func = torch.func.grad(lambda x: ours(x).sum())(x)
    leaf = x.clone().requires_grad_()
    (by_autograd,) = torch.autograd.grad(ours(leaf).sum(), leaf)
    torch.testing.assert_close(by_func, expected, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(by_autograd, expected, rtol=1e-12, atol=1e-15)
    if reference is not None:
        torch.testing.assert_close(
            torch.func.grad(lambda x: reference(x).sum())(x), expected, rtol=1e-12, atol=1e-15
        )


def test_a_zero_initialised_classifier_gets_torchs_bias_gradient():
    """The report that found the BCE bug: a zero output layer, so every logit is exactly 0."""
    x = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = (torch.arange(8) % 3 == 0).to(torch.float64).unsqueeze(1)
    params = [
        {
            "weight": torch.zeros(1, 3, dtype=torch.float64),
            "bias": torch.zeros(1, dtype=torch.float64),
        }
    ]
    net = fnn.mlp([3, 1])
    grads = torch.func.grad(lambda p: fnn.binary_cross_entropy_with_logits(net.apply(p, x), y))(
        params
    )
    # mean over 8 of sigmoid(0) - y: (8 * 0.5 - 3) / 8.
    torch.testing.assert_close(
        grads[0]["bias"], torch.tensor([(8 * 0.5 - 3) / 8], dtype=torch.float64)
    )


def test_clips_keep_nan():
    g = torch.tensor([float("nan"), 0.5], dtype=torch.float64)
    assert torch.isnan(_transform_output(clip_by_value(1.0), g)[0])
    assert torch.isnan(_transform_output(clip_by_global_norm(1.0), g)).all()
    assert torch.isnan(
        fnn.binary_cross_entropy_with_logits(g[:1], torch.zeros(1, dtype=torch.float64))
    )
