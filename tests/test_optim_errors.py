"""Bad input to the optimizers: rejected when built, or before any work, with a message that says
what was given and what was expected."""

from __future__ import annotations

import pytest
import torch

from functional_nn import optim
from tests.test_optim import SHAPES, mlp_tree
from tests.test_optim_state import OPTIMIZERS

BAD_HYPERPARAMETERS = [
    (lambda: optim.sgd(lr=-0.1), ValueError, r"Invalid lr: -0.1 \(expected a number >= 0"),
    (lambda: optim.adam(lr=float("nan")), ValueError, "Invalid lr: nan"),
    (lambda: optim.sgd(lr="0.1"), TypeError, r"lr must be a number, a 0-d tensor or a schedule \(count -> lr\), got str"),
    (lambda: optim.adam(lr=torch.tensor([1e-3, 1e-2])), ValueError, r"tensor lr must be a 0-d floating tensor, got shape \(2,\)"),
    (lambda: optim.adam(lr=torch.tensor(1)), ValueError, "0-d floating tensor, got shape .* dtype torch.int64"),
    (lambda: optim.sgd(momentum=-0.9), ValueError, r"Invalid momentum: -0.9 \(expected a number >= 0\)"),
    (lambda: optim.sgd(weight_decay=-1e-4), ValueError, "Invalid weight_decay: -0.0001"),
    (lambda: optim.sgd(nesterov=True), ValueError, r"Nesterov momentum requires momentum > 0 and dampening == 0, got momentum=0.0"),
    (lambda: optim.sgd(momentum=0.9, dampening=0.1, nesterov=True), ValueError, "dampening=0.1"),
    (lambda: optim.sgd(dampening=float("nan")), ValueError, "Invalid dampening: nan"),
    (lambda: optim.adam(betas=(1.0, 0.999)), ValueError, r"Invalid betas\[0\]: 1.0 \(expected a number in \[0, 1\)\)"),
    (lambda: optim.adamw(betas=(0.9, -0.1)), ValueError, r"Invalid betas\[1\]: -0.1"),
    (lambda: optim.nadam(betas=(0.9,)), ValueError, r"Invalid betas: \(0.9,\) \(expected a pair"),
    (lambda: optim.radam(betas=(0.9, "0.99")), TypeError, r"betas\[1\] must be a number, got str"),
    (lambda: optim.adam(eps=-1e-8), ValueError, "Invalid eps: -1e-08"),
    (lambda: optim.adamax(weight_decay=-0.1), ValueError, "Invalid weight_decay: -0.1"),
    (lambda: optim.rmsprop(alpha=-0.5), ValueError, "Invalid alpha: -0.5"),
    (lambda: optim.rmsprop(momentum=-0.1), ValueError, "Invalid momentum: -0.1"),
    (lambda: optim.adagrad(lr_decay=-0.01), ValueError, r"Invalid lr_decay: -0.01 \(expected a number >= 0\)"),
    (lambda: optim.adagrad(lr=-1.0, lr_decay=0.1), ValueError, "Invalid lr: -1.0"),
    (lambda: optim.adagrad(initial_accumulator_value=-1.0), ValueError, "Invalid initial_accumulator_value: -1.0"),
    (lambda: optim.nadam(momentum_decay=-4e-3), ValueError, "Invalid momentum_decay: -0.004"),
    (lambda: optim.clip_by_global_norm(-1.0), ValueError, "Invalid max_norm: -1.0"),
    (lambda: optim.clip_by_value(None), TypeError, "clip_value must be a number, got NoneType"),
]  # fmt: skip


@pytest.mark.parametrize("make, error, match", BAD_HYPERPARAMETERS)
def test_bad_hyperparameters_are_rejected_when_built(make, error, match):
    with pytest.raises(error, match=match):
        make()


def params_on(device):
    return mlp_tree([torch.zeros(s, device=device) for s in SHAPES])


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_grads_of_another_tree_show_both_structures(name, device):
    opt = OPTIMIZERS[name](1e-3)
    params = params_on(device)
    state = opt.init(params)
    grads = params[:1]  # one layer short
    with pytest.raises(ValueError, match=r"(?s)grads does not match.*grads: \[\{'weight': float32\[5, 4\], "
                                         r"'bias': float32\[5\]\}\].*\[\{'weight'.*\}, \{'weight'"):  # fmt: skip
        opt.update(grads, state, params)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_grads_of_other_shapes_show_both_structures(name, device):
    opt = OPTIMIZERS[name](1e-3)
    params = params_on(device)
    grads = mlp_tree([torch.zeros(s, device=device) for s in [(5, 4), (5,), (3, 5), (4,)]])
    with pytest.raises(ValueError, match=r"(?s)grads: .*'bias': float32\[4\].*'bias': float32\[3\]"):
        opt.update(grads, opt.init(params), params)


def test_state_of_another_optimizer_is_rejected(device):
    params = params_on(device)
    with pytest.raises(ValueError, match="a chain of 2 transforms needs a tuple of 2 states, got a tuple of 3"):
        optim.adam().update(params, optim.sgd(momentum=0.9, weight_decay=0.1).init(params), params)


def test_weight_decay_without_params_says_how_to_call(device):
    params = params_on(device)
    opt = optim.adamw()
    with pytest.raises(ValueError, match=r"add_decayed_weights needs params: call update\(grads, state, params\)"):
        opt.update(params, opt.init(params))


def test_apply_updates_of_another_tree_shows_both(device):
    params = params_on(device)
    with pytest.raises(ValueError, match=r"(?s)updates does not match the structure of params.*updates: \["):
        optim.apply_updates(params, params[::-1][:1])


def test_current_lr_of_a_state_without_a_learning_rate():
    params = params_on("cpu")
    with pytest.raises(ValueError, match="exactly one scale_by_learning_rate in it, found 0"):
        optim.current_lr(optim.scale_by_adam().init(params))
