"""Metrics: each against torch in float64; in fit, on val in eval mode at each evaluation, in
FitResult and the progress line; progress=True's bar; none of it changes the training."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

import functional_nn as fnn
from functional_nn import metrics, optim
from functional_nn._pytree import tree_index

N, D_IN, C = 40, 4, 3


def scores(seed=0, n=N, c=C):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, dtype=torch.float64, generator=g), torch.randint(
        0, c, (n,), generator=g
    )


def test_accuracy_and_top_k_agree_with_argmax_and_topk():
    pred, y = scores(c=7)
    assert metrics.accuracy(pred, y).item() == (pred.argmax(1) == y).double().mean().item()
    for k in (1, 2, 5, 7):
        top = torch.topk(pred, k, dim=1).indices  # random float64 scores: no ties
        expected = (top == y[:, None]).any(1).double().mean().item()
        assert metrics.top_k_accuracy(pred, y, k=k).item() == expected
    assert metrics.accuracy(pred, y).dtype == torch.float64


def test_a_tie_with_the_true_class_counts_against_it():
    pred = torch.zeros(4, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    assert metrics.accuracy(pred, y).item() == 0.0  # a network that learned nothing scores 0
    pred[0, 0] = 1.0
    assert metrics.accuracy(pred, y).item() == 0.25
    assert metrics.top_k_accuracy(pred, y, k=3).item() == 1.0


def test_regression_and_binary_metrics_agree_with_torch():
    pred, _ = scores()
    target = torch.randn(
        pred.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    assert torch.allclose(
        metrics.mean_absolute_error(pred, target), F.l1_loss(pred, target), rtol=1e-15
    )
    assert torch.allclose(
        metrics.mean_squared_error(pred, target), F.mse_loss(pred, target), rtol=1e-15
    )
    rmse = F.mse_loss(pred, target).sqrt()
    assert torch.allclose(metrics.root_mean_squared_error(pred, target), rmse, rtol=1e-15)
    labels = (target > 0).double()
    expected = ((torch.sigmoid(pred) > 0.5) == (labels == 1)).double().mean()
    assert metrics.binary_accuracy(pred, labels).item() == expected.item()


def test_metrics_by_name_and_bad_names():
    for name, metric in metrics.METRICS.items():
        assert metrics.get_metric(name) is metric
    with pytest.raises(ValueError, match="metrics\\['a'\\] must be a metric's name"):
        metrics.check_metrics({"a": "acuracy"})
    with pytest.raises(TypeError, match="metrics must be a dict"):
        metrics.check_metrics(["accuracy"])


def problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D_IN, dtype=torch.float64, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y, x[:20], y[:20]


def fit(net, **kw):
    x, y, xv, yv = problem()
    params = net.init(0, dtype=torch.float64)
    return fnn.fit(
        params, x, y, optim.adam(0.05), loss="cross_entropy", val=(xv, yv), steps=60, **kw
    )


def test_fit_metrics_are_the_metric_at_each_evaluation_and_change_nothing():
    net = fnn.mlp([D_IN, 8, C])
    plain = fit(net, eval_every=20)
    r = fit(net, eval_every=20, metrics={"accuracy": "accuracy", "top2": metrics.top_k_accuracy})
    assert torch.equal(r.losses, plain.losses) and torch.equal(r.val_losses, plain.val_losses)
    assert r.val_steps == (20, 40, 60) and set(r.val_metrics) == {"accuracy", "top2"}
    assert r.val_metrics["accuracy"].shape == (3,)
    _, _, xv, yv = problem()
    pred = net.apply(r.params, xv)  # the last evaluation is at the final params
    assert r.val_metrics["accuracy"][-1].item() == (pred.argmax(1) == yv).double().mean().item()
    assert plain.val_metrics is None


def test_fit_metrics_run_in_eval_mode():
    net = fnn.serial(fnn.dense(D_IN, 8), fnn.blocks.batch_norm(8), "relu", fnn.dense(8, C))
    ce = lambda pred, y: F.cross_entropy(pred, y)  # the val loss again, as torch computes it
    r = fit(net, metrics={"ce": ce})
    # the loss's own eval-mode value (a train-mode one would differ by far more than rounding)
    assert torch.allclose(r.val_metrics["ce"], r.val_losses, rtol=1e-12, atol=0)
    _, _, xv, yv = problem()
    pred, _ = net.apply(r.params, xv, state=r.model_state, train=False, key=None)
    assert torch.allclose(r.val_metrics["ce"][-1], F.cross_entropy(pred, yv), rtol=1e-12)


def test_fit_ensemble_metrics_have_one_column_per_model():
    net = fnn.mlp([D_IN, 8, C])
    x, y, xv, yv = problem()
    trees = [net.init(i, dtype=torch.float64) for i in range(3)]
    kw = dict(loss="cross_entropy", val=(xv, yv), steps=30, metrics={"acc": "accuracy"})
    r = fnn.fit_ensemble(trees, x, y, optim.adam(0.05), **kw)
    assert r.val_metrics["acc"].shape == (len(r.val_steps), 3)
    for k in range(3):
        pred = net.apply(tree_index(r.params, k), xv)
        assert r.val_metrics["acc"][-1, k].item() == (pred.argmax(1) == yv).double().mean().item()


def test_bad_metrics_are_refused_before_any_work():
    net = fnn.mlp([D_IN, 8, C])
    x, y, _, _ = problem()
    with pytest.raises(ValueError, match="metrics are evaluated on val"):
        fnn.fit(net.init(0, dtype=torch.float64), x, y, optim.sgd(0.1), metrics={"a": "accuracy"})
    with pytest.raises(ValueError, match=r"metrics\['rows'\]\(pred, y_val\) must return a 0-d"):
        fit(net, metrics={"rows": lambda pred, y: pred.sum(1)})
    with pytest.raises(ValueError, match=r"metrics\['mae'\]\(pred, y_val\) fails"):
        fit(net, metrics={"mae": "mean_absolute_error"})  # (N, C) logits against (N,) labels


def test_log_lines_show_the_metrics(capsys):
    fit(fnn.mlp([D_IN, 8, C]), eval_every=30, log_every=30, metrics={"accuracy": "accuracy"})
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all("  accuracy " in line for line in lines)


@pytest.mark.skipif(importlib.util.find_spec("tqdm") is None, reason="tqdm is not installed")
def test_progress_draws_a_bar_and_changes_nothing(capsys):
    net = fnn.mlp([D_IN, 8, C])
    plain = fit(net, metrics={"accuracy": "accuracy"})
    r = fit(net, metrics={"accuracy": "accuracy"}, progress=True, log_every=10)
    assert torch.equal(r.losses, plain.losses)
    err = capsys.readouterr().err
    assert "60/60" in err and "step/s" in err and "  val " in err and "  accuracy " in err
    assert "done)" not in err  # the bar replaces the log lines


def test_progress_without_tqdm_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tqdm" else real(name, *a)
    )
    with pytest.raises(ModuleNotFoundError, match="pip install tqdm"):
        fit(fnn.mlp([D_IN, 8, C]), progress=True)
