"""`plot(result)`: a FitResult's training and validation loss, and the learning rate, as a figure.

matplotlib is an optional extra (`pip install "functional_nn[plot]"`), imported only when `plot`
is called, so the library itself never needs it. The figure is built without pyplot, so nothing
global (backend, current figure) changes: display it in a notebook, or `fig.savefig(path)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .train import FitResult


def plot(
    result: FitResult,
    *,
    lr: Callable | Sequence[float] | torch.Tensor | None = None,
    title: str | None = None,
):
    """Train and val loss against the step (log scale); below, the val metrics when the fit had
    metrics, and the learning rate when given.

    Step s is the number of updates done: the training loss at s is that of the params after s
    updates (computed by the step that makes update s + 1), and val is evaluated after
    `val_steps` updates, so at the same s both are losses of the same params.

    Args:
        result: what `fit` or `fit_ensemble` returned; an ensemble's K models are K lines each.
        lr: the learning rate per step, as a schedule (`count -> lr`, e.g.
            `optim.schedules.cosine_decay(1e-3, 500)`) or one value per step this fit ran;
            None for no lr panel.
        title: the figure's title.
    Returns:
        A `matplotlib.figure.Figure` with axes for the loss, then the metrics and the lr when
        present, sharing the step axis.
    """
    if not isinstance(result, FitResult):
        raise TypeError(
            f"result must be what fit returns (a FitResult), got {type(result).__name__}."
        )
    figure_class = _matplotlib_figure()
    steps = torch.arange(result.steps - len(result.losses), result.steps)
    lrs = None if lr is None else _lr_values(lr, steps)
    panels = 1 + (result.val_metrics is not None) + (lrs is not None)
    fig = figure_class(figsize=(7, 2 + 2 * panels))
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    loss_ax = axes[0]
    loss_ax.plot(steps, _numpy(result.losses), label="train")
    if result.val_losses is not None:
        loss_ax.plot(list(result.val_steps), _numpy(result.val_losses), "o-", label="val")
    loss_ax.set(yscale="log", ylabel="loss", title=title)
    loss_ax.legend()
    if result.val_metrics is not None:  # fit(metrics=...): on val, at val_steps
        for name, values in result.val_metrics.items():
            axes[1].plot(list(result.val_steps), _numpy(values), "o-", label=name)
        axes[1].set(ylabel="val metrics")
        axes[1].legend()
    if lrs is not None:
        axes[-1].plot(steps, lrs)
        axes[-1].set(ylabel="learning rate")
    axes[-1].set(xlabel="step (updates done)")
    fig.tight_layout()
    return fig


def _matplotlib_figure():
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            'fnn.plot needs matplotlib, which is not installed: pip install "functional_nn[plot]" '
            "(or pip install matplotlib)."
        ) from error
    return Figure


def _lr_values(lr, steps: torch.Tensor) -> list[float]:
    """The learning rate at each of `steps`, from a schedule or as given."""
    if callable(lr):
        return [float(lr(int(s))) for s in steps]
    if not isinstance(lr, (Sequence, torch.Tensor)):
        raise TypeError(
            f"lr must be a schedule or one value per step, got {type(lr).__name__}: {lr!r}."
        )
    values = [float(v) for v in lr]
    if len(values) != len(steps):
        raise ValueError(
            f"lr must hold one value per step this fit ran ({len(steps)}), got {len(values)}; "
            "or pass the schedule itself."
        )
    return values


def _numpy(t: torch.Tensor):
    return t.detach().cpu().double().numpy()
