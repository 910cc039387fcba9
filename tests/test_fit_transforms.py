"""fit and fit_ensemble inside a torch.func transform: refused with a clear error, never a silent
zero gradient."""

from __future__ import annotations

import pytest
import torch

import functional_nn as fnn
from functional_nn import optim

NET = fnn.mlp([3, 4, 1])
MESSAGE = r"was called inside a torch.func transform \(grad, vmap, jvp, \.\.\.\), which it does not support"


G = torch.Generator().manual_seed(0)
X, Y = (
    torch.randn(8, 3, generator=G, dtype=torch.float64),
    torch.randn(8, 1, generator=G, dtype=torch.float64),
)
PARAMS = NET.init(0, dtype=torch.float64)


def trained_loss(scale, ensemble=False):
    """The final training loss of a fit on x * scale: a function of scale to transform."""
    x, y, params = X, Y, PARAMS
    if ensemble:
        return fnn.fit_ensemble(
            [params, params], x * scale, y, optim.sgd(1e-2), model=NET, steps=2
        ).losses.sum()
    return fnn.fit(params, x * scale, y, optim.sgd(1e-2), model=NET, steps=2).losses[-1]


TRANSFORMS = {
    "grad": lambda f: torch.func.grad(f)(torch.tensor(1.0, dtype=torch.float64)),
    "vmap": lambda f: torch.func.vmap(f)(torch.ones(2, dtype=torch.float64)),
    "jvp": lambda f: torch.func.jvp(
        f, (torch.tensor(1.0, dtype=torch.float64),), (torch.tensor(1.0, dtype=torch.float64),)
    ),
}


@pytest.mark.parametrize("ensemble", [False, True], ids=["fit", "fit_ensemble"])
@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
def test_fit_inside_a_torch_func_transform_raises(transform, ensemble):
    with pytest.raises(RuntimeError, match=MESSAGE):
        transform(lambda scale: trained_loss(scale, ensemble))


def test_fit_after_a_transform_works_again():
    with pytest.raises(RuntimeError, match=MESSAGE):
        TRANSFORMS["grad"](trained_loss)
    assert bool(torch.isfinite(trained_loss(torch.tensor(1.0, dtype=torch.float64))))
