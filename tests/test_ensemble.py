"""fit_ensemble: K models trained at once with vmap equal K separate fits."""

from __future__ import annotations

import pytest
import torch

import functional_nn as fnn
from functional_nn import optim
from functional_nn._pytree import tree_index, tree_leaves, tree_map, tree_stack
from tests.helpers import assert_trees_close

N, D_IN, H, D_OUT, K = 20, 5, 8, 3, 8
NET = fnn.mlp([D_IN, H, D_OUT])
# Batched matrix products may round differently from single ones, so model k agrees with its own
# fit to rounding, not always bitwise (measured on CPU: 0 full batch, 2e-16 and 8e-8 with
# minibatches); the margin is for other devices' batched kernels.
RTOL = {torch.float64: 1e-12, torch.float32: 1e-5}
LRS = [1e-4 * 1.5**k for k in range(K)]  # 1e-4 .. 1.7e-3

# (id, ensemble kwargs, the kwargs of model k's separate fit): shared or per-model lr and data order.
CONFIGS = [
    (
        "sgd-full-batch",
        dict(opt=optim.sgd(1e-3, momentum=0.9), steps=12),
        lambda k: dict(opt=optim.sgd(1e-3, momentum=0.9), steps=12),
    ),
    (
        "adam-lrs",
        dict(opt=lambda lr: optim.adam(lr), lrs=LRS, steps=12),
        lambda k: dict(opt=optim.adam(LRS[k]), steps=12),
    ),
    (
        "sgd-lrs-seeds-minibatch",
        dict(
            opt=lambda lr: optim.sgd(lr, momentum=0.5),
            lrs=LRS,
            epochs=3,
            batch_size=6,
            seed=list(range(10, 10 + K)),
        ),
        lambda k: dict(opt=optim.sgd(LRS[k], momentum=0.5), epochs=3, batch_size=6, seed=10 + k),
    ),
    (
        "adam-shared-order-minibatch",
        dict(opt=optim.adam(1e-2), epochs=2, batch_size=7, seed=3),
        lambda k: dict(opt=optim.adam(1e-2), epochs=2, batch_size=7, seed=3),
    ),
]


def problem(device="cpu", dtype=torch.float64, n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D_IN, generator=g, dtype=dtype).to(device)
    y = torch.randn(n, D_OUT, generator=g, dtype=dtype).to(device)
    return [NET.init(100 + k, dtype=dtype, device=device) for k in range(K)], x, y


def tensors(state):
    """The tensors of a state, as a list: step counts and moments alike."""
    return [t for t in tree_leaves(state) if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "name, ensemble_kwargs, single_kwargs", CONFIGS, ids=[c[0] for c in CONFIGS]
)
def test_an_ensemble_of_8_equals_8_fits(name, ensemble_kwargs, single_kwargs, dtype, device):
    models, x, y = problem(device, dtype)
    _, xv, yv = problem(device, dtype, n=9, seed=1)
    kw = dict(ensemble_kwargs)
    result = fnn.fit_ensemble(models, x, y, kw.pop("opt"), model=NET, val=(xv, yv), **kw)
    for k in range(K):
        single_kw = single_kwargs(k)
        single = fnn.fit(
            models[k], x, y, single_kw.pop("opt"), model=NET, val=(xv, yv), **single_kw
        )
        assert result.steps == single.steps and result.val_steps == single.val_steps
        assert_trees_close(result.losses[:, k], single.losses, RTOL[dtype], f"model {k} losses")
        assert_trees_close(
            result.val_losses[:, k], single.val_losses, RTOL[dtype], f"model {k} val losses"
        )
        assert_trees_close(
            tree_index(result.params, k), single.params, RTOL[dtype], f"model {k} params"
        )
        assert_trees_close(
            tensors(tree_index(result.opt_state, k)),
            tensors(single.opt_state),
            RTOL[dtype],
            f"model {k} opt_state",
        )


@pytest.mark.parametrize("model", [NET, NET.apply], ids=["network", "plain-callable"])
def test_a_list_and_a_stacked_tree_train_the_same_and_stay_untouched(model):
    models, x, y = problem()
    stacked = tree_stack(models)
    before = tree_map(torch.clone, (models, stacked))
    a = fnn.fit_ensemble(
        models, x, y, optim.adam(1e-2), model=model, steps=4, batch_size=6, seed=[1] * K
    )
    b = fnn.fit_ensemble(
        stacked, x, y, optim.adam(1e-2), model=model, steps=4, batch_size=6, seed=[1] * K
    )
    assert a.losses.shape == (4, K)
    assert_trees_close((a.params, a.losses), (b.params, b.losses), 0.0)
    assert_trees_close((models, stacked), before, 0.0, "inputs after fit_ensemble")


def test_an_ensemble_resumes_bitwise():
    models, x, y = problem()
    opt, kw = (
        (lambda lr: optim.sgd(lr, momentum=0.9)),
        dict(model=NET, lrs=LRS, batch_size=6, seed=list(range(K))),
    )
    whole = fnn.fit_ensemble(models, x, y, opt, steps=10, **kw)
    first = fnn.fit_ensemble(models, x, y, opt, steps=6, **kw)
    rest = fnn.fit_ensemble(
        first.params, x, y, opt, steps=4, opt_state=first.opt_state, start_step=first.steps, **kw
    )
    assert rest.steps == 10
    assert_trees_close((rest.params, rest.opt_state), (whole.params, whole.opt_state), 0.0)
    assert_trees_close(torch.cat([first.losses, rest.losses]), whole.losses, 0.0)


def test_a_diverging_model_leaves_the_others_alone():
    models, x, y = problem()
    lrs = [1e-4] * K
    lrs[5] = 10.0  # diverges: sse on 20 examples with lr 10
    opt, kw = (lambda lr: optim.sgd(lr)), dict(model=NET, lrs=lrs, steps=15)
    bad = fnn.fit(
        models[5], x, y, optim.sgd(10.0), model=NET, steps=15, on_nonfinite="stop"
    ).nonfinite_step
    assert bad is not None
    with pytest.raises(FloatingPointError, match=rf"step {bad} in model 5 of the ensemble"):
        fnn.fit_ensemble(models, x, y, opt, **kw)
    stopped = fnn.fit_ensemble(models, x, y, opt, on_nonfinite="stop", **kw)
    assert (stopped.steps, stopped.nonfinite_step, stopped.stop_reason) == (bad, bad, "nonfinite")
    ignored = fnn.fit_ensemble(models, x, y, opt, on_nonfinite="ignore", **kw)
    assert (ignored.steps, ignored.nonfinite_step) == (15, bad)
    assert not bool(torch.isfinite(ignored.losses[:, 5]).all())
    for k in (0, 4, 6, 7):
        single = fnn.fit(models[k], x, y, optim.sgd(1e-4), model=NET, steps=15)
        assert_trees_close(
            tree_index(ignored.params, k), single.params, RTOL[torch.float64], f"model {k}"
        )


def test_ensemble_progress_lines_show_the_mean_loss(capsys):
    models, x, y = problem()
    r = fnn.fit_ensemble(models, x, y, optim.adam(1e-2), model=NET, steps=4, log_every=2)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    for line, s in zip(lines, (2, 4)):
        assert line.startswith(f"step {s - 1} ({s}/4 done)  loss ")
        assert float(line.split()[5]) == pytest.approx(float(r.losses[s - 1].mean()), rel=1e-5)


BAD = [
    (
        "lrs-length",
        dict(opt=lambda lr: optim.sgd(lr), lrs=[1e-3] * 3),
        ValueError,
        r"lrs must hold one learning rate per model \(8\), got \[0.001, 0.001, 0.001\]",
    ),
    (
        "lrs-negative",
        dict(opt=lambda lr: optim.sgd(lr), lrs=[1e-3] * 7 + [-1.0]),
        ValueError,
        r"Invalid lrs\[7\]: -1.0 \(expected a number >= 0\)",
    ),
    (
        "lrs-nan",
        dict(opt=lambda lr: optim.sgd(lr), lrs=torch.tensor([1e-3] * 7 + [float("nan")])),
        ValueError,
        r"Invalid lrs\[7\]: nan \(not finite; expected a number >= 0\)",
    ),
    (
        "lrs-with-transformation",
        dict(opt=optim.sgd(1e-3), lrs=LRS),
        TypeError,
        r"with lrs, opt must be a function of the learning rate, e.g. lambda lr: optim.adam\(lr\), got GradientTransformation",
    ),
    (
        "factory-without-lrs",
        dict(opt=lambda lr: optim.sgd(lr)),
        TypeError,
        r"opt is a function \(function <function .*\); with lrs=\[one per model\] it makes each model's optimizer",
    ),
    (
        "lrs-type",
        dict(opt=lambda lr: optim.sgd(lr), lrs=1e-3),
        TypeError,
        r"lrs must be a list or 1-d tensor of 8 learning rates, got float 0.001",
    ),
    (
        "seed-length",
        dict(seed=[0, 1]),
        ValueError,
        r"seed must be an int or a list of 8 ints \(one per model\), got \[0, 1\]",
    ),
    (
        "seed-negative",
        dict(seed=-3),
        ValueError,
        r"Invalid seed: -3 \(expected an int in \[0, 2\*\*64\)\)",
    ),
    (
        "seed-item",
        dict(seed=[0] * 7 + [1.5]),
        TypeError,
        r"seed\[7\] must be an int, got float: 1.5",
    ),
    (
        "params-mismatch",
        dict(params=lambda m: [*m[:7], fnn.mlp([D_IN, 4, D_OUT]).init(0, dtype=torch.float64)]),
        ValueError,
        r"(?s)params\[7\] does not match the structure of params\[0\].*float64\[4, 5\].*float64\[8, 5\]",
    ),
    (
        "stacked-sizes",
        dict(params=lambda m: [{"weight": torch.zeros(8, H, D_IN), "bias": torch.zeros(3, H)}]),
        ValueError,
        r"params must be a list of K params trees, or one tree whose every leaf has a leading axis of K",
    ),
    (
        "stacked-other-net",
        dict(
            params=lambda m: tree_stack(
                [fnn.mlp([D_IN, 4, D_OUT]).init(k, dtype=torch.float64) for k in range(K)]
            )
        ),
        ValueError,
        r"model 0 of the ensemble: (?=.*layer 0).*params\[0\]\['weight'\].* has shape \(4, 5\), expected \(8, 5\)",
    ),
    (
        "nan-params",
        dict(params=lambda m: [*m[:6], tree_map(lambda t: t * float("nan"), m[6]), *m[7:]]),
        ValueError,
        r"model 6 of the ensemble: params\[0\]\['weight'\] contains 40 NaN or inf values \(of 40\)",
    ),
    (
        "x-width",
        dict(x=torch.randn(N, 4, dtype=torch.float64)),
        ValueError,
        r"^model 0 of the ensemble: x has shape \(20, 4\), but the first layer expects 5 features",
    ),
    (
        "x-width-stacked",
        dict(x=torch.randn(N, 4, dtype=torch.float64), params=tree_stack),
        ValueError,
        r"^model 0 of the ensemble: x has shape \(20, 4\), but the first layer expects 5 features",
    ),
    (
        "x-width-plain",
        dict(x=torch.randn(N, 4, dtype=torch.float64), model=NET.apply),
        ValueError,
        r"^model\(params, x\) fails for x of shape \(20, 4\)",
    ),
    (
        "factory-branches",
        dict(opt=lambda lr: optim.adam(lr) if lr > 1e-3 else optim.sgd(lr), lrs=LRS),
        ValueError,
        r"^opt\(lr\) fails when called as fit_ensemble calls it, inside vmap .* the factory must not branch on "
        r"lr's value",
    ),
    (
        "factory-branches-in-args",
        dict(opt=lambda lr: optim.sgd(lr, momentum=0.9 if lr > 1e-3 else 0.0), lrs=LRS),
        ValueError,
        r"the factory must not branch on lr's value",
    ),
    (
        "factory-reads-number",
        dict(opt=lambda lr: optim.sgd(float(lr)), lrs=LRS),
        ValueError,
        r"read it as a Python number",
    ),
    (
        "factory-returns-other",
        dict(opt=lambda lr: torch.optim.SGD, lrs=LRS),
        TypeError,
        r"opt\(lr\) must return a GradientTransformation, e.g. optim.adam\(lr\), got type",
    ),
    (
        "state-unstacked",
        dict(opt_state=lambda m: optim.adam(1e-3).init(m[0])),
        ValueError,
        r"opt_state does not match the structure of opt.init\(params\)",
    ),
]


@pytest.mark.parametrize("change, error, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_ensemble_input_is_refused_with_a_clear_message(change, error, message):
    models, x, y = problem()
    kw = dict(opt=optim.adam(1e-3), steps=2, model=NET)
    kw.update({k: v(models) if k in ("params", "opt_state") else v for k, v in change.items()})
    params, x = kw.pop("params", models), kw.pop("x", x)
    with pytest.raises(error, match=message):
        fnn.fit_ensemble(params, x, y, kw.pop("opt"), **kw)
