"""Every loss with its torch.nn.functional options three ways, float64: the oracle against central
differences, functional_nn (torch.func.grad) against the oracle and against torch.nn.functional."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from functional_nn import losses
from oracle import losses as olosses
from oracle.gradcheck import numerical_gradient
from tests.helpers import assert_trees_close

R = np.random.default_rng


def _normal(shape):
    return lambda rng: 1.5 * rng.standard_normal(shape)


def _labels(shape, classes, ignore=None):
    def make(rng):
        y = rng.integers(0, classes, size=shape)
        if ignore is not None:
            y.flat[::3] = ignore
        return y

    return make


def _probs(shape, axis=1):
    def make(rng):
        e = np.exp(rng.standard_normal(shape))
        return e / e.sum(axis=axis, keepdims=True)

    return make


def _uniform(shape, low=0.05, high=0.95):
    return lambda rng: rng.uniform(low, high, shape)


W4 = np.array([0.5, 2.0, 1.0, 1.5])
# id: (ours, oracle (None: torch is the second way), torch, pred maker, target maker, options: numpy arrays become tensors)
CASES = {
    "mse-none": (
        losses.mse,
        None,
        F.mse_loss,
        _normal((4, 3)),
        _normal((4, 3)),
        {"reduction": "none"},
    ),
    "smooth_l1(0.5)": (
        losses.smooth_l1,
        olosses.smooth_l1,
        F.smooth_l1_loss,
        _normal((5, 4)),
        _normal((5, 4)),
        {"beta": 0.5},
    ),
    "smooth_l1(0)-sum": (
        losses.smooth_l1,
        olosses.smooth_l1,
        F.smooth_l1_loss,
        _normal((5, 4)),
        _normal((5, 4)),
        {"beta": 0.0, "reduction": "sum"},
    ),
    "smooth_l1-none": (
        losses.smooth_l1,
        olosses.smooth_l1,
        F.smooth_l1_loss,
        _normal((5, 4)),
        _normal((5, 4)),
        {"reduction": "none"},
    ),
    "ce-weight-ignore-smooth": (
        losses.cross_entropy,
        olosses.cross_entropy_nd,
        F.cross_entropy,
        _normal((6, 4)),
        _labels((6,), 4, ignore=-100),
        {"weight": W4, "label_smoothing": 0.2},
    ),
    "ce-kdim-ignore1": (
        losses.cross_entropy,
        olosses.cross_entropy_nd,
        F.cross_entropy,
        _normal((3, 4, 3, 2)),
        _labels((3, 3, 2), 4, ignore=1),
        {"ignore_index": 1},
    ),
    "ce-kdim-none-weight": (
        losses.cross_entropy,
        olosses.cross_entropy_nd,
        F.cross_entropy,
        _normal((3, 4, 5)),
        _labels((3, 5), 4),
        {"weight": W4, "reduction": "none"},
    ),
    "ce-probs-kdim-smooth-weight": (
        losses.cross_entropy,
        olosses.cross_entropy_nd,
        F.cross_entropy,
        _normal((3, 4, 5)),
        _probs((3, 4, 5)),
        {"weight": W4, "label_smoothing": 0.1},
    ),
    "ce-probs-sum": (
        losses.cross_entropy,
        olosses.cross_entropy_nd,
        F.cross_entropy,
        _normal((5, 4)),
        _probs((5, 4)),
        {"reduction": "sum"},
    ),
    "nll-weight-ignore": (
        losses.nll,
        olosses.nll,
        F.nll_loss,
        _normal((6, 4)),
        _labels((6,), 4, ignore=-100),
        {"weight": W4},
    ),
    "nll-kdim-none": (
        losses.nll,
        olosses.nll,
        F.nll_loss,
        _normal((2, 4, 3, 3)),
        _labels((2, 3, 3), 4, ignore=0),
        {"ignore_index": 0, "reduction": "none"},
    ),
    "bce": (
        losses.binary_cross_entropy,
        olosses.binary_cross_entropy,
        F.binary_cross_entropy,
        _uniform((5, 3)),
        _uniform((5, 3), 0.0, 1.0),
        {},
    ),
    "bce-weight-sum": (
        losses.binary_cross_entropy,
        olosses.binary_cross_entropy,
        F.binary_cross_entropy,
        _uniform((5, 3)),
        _uniform((5, 3), 0.0, 1.0),
        {"weight": np.array([0.5, 1.0, 2.0]), "reduction": "sum"},
    ),
    "bce_logits-weight-pos_weight": (
        losses.binary_cross_entropy_with_logits,
        olosses.binary_cross_entropy_with_logits_full,
        F.binary_cross_entropy_with_logits,
        _normal((5, 3)),
        _uniform((5, 3), 0.0, 1.0),
        {"weight": np.array([[0.5], [1], [2], [1], [3]]), "pos_weight": np.array([0.5, 1.0, 3.0])},
    ),
    "bce_logits-none": (
        losses.binary_cross_entropy_with_logits,
        olosses.binary_cross_entropy_with_logits_full,
        F.binary_cross_entropy_with_logits,
        _normal((5, 3)),
        _uniform((5, 3), 0.0, 1.0),
        {"reduction": "none"},
    ),
    "kl_div": (losses.kl_div, olosses.kl_div, F.kl_div, _normal((4, 5)), _probs((4, 5)), {}),
    "kl_div-batchmean": (
        losses.kl_div,
        olosses.kl_div,
        F.kl_div,
        _normal((4, 5)),
        _probs((4, 5)),
        {"reduction": "batchmean"},
    ),
    "kl_div-log_target-sum": (
        losses.kl_div,
        olosses.kl_div,
        F.kl_div,
        _normal((4, 5)),
        _normal((4, 5)),
        {"reduction": "sum", "log_target": True},
    ),
    "poisson": (
        losses.poisson_nll,
        olosses.poisson_nll,
        F.poisson_nll_loss,
        _normal((4, 3)),
        lambda rng: rng.poisson(2.0, (4, 3)).astype(float),
        {},
    ),
    "poisson-rate-full": (
        losses.poisson_nll,
        olosses.poisson_nll,
        F.poisson_nll_loss,
        _uniform((4, 3), 0.5, 3.0),
        lambda rng: rng.poisson(2.0, (4, 3)).astype(float),
        {"log_input": False, "full": True},
    ),
}


def _tensors(options):
    return {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}


def _case(name, seed):
    ours, oracle, ref, make_pred, make_target, options = CASES[name]
    rng = R(seed)
    return ours, oracle, ref, make_pred(rng), make_target(rng), options


def _scalar(value, reduction):
    return float(np.sum(value)) if reduction == "none" else value


@pytest.mark.parametrize("name", [n for n in CASES if CASES[n][1] is not None])
def test_oracle_dpred_matches_central_differences(name):
    _, oracle, _, pred, target, options = _case(name, 0)
    _, dpred = oracle(pred, target, **options)
    reduction = options.get("reduction")
    numeric = numerical_gradient(
        lambda: _scalar(oracle(pred, target, **options)[0], reduction), pred
    )
    assert dpred.shape == pred.shape
    assert_trees_close(dpred, numeric, rtol=1e-7, name="oracle vs central differences")


@pytest.mark.parametrize("name", list(CASES))
def test_loss_with_options_matches_the_oracle_and_torch(name, device):
    ours, oracle, ref, pred, target, options = _case(name, 1)
    p = torch.tensor(pred, device=device)
    t = torch.tensor(target, device=device)
    kw = {
        k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in _tensors(options).items()
    }
    got, expected = ours(p, t, **kw), ref(p, t, **kw)
    grad = torch.func.grad(lambda q: ours(q, t, **kw).sum())(p)
    ref_grad = torch.func.grad(lambda q: ref(q, t, **kw).sum())(p)
    assert got.shape == expected.shape
    assert_trees_close(got, expected, rtol=1e-14, name="loss vs torch")
    assert_trees_close(grad, ref_grad, rtol=1e-13, name="dpred vs torch")
    if oracle is not None:
        value, dpred = oracle(pred, target, **options)
        assert_trees_close(got, np.asarray(value), rtol=1e-13, name="loss vs oracle")
        assert_trees_close(grad, dpred, rtol=1e-12, name="dpred vs oracle")


@pytest.mark.parametrize(
    "var_shape, options",
    [((5, 3), {}), ((5, 1), {"full": True, "reduction": "sum"}), ((5,), {"reduction": "none"})],
)
def test_gaussian_nll_three_ways_with_its_variance(var_shape, options):
    rng = R(2)
    pred, target = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    var = rng.uniform(0.5, 2.0, var_shape)
    var.flat[0] = 1e-8  # below eps: clamped in value, not in gradient (as torch)
    full_var = np.broadcast_to(var.reshape(5, -1), (5, 3))
    value, dpred, dvar_full = olosses.gaussian_nll(pred, target, full_var, **options)
    reduction = options.get("reduction")
    numeric = numerical_gradient(
        lambda: _scalar(olosses.gaussian_nll(pred, target, full_var, **options)[0], reduction), pred
    )
    assert_trees_close(dpred, numeric, rtol=1e-7, name="oracle vs central differences")
    p, t, v = torch.tensor(pred), torch.tensor(target), torch.tensor(var)
    fn = lambda q, s: losses.gaussian_nll(q, t, s, **options).sum()
    ref = lambda q, s: F.gaussian_nll_loss(q, t, s, **options).sum()
    got = torch.func.grad(fn, argnums=(0, 1))(p, v)
    expected = torch.func.grad(ref, argnums=(0, 1))(p, v)
    assert_trees_close(
        losses.gaussian_nll(p, t, v, **options), F.gaussian_nll_loss(p, t, v, **options), rtol=1e-14
    )
    assert_trees_close(losses.gaussian_nll(p, t, v, **options), np.asarray(value), rtol=1e-13)
    assert_trees_close(got, expected, rtol=1e-13, name="d gaussian_nll vs torch")
    dvar = dvar_full.reshape(5, -1).sum(1).reshape(var_shape) if var_shape != (5, 3) else dvar_full
    assert_trees_close(list(got), [dpred, dvar], rtol=1e-12, name="d gaussian_nll vs oracle")


def test_get_loss_knows_the_new_losses_and_check_skips_ignored_labels():
    for name in ("nll", "smooth_l1", "kl_div", "binary_cross_entropy", "poisson_nll"):
        assert losses.get_loss(name) is losses.LOSSES[name]
    with pytest.raises(ValueError, match="gaussian_nll takes a variance"):
        losses.get_loss("gaussian_nll")
    labels = torch.tensor([[0, -100], [2, 1]])
    losses.check("cross_entropy", (2, 3, 2), labels)  # K-dim labels; -100 is ignored
    with pytest.raises(
        ValueError,
        match=r"nll: class labels for 3 classes must lie in \[0, 2\], got values from 0 to 5",
    ):
        losses.check("nll", (2, 3, 2), torch.tensor([[0, 5], [2, 1]]))
    with pytest.raises(ValueError, match=r"binary_cross_entropy: targets must lie in \[0, 1\]"):
        losses.check("binary_cross_entropy", (2,), torch.tensor([0.5, 1.5]))


@pytest.mark.parametrize(
    "call, message",
    [
        pytest.param(
            lambda: losses.smooth_l1(torch.ones(2), torch.ones(2), beta=-1.0),
            "beta must be >= 0",
            id="beta",
        ),
        pytest.param(
            lambda: losses.cross_entropy(
                torch.ones(2, 3), torch.tensor([0, 1]), weight=torch.ones(2)
            ),
            r"weight must be a tensor of shape \(3,\)",
            id="ce-weight",
        ),
        pytest.param(
            lambda: losses.cross_entropy(
                torch.ones(2, 3), torch.tensor([0, 1]), label_smoothing=1.5
            ),
            r"label_smoothing must lie in \[0, 1\]",
            id="smoothing",
        ),
        pytest.param(
            lambda: losses.nll(torch.ones(2, 3), torch.ones(2, 3)),
            r"integer class labels of shape \(2,\), got float32",
            id="nll-probs",
        ),
        pytest.param(
            lambda: losses.cross_entropy(torch.ones(2, 3, 4), torch.zeros(2, 3, dtype=torch.long)),
            r"labels must have shape \(2, 4\)",
            id="ce-kdim",
        ),
        pytest.param(
            lambda: losses.gaussian_nll(torch.ones(2, 3), torch.ones(2, 3), torch.ones(3)),
            r"var has shape \(3,\)",
            id="gauss-var",
        ),
        pytest.param(
            lambda: losses.kl_div(torch.ones(2), torch.ones(2), reduction="avg"),
            "Unknown reduction 'avg'",
            id="kl-reduction",
        ),
        pytest.param(
            lambda: losses.binary_cross_entropy(
                torch.ones(2, 3) / 2, torch.ones(2, 3), weight=torch.ones(2)
            ),
            "does not broadcast",
            id="bce-weight",
        ),
    ],
)
def test_bad_loss_options_are_rejected(call, message):
    with pytest.raises(ValueError, match=message):
        call()
