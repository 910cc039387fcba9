"""Losses: the oracle against central differences; functional_nn against the oracle and against
torch.nn.functional (float64), values and gradients; the checks on bad targets."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from functional_nn import losses
from oracle import losses as olosses
from oracle.gradcheck import numerical_gradient, rel_error
from tests.helpers import assert_trees_close
from tests.tables import LOSSES, SUM_LOSSES, make_target, target_to_torch

SHAPE = (5, 4)


def _case(kind: str, seed: int):
    rng = np.random.default_rng(seed)
    return 1.5 * rng.standard_normal(SHAPE), make_target(kind, SHAPE, rng)


@pytest.mark.parametrize("fn, oracle, reference, kind", LOSSES + SUM_LOSSES)
def test_oracle_dpred_matches_central_differences(fn, oracle, reference, kind):
    pred, target = _case(kind, 0)
    value, dpred = oracle(pred, target)
    numeric = numerical_gradient(lambda: oracle(pred, target)[0], pred)
    assert np.isfinite(value) and dpred.shape == pred.shape
    assert rel_error(dpred, numeric) <= 1e-7


@pytest.mark.parametrize("fn, oracle, reference, kind", LOSSES + SUM_LOSSES)
def test_loss_and_its_gradient_match_the_oracle_and_torch(fn, oracle, reference, kind, device):
    pred, target = _case(kind, 1)
    value, dpred = oracle(pred, target)
    p, t = torch.tensor(pred, device=device), target_to_torch(target, device)
    grad, got = torch.func.grad_and_value(fn)(p, t)
    ref_grad, ref = torch.func.grad_and_value(reference)(p, t)
    assert got.shape == () and got.device == p.device
    assert_trees_close(got, np.array(value), rtol=1e-14, name="loss vs oracle")
    assert_trees_close(grad, dpred, rtol=1e-13, name="dpred vs oracle")
    assert_trees_close(got, ref, rtol=1e-14, name="loss vs torch")
    assert_trees_close(grad, ref_grad, rtol=1e-13, name="dpred vs torch")


@pytest.mark.parametrize("fn, oracle, reference, kind", LOSSES)
def test_float32_loss_matches_torch(fn, oracle, reference, kind, device):
    pred, target = _case(kind, 2)
    p, t = (
        torch.tensor(pred, dtype=torch.float32, device=device),
        target_to_torch(target, device, torch.float32),
    )
    got, ref = fn(p, t), reference(p, t)
    assert got.dtype == torch.float32
    assert_trees_close(got, ref, rtol=1e-6, name="float32 loss")


def test_default_reductions_are_torchs():
    pred, target = _case("regression", 3)
    p, t = torch.tensor(pred), torch.tensor(target)
    assert torch.equal(losses.mse(p, t), losses.mse(p, t, reduction="mean"))
    assert torch.equal(losses.sse(p, t), losses.mse(p, t, reduction="sum"))
    assert (
        rel_error(losses.mse(p, t, reduction="sum").numpy(), (p.numel() * losses.mse(p, t)).numpy())
        <= 1e-15
    )
    labels = torch.tensor([0, 3, 1, 2, 3])
    assert (
        rel_error(
            losses.cross_entropy(p, labels, reduction="sum").numpy(),
            (5 * losses.cross_entropy(p, labels)).numpy(),
        )
        <= 1e-15
    )


def test_cross_entropy_and_bce_are_stable_at_huge_logits(device):
    logits = np.array([[1e4, -1e4, 0.0], [-3e3, 2e3, 2e3]])
    labels = np.array([1, 0])
    value, dpred = olosses.cross_entropy(logits, labels)
    p = torch.tensor(logits, device=device)
    # logit - logsumexp cancels ~11 bits at |logit| ~ 2e3, so agreement is ~1e-13, not 1e-16.
    grad, got = torch.func.grad_and_value(losses.cross_entropy)(
        p, torch.tensor(labels, device=device)
    )
    assert np.isfinite(value) and value > 1e3
    assert_trees_close(got, np.array(value), rtol=1e-12, name="cross_entropy")
    assert_trees_close(grad, dpred, rtol=1e-12, name="d cross_entropy")
    binary = np.array(
        [[0.0, 1.0, 0.0], [1.0, 0.0, 0.25]]
    )  # logit 0 with target 0: gradient 1/2 / 6
    value, dpred = olosses.binary_cross_entropy_with_logits(logits, binary)
    grad, got = torch.func.grad_and_value(losses.binary_cross_entropy_with_logits)(
        p, torch.tensor(binary, device=device)
    )
    assert np.isfinite(value)
    assert_trees_close(got, np.array(value), rtol=1e-12, name="bce")
    assert_trees_close(grad, dpred, rtol=1e-12, name="d bce")


def test_cross_entropy_takes_any_integer_label_dtype_and_one_hot_probabilities():
    pred = torch.tensor(_case("labels", 4)[0])
    labels = torch.tensor([0, 3, 1, 2, 3])
    ref = losses.cross_entropy(pred, labels)
    assert torch.equal(losses.cross_entropy(pred, labels.to(torch.int32)), ref)
    one_hot = torch.eye(4, dtype=torch.float64)[labels]
    assert rel_error(losses.cross_entropy(pred, one_hot).numpy(), ref.numpy()) <= 1e-15


def test_cross_entropy_composes_with_vmap_per_example():
    pred, labels = torch.tensor(_case("labels", 5)[0]), torch.tensor([0, 3, 1, 2, 3])
    each = torch.func.vmap(lambda p, t: losses.cross_entropy(p[None], t[None]))(pred, labels)
    assert_trees_close(
        each.mean(), losses.cross_entropy(pred, labels), rtol=1e-15, name="mean of per-example"
    )


def test_get_loss_resolves_names_and_callables():
    assert losses.get_loss("huber") is losses.huber
    custom = partial(losses.huber, delta=2.0)
    assert losses.get_loss(custom) is custom


def _pred():
    return torch.zeros(5, 3, dtype=torch.float64)


BAD_CALLS = [
    pytest.param(
        lambda: losses.get_loss("hinge"),
        ValueError,
        r"Unknown loss 'hinge'.*'binary_cross_entropy_with_logits'.*'sse'",
        id="unknown",
    ),
    pytest.param(
        lambda: losses.get_loss(None),
        TypeError,
        r"loss must be a name or a callable.*NoneType",
        id="loss-type",
    ),
    pytest.param(
        lambda: losses.mse(_pred(), _pred(), reduction="avg"),
        ValueError,
        r"Unknown reduction 'avg'.*'mean', 'sum', 'none'",
        id="reduction",
    ),
    pytest.param(
        lambda: losses.mse(_pred(), torch.zeros(5, 1)),
        ValueError,
        r"mse: target has shape \(5, 1\), but pred has shape \(5, 3\)",
        id="mse-shape",
    ),
    pytest.param(
        lambda: losses.l1(_pred(), [0.0] * 15),
        TypeError,
        r"l1: target must be a torch.Tensor, got list",
        id="l1-type",
    ),
    pytest.param(
        lambda: losses.huber(_pred(), _pred(), delta=0.0),
        ValueError,
        r"huber: delta must be > 0, got 0.0",
        id="huber-delta",
    ),
    pytest.param(
        lambda: losses.cross_entropy(torch.tensor(0.0), torch.tensor(1)),
        ValueError,
        r"pred must be \(N, C, ...\) or \(C,\), got a 0-d tensor",
        id="ce-pred",
    ),
    pytest.param(
        lambda: losses.cross_entropy(_pred(), torch.zeros(5, 1, dtype=torch.long)),
        ValueError,
        r"labels must have shape \(5,\).*got \(5, 1\)",
        id="ce-labels-shape",
    ),
    pytest.param(
        lambda: losses.cross_entropy(_pred(), torch.zeros(5)),
        ValueError,
        r"integer class labels of shape \(5,\) or floating class probabilities of shape \(5, 3\), got float32 of shape \(5,\)",
        id="ce-float-labels",
    ),
    pytest.param(
        lambda: losses.cross_entropy(_pred(), torch.zeros(5, dtype=torch.bool)),
        ValueError,
        r"got bool of shape \(5,\)",
        id="ce-bool",
    ),
    pytest.param(
        lambda: losses.binary_cross_entropy_with_logits(_pred(), torch.zeros(3, 5)),
        ValueError,
        r"target has shape \(3, 5\)",
        id="bce-shape",
    ),
    pytest.param(
        lambda: losses.check("cross_entropy", (5, 3), torch.tensor([0, 1, 3, 2, 0])),
        ValueError,
        r"class labels for 3 classes must lie in \[0, 2\], got values from 0 to 3",
        id="check-label-high",
    ),
    pytest.param(
        lambda: losses.check(losses.cross_entropy, (5, 3), torch.tensor([0, -1, 2, 2, 0])),
        ValueError,
        r"must lie in \[0, 2\], got values from -1 to 2",
        id="check-label-low",
    ),
    pytest.param(
        lambda: losses.check(
            losses.binary_cross_entropy_with_logits, (2, 2), torch.tensor([[0.0, 1.0], [2.0, 0.5]])
        ),
        ValueError,
        r"targets must lie in \[0, 1\], got values from 0.0 to 2.0",
        id="check-bce-range",
    ),
    pytest.param(
        lambda: losses.check(partial(losses.mse, reduction="avg"), (5, 3), _pred()),
        ValueError,
        r"Unknown reduction 'avg'",
        id="check-options",
    ),
    pytest.param(
        lambda: losses.check("mse", (5, 3), torch.zeros(5)),
        ValueError,
        r"mse: target has shape \(5,\), but pred has shape \(5, 3\)",
        id="check-shape",
    ),
    pytest.param(
        lambda: losses.check("mse", (5, 3), np.zeros((5, 3))),
        TypeError,
        r"target must be a torch.Tensor, got ndarray",
        id="check-type",
    ),
]


@pytest.mark.parametrize("call, error, message", BAD_CALLS)
def test_bad_loss_input_is_rejected(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_check_accepts_fitting_targets_and_leaves_own_losses_alone():
    losses.check("cross_entropy", (5, 3), torch.tensor([0, 1, 2, 2, 0]))
    losses.check(partial(losses.cross_entropy, reduction="sum"), (5, 3), torch.full((5, 3), 1 / 3))
    losses.check("binary_cross_entropy_with_logits", (5, 3), torch.ones(5, 3))
    losses.check(lambda pred, target: (pred - target).abs().max(), (5, 3), torch.zeros(2))


def test_check_reads_pred_shape_only_so_it_runs_on_meta_tensors():
    target = torch.tensor([0, 1, 2, 2, 0])
    losses.check("cross_entropy", torch.empty(5, 3, device="meta").shape, target)
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        losses.check("cross_entropy", (4, 3), target)
