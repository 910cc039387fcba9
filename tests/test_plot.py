"""fnn.plot: the figure's lines are the FitResult's numbers; a clear error without matplotlib."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import functional_nn as fnn

N, SIZES = 32, [3, 8, 1]


def _fit(**options):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, SIZES[0], generator=gen, dtype=torch.float64)
    y = x.sum(1, keepdim=True).tanh()
    net = fnn.mlp(SIZES)
    return fnn.fit(net.init(0, dtype=torch.float64), x, y, model=net, loss=fnn.mse, **options)


def test_the_loss_panel_holds_train_and_val_losses_at_their_steps():
    pytest.importorskip("matplotlib")
    val = (torch.randn(8, 3, dtype=torch.float64), torch.zeros(8, 1, dtype=torch.float64))
    # as if resumed after 6 steps: this call's steps are 6..15
    result = _fit(opt=fnn.adam(1e-2), steps=10, val=val, eval_every=5, start_step=6)
    fig = fnn.plot(result, title="run")
    (ax,) = fig.axes
    assert ax.get_yscale() == "log" and ax.get_title() == "run"
    train, val_line = ax.get_lines()
    np.testing.assert_array_equal(train.get_xdata(), np.arange(6, 16))
    np.testing.assert_array_equal(train.get_ydata(), result.losses.numpy())
    # evaluated at the multiples of eval_every and after the last step
    np.testing.assert_array_equal(val_line.get_xdata(), [10, 15, 16])
    np.testing.assert_array_equal(val_line.get_ydata(), result.val_losses.numpy())


def test_the_lr_panel_holds_the_schedules_values():
    pytest.importorskip("matplotlib")
    schedule = fnn.optim.schedules.exponential_decay(0.1, 0.5)
    result = _fit(opt=fnn.sgd(schedule), steps=5)
    fig = fnn.plot(result, lr=schedule)
    _, lr_ax = fig.axes
    # torch's ExponentialLR: lr_t = 0.1 * 0.5^t, written out by hand
    np.testing.assert_allclose(
        lr_ax.get_lines()[0].get_ydata(), [0.1, 0.05, 0.025, 0.0125, 0.00625]
    )
    given = fnn.plot(result, lr=[1.0, 2.0, 3.0, 4.0, 5.0]).axes[1].get_lines()[0].get_ydata()
    np.testing.assert_array_equal(given, [1, 2, 3, 4, 5])


def test_the_metrics_panel_sits_between_loss_and_lr():
    pytest.importorskip("matplotlib")
    val = (torch.randn(8, 3, dtype=torch.float64), torch.zeros(8, 1, dtype=torch.float64))
    metrics = {"mae": "mean_absolute_error", "rmse": "root_mean_squared_error"}
    result = _fit(opt=fnn.sgd(1e-2), steps=6, val=val, eval_every=3, metrics=metrics)
    loss_ax, metrics_ax, lr_ax = fnn.plot(result, lr=[1.0] * 6).axes
    mae, rmse = metrics_ax.get_lines()
    assert (
        loss_ax.get_ylabel() == "loss"
        and metrics_ax.get_ylabel() == "val metrics"
        and lr_ax.get_ylabel() == "learning rate"
    )
    np.testing.assert_array_equal(mae.get_xdata(), [3, 6])
    np.testing.assert_array_equal(rmse.get_ydata(), result.val_metrics["rmse"].numpy())
    assert len(fnn.plot(_fit(opt=fnn.sgd(1e-2), steps=6, val=val)).axes) == 1


def test_an_ensemble_is_one_line_per_model():
    pytest.importorskip("matplotlib")
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, 3, generator=gen, dtype=torch.float64)
    net = fnn.mlp(SIZES)
    params = [net.init(k, dtype=torch.float64) for k in range(3)]
    result = fnn.fit_ensemble(params, x, x[:, :1], fnn.sgd(1e-2), model=net, steps=4)
    lines = fnn.plot(result).axes[0].get_lines()
    assert len(lines) == 3
    for k, line in enumerate(lines):
        np.testing.assert_array_equal(line.get_ydata(), result.losses[:, k].numpy())


def test_bad_input_is_refused():
    pytest.importorskip("matplotlib")
    result = _fit(opt=fnn.sgd(1e-2), steps=3)
    with pytest.raises(TypeError, match="result must be what fit returns"):
        fnn.plot(result.losses)
    with pytest.raises(ValueError, match=r"one value per step this fit ran \(3\), got 2"):
        fnn.plot(result, lr=[0.1, 0.2])
    with pytest.raises(TypeError, match="lr must be a schedule or one value per step"):
        fnn.plot(result, lr=0.1)


def test_without_matplotlib_the_error_says_how_to_install_it(monkeypatch):
    result = _fit(opt=fnn.sgd(1e-2), steps=2)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r'pip install "functional_nn\[plot\]"'):
        fnn.plot(result)
