"""Bad input to the optimizers: rejected when built, or before any work, with a message that says
what was given and what was expected."""

from __future__ import annotations

import pytest
import torch

from functional_nn import optim
from tests.tables import OPTIMIZERS, SHAPES, mlp_tree

BAD_HYPERPARAMETERS = [
    (lambda: optim.sgd(lr=-0.1), ValueError, r"Invalid lr: -0.1 \(expected a number >= 0"),
    (lambda: optim.adam(lr=float("nan")), ValueError, "Invalid lr: nan"),
    (
        lambda: optim.sgd(lr="0.1"),
        TypeError,
        r"lr must be a number, a 0-d tensor or a schedule \(count -> lr\), got str",
    ),
    (
        lambda: optim.adam(lr=torch.tensor([1e-3, 1e-2])),
        ValueError,
        r"tensor lr must be a 0-d floating tensor, got shape \(2,\)",
    ),
    (
        lambda: optim.adam(lr=torch.tensor(1)),
        ValueError,
        "0-d floating tensor, got shape .* dtype torch.int64",
    ),
    (
        lambda: optim.sgd(momentum=-0.9),
        ValueError,
        r"Invalid momentum: -0.9 \(expected a number >= 0\)",
    ),
    (lambda: optim.sgd(weight_decay=-1e-4), ValueError, "Invalid weight_decay: -0.0001"),
    (
        lambda: optim.sgd(nesterov=True),
        ValueError,
        r"Nesterov momentum requires momentum > 0 and dampening == 0, got momentum=0.0",
    ),
    (lambda: optim.sgd(momentum=0.9, dampening=0.1, nesterov=True), ValueError, "dampening=0.1"),
    (lambda: optim.sgd(dampening=float("nan")), ValueError, "Invalid dampening: nan"),
    (
        lambda: optim.adam(betas=(1.0, 0.999)),
        ValueError,
        r"Invalid betas\[0\]: 1.0 \(expected a number in \[0, 1\)\)",
    ),
    (lambda: optim.adamw(betas=(0.9, -0.1)), ValueError, r"Invalid betas\[1\]: -0.1"),
    (lambda: optim.nadam(betas=(0.9,)), ValueError, r"Invalid betas: \(0.9,\) \(expected a pair"),
    (lambda: optim.radam(betas=(0.9, "0.99")), TypeError, r"betas\[1\] must be a number, got str"),
    (lambda: optim.adam(eps=-1e-8), ValueError, "Invalid eps: -1e-08"),
    (lambda: optim.adamax(weight_decay=-0.1), ValueError, "Invalid weight_decay: -0.1"),
    (lambda: optim.rmsprop(alpha=-0.5), ValueError, "Invalid alpha: -0.5"),
    (lambda: optim.rmsprop(momentum=-0.1), ValueError, "Invalid momentum: -0.1"),
    (
        lambda: optim.adagrad(lr_decay=-0.01),
        ValueError,
        r"Invalid lr_decay: -0.01 \(expected a number >= 0\)",
    ),
    (lambda: optim.adagrad(lr=-1.0, lr_decay=0.1), ValueError, "Invalid lr: -1.0"),
    (
        lambda: optim.adagrad(initial_accumulator_value=-1.0),
        ValueError,
        "Invalid initial_accumulator_value: -1.0",
    ),
    (lambda: optim.nadam(momentum_decay=-4e-3), ValueError, "Invalid momentum_decay: -0.004"),
    (lambda: optim.clip_by_global_norm(-1.0), ValueError, "Invalid max_norm: -1.0"),
    (lambda: optim.clip_by_value(None), TypeError, "clip_value must be a number, got NoneType"),
    (lambda: optim.clip_by_value(float("nan")), ValueError, "Invalid clip_value: nan"),
    (lambda: optim.clip_by_global_norm(float("-inf")), ValueError, "Invalid max_norm: -inf"),
    # Non-finite numbers, which torch.optim lets through (inf lr makes every step NaN).
    (
        lambda: optim.adam(lr=float("inf")),
        ValueError,
        r"Invalid lr: inf \(not finite; expected a number >= 0",
    ),
    (
        lambda: optim.sgd(weight_decay=float("nan")),
        ValueError,
        r"Invalid weight_decay: nan \(not finite",
    ),
    (
        lambda: optim.adamw(weight_decay=float("inf")),
        ValueError,
        r"Invalid weight_decay: inf \(not finite",
    ),
    (lambda: optim.sgd(momentum=float("inf")), ValueError, r"Invalid momentum: inf \(not finite"),
    (
        lambda: optim.sgd(momentum=0.9, dampening=float("-inf")),
        ValueError,
        r"Invalid dampening: -inf \(not finite",
    ),
    (lambda: optim.adam(eps=float("inf")), ValueError, r"Invalid eps: inf \(not finite"),
    (
        lambda: optim.nadam(betas=(float("nan"), 0.999)),
        ValueError,
        r"Invalid betas\[0\]: nan \(not finite; expected a number in \[0, 1\)",
    ),
    (lambda: optim.rmsprop(alpha=float("inf")), ValueError, r"Invalid alpha: inf \(not finite"),
    (
        lambda: optim.rmsprop(momentum=float("nan")),
        ValueError,
        r"Invalid momentum: nan \(not finite",
    ),
    (
        lambda: optim.adagrad(lr_decay=float("inf")),
        ValueError,
        r"Invalid lr_decay: inf \(not finite",
    ),
    (
        lambda: optim.adagrad(initial_accumulator_value=float("inf")),
        ValueError,
        r"Invalid initial_accumulator_value: inf",
    ),
    (
        lambda: optim.nadam(momentum_decay=float("nan")),
        ValueError,
        r"Invalid momentum_decay: nan \(not finite",
    ),
    (
        lambda: optim.scale_by_adam(b1=1.5),
        ValueError,
        r"Invalid b1: 1.5 \(expected a number in \[0, 1\)\)",
    ),
    (lambda: optim.scale_by_rms(eps=float("inf")), ValueError, r"Invalid eps: inf \(not finite"),
    # Flags must be bools: torch.optim takes any truthy value, so "no" would turn amsgrad on.
    (
        lambda: optim.adam(amsgrad="yes"),
        TypeError,
        r"amsgrad must be a bool \(True or False\), got str: 'yes'",
    ),
    (lambda: optim.adamw(maximize=1), TypeError, "maximize must be a bool .*got int: 1"),
    (
        lambda: optim.sgd(momentum=0.9, nesterov="True"),
        TypeError,
        "nesterov must be a bool .*got str",
    ),
    (lambda: optim.rmsprop(centered=None), TypeError, "centered must be a bool .*got NoneType"),
    (
        lambda: optim.nadam(decoupled_weight_decay=0),
        TypeError,
        "decoupled_weight_decay must be a bool .*got int",
    ),
    (lambda: optim.radam(maximize="False"), TypeError, "maximize must be a bool .*got str"),
    (lambda: optim.adagrad(maximize=None), TypeError, "maximize must be a bool"),
    (lambda: optim.adamax(maximize=[]), TypeError, "maximize must be a bool"),
    (lambda: optim.scale_by_rms(centered=1), TypeError, "centered must be a bool .*got int"),
    # Tensor betas as torch.optim.Adam takes them: two 1-element floating tensors, not a mix.
    (
        lambda: optim.adam(betas=(torch.tensor(0.9), 0.999)),
        ValueError,
        r"betas must be either both floats or both Tensors .*got \(Tensor, float\)",
    ),
    (
        lambda: optim.adamw(betas=(0.9, torch.tensor(0.999))),
        ValueError,
        r"both floats or both Tensors .*got \(float, Tensor\)",
    ),
    (
        lambda: optim.adam(betas=(torch.tensor([0.9, 0.8]), torch.tensor(0.999))),
        ValueError,
        r"Tensor betas\[0\] must be 1-element and floating, got shape \(2,\)",
    ),
    (
        lambda: optim.radam(betas=(torch.tensor(0.9), torch.tensor(1))),
        ValueError,
        r"Tensor betas\[1\] .* dtype torch.int64",
    ),
    (
        lambda: optim.adam(betas=(torch.tensor(0.9), torch.tensor(1.0))),
        ValueError,
        r"Invalid betas\[1\]: 1.0 \(expected a number in",
    ),
    (
        lambda: optim.adam(betas=(torch.tensor(0.9, requires_grad=True), torch.tensor(0.999))),
        ValueError,
        r"Tensor betas\[0\] requires grad, .*no gradient would reach it; pass betas\[0\].detach\(\)",
    ),
    # chain of something that is not a transform, named by its position.
    (
        lambda: optim.chain(optim.scale(-1.0), "sgd"),
        TypeError,
        r"chain's argument 1 must be a GradientTransformation \(an \(init, update\) pair.*got str: 'sgd'",
    ),
    (
        lambda: optim.chain(optim.scale_by_adam, optim.scale(-1.0)),
        TypeError,
        r"chain's argument 0 must be a GradientTransformation .*got function: .*; call it: scale_by_adam\(...\)",
    ),
]


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
    with pytest.raises(
        ValueError,
        match=r"(?s)grads does not match.*grads: \[\{'weight': float32\[5, 4\], "
        r"'bias': float32\[5\]\}\].*\[\{'weight'.*\}, \{'weight'",
    ):
        opt.update(grads, state, params)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_grads_of_other_shapes_show_both_structures(name, device):
    opt = OPTIMIZERS[name](1e-3)
    params = params_on(device)
    grads = mlp_tree([torch.zeros(s, device=device) for s in [(5, 4), (5,), (3, 5), (4,)]])
    with pytest.raises(
        ValueError, match=r"(?s)grads: .*'bias': float32\[4\].*'bias': float32\[3\]"
    ):
        opt.update(grads, opt.init(params), params)


def test_state_of_another_optimizer_is_rejected(device):
    params = params_on(device)
    with pytest.raises(
        ValueError, match="a chain of 2 transforms needs a tuple of 2 states, got a tuple of 3"
    ):
        optim.adam().update(params, optim.sgd(momentum=0.9, weight_decay=0.1).init(params), params)


def test_weight_decay_without_params_says_how_to_call(device):
    params = params_on(device)
    opt = optim.adamw()
    with pytest.raises(
        ValueError, match=r"add_decayed_weights needs params: call update\(grads, state, params\)"
    ):
        opt.update(params, opt.init(params))


def test_apply_updates_of_another_tree_shows_both(device):
    params = params_on(device)
    with pytest.raises(
        ValueError, match=r"(?s)updates does not match the structure of params.*updates: \["
    ):
        optim.apply_updates(params, params[::-1][:1])


def test_current_lr_of_a_state_without_a_learning_rate():
    params = params_on("cpu")
    with pytest.raises(ValueError, match="exactly one scale_by_learning_rate in it, found 0"):
        optim.current_lr(optim.scale_by_adam().init(params))


def test_state_of_another_transform_shows_both_structures(device):
    params = params_on(device)
    sgd_state = optim.sgd(momentum=0.9).init(params)  # (TraceState, ...): a chain of 2, as adam's
    with pytest.raises(
        ValueError,
        match=r"(?s)state does not belong to this transform.*"
        r"state: TraceState\(count=int64\[\], momentum_buffer=\[\{'weight': float32\[5, 4\].*"
        r"expected: ScaleByAdamState\(count, mu, nu, nu_max\), its trees shaped like the grads: "
        r"\[\{'weight': float32\[5, 4\]",
    ):
        optim.adam().update(params, sgd_state, params)
    with pytest.raises(
        ValueError,
        match=r"(?s)state: ScaleByRssState\(sum_of_squares=.*expected: ScaleByRmsState\(nu, mu\)",
    ):
        optim.rmsprop().update(params, optim.adagrad().init(params), params)
    with pytest.raises(
        ValueError,
        match=r"(?s)state: ScaleByRmsState\(.*expected: TraceState\(count, momentum_buffer\)",
    ):
        optim.sgd(momentum=0.9).update(params, optim.rmsprop().init(params), params)
    with pytest.raises(ValueError, match=r"(?s)expected: ScaleByLearningRateState\(count, lr\)"):
        optim.sgd().update(params, (optim.sgd(momentum=0.9).init(params)[0],), params)


def test_state_without_the_amsgrad_maximum_shows_both_structures(device):
    params = params_on(device)
    with pytest.raises(
        ValueError,
        match=r"(?s)grads does not match the structure of the optimizer state.*"
        r"grads: \[\{'weight': float32\[5, 4\].*the optimizer state \(made from params\): \(\)",
    ):
        optim.adam(amsgrad=True).update(params, optim.adam().init(params), params)


@pytest.mark.parametrize(
    "count, given",
    [
        (torch.tensor(1.5), "dtype torch.float32"),
        (torch.tensor(True), "dtype torch.bool"),
        (1, "int: 1"),
    ],
    ids=["float", "bool", "python-int"],
)
def test_a_step_count_that_is_not_an_integer_tensor(count, given, device):
    params = params_on(device)
    opt = optim.adam()
    adam_state, lr_state = opt.init(params)
    with pytest.raises(
        TypeError,
        match=rf"ScaleByAdamState.count must be an integer tensor \(init makes a 0-d int64\), got {given}",
    ):
        opt.update(params, (adam_state._replace(count=count), lr_state), params)


def test_a_step_count_of_another_shape(device):
    params = params_on(device)
    state = optim.scale_by_radam().init(params)
    with pytest.raises(ValueError, match=r"ScaleByRadamState.count must be 0-d .*got shape \(2,\)"):
        optim.scale_by_radam().update(
            params, state._replace(count=torch.zeros(2, dtype=torch.int64)), params
        )


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_grads_of_another_dtype_than_the_state_name_both(name, device):
    opt = OPTIMIZERS[name](1e-3)
    params = params_on(device)
    grads = [{k: v.double() for k, v in layer.items()} for layer in params]
    with pytest.raises(
        TypeError,
        match=r"(?s)grads do not have the dtypes of (the optimizer state|params).*"
        r"grads: \[\{'weight': float64\[5, 4\].*\{'weight': float32\[5, 4\]",
    ):
        opt.update(grads, opt.init(params), params)


def test_params_of_another_dtype_are_never_promoted(device):
    params = params_on(device)
    wide = [{k: v.double() for k, v in layer.items()} for layer in params]
    opt = optim.sgd(0.1, weight_decay=0.1)
    # The decay term would promote the updates to float64...
    with pytest.raises(
        TypeError,
        match=r"(?s)grads do not have the dtypes of params.*grads: \[\{'weight': float32.*"
        r"params: \[\{'weight': float64",
    ):
        opt.update(params, opt.init(params), wide)
    # ...and float64 updates would promote float32 params.
    with pytest.raises(
        TypeError,
        match=r"(?s)updates do not have the dtypes of params.*updates: \[\{'weight': float64.*"
        r"params: \[\{'weight': float32",
    ):
        optim.apply_updates(params, wide)


def test_the_update_checks_hold_under_vmap(device):
    """The checks read metadata only, so they run inside vmap (an ensemble step) unchanged."""
    params = mlp_tree([torch.zeros(3, *s, device=device) for s in SHAPES])  # 3 models
    opt = optim.adam()
    state = torch.func.vmap(opt.init)(params)
    grads = [{k: v.double() for k, v in layer.items()} for layer in params]
    with pytest.raises(
        TypeError, match=r"(?s)grads do not have the dtypes of the optimizer state.*float64\[5, 4\]"
    ):
        torch.func.vmap(opt.update)(grads, state, params)
    with pytest.raises(ValueError, match="state does not belong to this transform"):
        torch.func.vmap(opt.update)(
            params, torch.func.vmap(optim.sgd(momentum=0.9).init)(params), params
        )


def test_an_infinite_clip_clips_nothing_as_torch_does():
    g = [torch.tensor([3.0, -4e3]), torch.tensor([1e-3])]
    for transform in (optim.clip_by_value(float("inf")), optim.clip_by_global_norm(float("inf"))):
        updates, _ = transform.update(g, transform.init(g), g)
        assert all(torch.equal(u, x) for u, x in zip(updates, g))
    params = [torch.zeros_like(x, requires_grad=True) for x in g]
    for p, x in zip(params, g):
        p.grad = x.clone()
    torch.nn.utils.clip_grad_norm_(params, float("inf"))
    assert all(torch.equal(p.grad, x) for p, x in zip(params, g))


ZERO_D_OPTIMIZERS = [
    (lambda: optim.sgd(1e-2, momentum=0.9), lambda p: torch.optim.SGD(p, 1e-2, momentum=0.9)),
    (lambda: optim.rmsprop(1e-2), lambda p: torch.optim.RMSprop(p, 1e-2)),
    (lambda: optim.adam(1e-2), lambda p: torch.optim.Adam(p, 1e-2)),
    (lambda: optim.adamw(1e-2), lambda p: torch.optim.AdamW(p, 1e-2)),
    (lambda: optim.adamax(1e-2), lambda p: torch.optim.Adamax(p, 1e-2)),
    (lambda: optim.nadam(1e-2), lambda p: torch.optim.NAdam(p, 1e-2)),
    (lambda: optim.radam(1e-2), lambda p: torch.optim.RAdam(p, 1e-2)),
    (
        lambda: optim.adagrad(1e-2, lr_decay=0.1),
        lambda p: torch.optim.Adagrad(p, 1e-2, lr_decay=0.1),
    ),
]


@pytest.mark.parametrize("ours, theirs", ZERO_D_OPTIMIZERS)
def test_a_0d_param_keeps_its_dtype_and_follows_torch(ours, theirs):
    """0-d leaves times the optimizers' 0-d float64 factors would promote to float64."""
    params = {"t": torch.tensor(1.5), "w": torch.tensor([0.5, -2.0])}
    opt = ours()
    state = opt.init(params)
    leaves = [v.clone().requires_grad_() for v in params.values()]
    torch_opt = theirs(leaves)
    for step in range(5):
        grads = {"t": torch.tensor(0.3 - 0.2 * step), "w": torch.tensor([1.0, -0.5]) * (step + 1)}
        updates, state = opt.update(grads, state, params)
        params = optim.apply_updates(params, updates)
        for leaf, g in zip(leaves, grads.values()):
            leaf.grad = g.clone()
        torch_opt.step()
    assert [v.dtype for v in params.values()] == [torch.float32, torch.float32]
    for ours_leaf, torch_leaf in zip(params.values(), leaves):
        torch.testing.assert_close(ours_leaf, torch_leaf.detach(), rtol=2e-6, atol=1e-7)


def test_an_int_beyond_floats_range_is_a_value_error():
    with pytest.raises(ValueError, match=r"Invalid lr: 1000.* \(not finite"):
        optim.sgd(10**400)
    with pytest.raises(ValueError, match=r"Invalid momentum: 1000.* \(not finite"):
        optim.sgd(1e-2, momentum=10**400)
