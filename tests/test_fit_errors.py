"""Bad input to fit: each case is refused before any work with the expected exception, and a message
that names the argument, what was given and what was expected."""

from __future__ import annotations

import pytest
import torch

import functional_nn as fnn
from functional_nn import optim
from functional_nn._pytree import tree_leaves, tree_map

N, D_IN, H, D_OUT = 6, 5, 8, 3
NET = fnn.mlp([D_IN, H, D_OUT])


def good():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(N, D_IN, generator=g), torch.randn(N, D_OUT, generator=g)
    params = NET.init(0)
    return dict(params=params, x=x, y=y, opt=optim.adam(1e-3), model=NET, steps=2)


def with_value(name, index, value):
    """x or y with one entry replaced (a copy)."""

    def change(kw):
        t = kw[name].clone()
        t[index] = value
        return {name: t}

    return change


def poison(params, layer, key, value):
    """A copy of mlp params with one entry of params[layer][key] set to value."""
    params = tree_map(torch.clone, params)
    params[layer][key].view(-1)[-1] = value
    return params


def on_meta(kw):
    return {"params": tree_map(lambda t: t.to("meta"), kw["params"])}


# (id, a change to good()'s arguments, exception, regex the message must match)
CASES = [
    (
        "rows",
        lambda kw: {"y": kw["y"][:4]},
        ValueError,
        r"x and y must have the same number of rows .* x of shape \(6, 5\) and y of shape \(4, 3\)",
    ),
    (
        "width",
        lambda kw: {"x": torch.randn(N, 4)},
        ValueError,
        r"x has shape \(6, 4\), but the first layer expects 5 features",
    ),
    (
        "int-x",
        lambda kw: {"x": torch.ones(N, D_IN, dtype=torch.int64)},
        TypeError,
        r"x must be a floating tensor \(real, not complex\), got dtype torch.int64",
    ),
    (
        "complex-x",
        lambda kw: {"x": torch.ones(N, D_IN, dtype=torch.complex64)},
        TypeError,
        r"x must be a floating tensor \(real, not complex\), got dtype torch.complex64",
    ),
    (
        "x-list",
        lambda kw: {"x": kw["x"].tolist()},
        TypeError,
        r"x must be a torch.Tensor, got list",
    ),
    (
        "nan-x",
        with_value("x", (3, 1), float("nan")),
        ValueError,
        r"x contains 1 NaN or inf values \(the first in row 3\)",
    ),
    (
        "inf-y",
        with_value("y", (2, 0), float("inf")),
        ValueError,
        r"y contains 1 NaN or inf values \(the first in row 2\)",
    ),
    (
        "empty",
        lambda kw: {"x": kw["x"][:0], "y": kw["y"][:0]},
        ValueError,
        r"x and y hold no examples",
    ),
    (
        "other-net",
        lambda kw: {"params": fnn.mlp([D_IN, 7, D_OUT]).init(0)},
        ValueError,
        r"(?=.*layer 0).*params\[0\]\['weight'\].* has shape \(7, 5\), expected \(8, 5\)",
    ),
    (
        "no-bias-net",
        lambda kw: {"params": fnn.mlp([D_IN, H, D_OUT], bias=False).init(0)},
        ValueError,
        r"(?=.*layer 0).*params\[0\].* has keys \['weight'\], expected \['bias', 'weight'\]",
    ),
    (
        "nan-params",
        lambda kw: {"params": poison(kw["params"], 1, "bias", float("nan"))},
        ValueError,
        r"params\[1\]\['bias'\] contains 1 NaN or inf values \(of 3\); start from finite params",
    ),
    (
        "inf-params",
        lambda kw: {"params": poison(kw["params"], 0, "weight", -float("inf"))},
        ValueError,
        r"params\[0\]\['weight'\] contains 1 NaN or inf values \(of 40\)",
    ),
    (
        "int-params",
        lambda kw: {"params": [{"weight": torch.ones(H, D_IN, dtype=torch.int64)}]},
        TypeError,
        r"params must be a non-empty pytree of floating tensors, got \[\{'weight': int64\[8, 5\]\}\]",
    ),
    (
        "dtype",
        lambda kw: {"x": kw["x"].double(), "y": kw["y"].double()},
        TypeError,
        r"x has dtype torch.float64 but params have \['torch.float32'\]",
    ),
    ("device", on_meta, ValueError, r"x is on cpu but params are on \['meta'\]"),
    ("steps-0", lambda kw: {"steps": 0}, ValueError, r"Invalid steps: 0 \(expected an int >= 1\)"),
    ("steps-float", lambda kw: {"steps": 2.5}, TypeError, r"steps must be an int, got float: 2.5"),
    (
        "epochs-0",
        lambda kw: {"steps": None, "epochs": 0},
        ValueError,
        r"Invalid epochs: 0 \(expected an int >= 1\)",
    ),
    (
        "steps-and-epochs",
        lambda kw: {"epochs": 2},
        ValueError,
        r"give steps or epochs, not both \(got steps=2, epochs=2\)",
    ),
    (
        "batch-0",
        lambda kw: {"batch_size": 0},
        ValueError,
        r"Invalid batch_size: 0 \(expected an int >= 1\)",
    ),
    (
        "batch-too-big",
        lambda kw: {"batch_size": N + 1},
        ValueError,
        r"batch_size is 7 but the data has only 6 examples; use a batch_size <= 6",
    ),
    (
        "start-step",
        lambda kw: {"start_step": -1},
        ValueError,
        r"Invalid start_step: -1 \(expected an int >= 0\)",
    ),
    (
        "log-every",
        lambda kw: {"log_every": -2},
        ValueError,
        r"Invalid log_every: -2 \(expected an int >= 0\)",
    ),
    (
        "eval-every",
        lambda kw: {"eval_every": 0},
        ValueError,
        r"Invalid eval_every: 0 \(expected an int >= 1\)",
    ),
    ("seed", lambda kw: {"seed": "0"}, TypeError, r"seed must be an int, got str: '0'"),
    (
        "seed-negative",
        lambda kw: {"seed": -1},
        ValueError,
        r"Invalid seed: -1 \(expected an int in \[0, 2\*\*64\)\)",
    ),
    (
        "shuffle",
        lambda kw: {"shuffle": 1},
        TypeError,
        r"shuffle must be a bool \(True or False\), got int: 1",
    ),
    (
        "on-nonfinite",
        lambda kw: {"on_nonfinite": "warn"},
        ValueError,
        r"Invalid on_nonfinite: 'warn' \(expected one of \('raise', 'stop', 'ignore'\)\)",
    ),
    (
        "opt",
        lambda kw: {"opt": torch.optim.SGD},
        TypeError,
        r"opt must be a GradientTransformation, e.g. optim.adam\(1e-3\), got type <class 'torch.optim.sgd.SGD'>",
    ),
    (
        "model",
        lambda kw: {"model": "mlp"},
        TypeError,
        r"model must be a Network or a callable .*, got str 'mlp'",
    ),
    ("loss", lambda kw: {"loss": 3}, TypeError, r"loss must be a name or a callable"),
    ("loss", lambda kw: {"loss": "nope"}, ValueError, r"Unknown loss 'nope'; expected one of"),
    (
        "callbacks",
        lambda kw: {"callbacks": [1]},
        TypeError,
        r"callbacks must be a list or tuple of callables",
    ),
    (
        "val-single",
        lambda kw: {"val": kw["x"]},
        TypeError,
        r"val must be a pair \(x_val, y_val\) of tensors",
    ),
    (
        "val-width",
        lambda kw: {"val": (torch.randn(3, 4), torch.randn(3, D_OUT))},
        ValueError,
        r"^val\[0\] \(x_val\) does not fit the model: x_val has shape \(3, 4\), but the first layer expects 5 "
        r"features in its last dimension: pass x_val of shape \(N, 5\)",
    ),
    (
        "val-rows",
        lambda kw: {"val": (torch.randn(3, D_IN), torch.randn(2, D_OUT))},
        ValueError,
        r"val\[0\] \(x_val\) and val\[1\] \(y_val\) must have the same number of rows",
    ),
    (
        "val-nan",
        lambda kw: {"val": (torch.full((3, D_IN), float("nan")), torch.randn(3, D_OUT))},
        ValueError,
        r"val\[0\] \(x_val\) contains 15 NaN or inf values \(the first in row 0\)",
    ),
    (
        "val-dtype",
        lambda kw: {"val": (torch.randn(3, D_IN, dtype=torch.float64), torch.randn(3, D_OUT))},
        TypeError,
        r"val\[0\] \(x_val\) has dtype torch.float64 but x has torch.float32",
    ),
    (
        "state-other-tree",
        lambda kw: {"opt_state": optim.adam(1e-3).init(fnn.mlp([D_IN, 7, D_OUT]).init(0))},
        ValueError,
        r"opt_state does not match the structure of opt.init\(params\)",
    ),
    (
        "state-other-opt",
        lambda kw: {"opt_state": optim.sgd(1e-3, momentum=0.9).init(kw["params"])},
        ValueError,
        r"(?s)opt_state does not match the structure of opt.init\(params\).*TraceState.*ScaleByAdamState",
    ),
    (
        "state-dtype",
        lambda kw: {
            "opt_state": optim.adam(1e-3).init(tree_map(lambda t: t.double(), kw["params"]))
        },
        TypeError,
        r"opt_state leaf 1 has dtype torch.float64, but opt.init\(params\) makes torch.float32",
    ),
    (
        "labels-out-of-range",
        lambda kw: {"loss": fnn.cross_entropy, "y": torch.tensor([0, 1, 2, 3, 0, 1])},
        ValueError,
        r"cross_entropy: class labels for 3 classes must lie in \[0, 2\], got values from 0 to 3",
    ),
    (
        "val-labels",
        lambda kw: {
            "loss": fnn.cross_entropy,
            "y": torch.tensor([0, 1, 2, 2, 0, 1]),
            "val": (torch.randn(2, D_IN), torch.tensor([0, -1])),
        },
        ValueError,
        r"^val\[1\] \(y_val\): cross_entropy: class labels for 3 classes must lie in \[0, 2\], got values from -1 to 0",
    ),
    (
        "val-target-shape",
        lambda kw: {"val": (torch.randn(2, D_IN), torch.randn(2, 4))},
        ValueError,
        r"^loss\(pred, val\[1\] \(y_val\)\) fails for pred of shape \(2, 3\) .* and val\[1\] \(y_val\) of shape \(2, 4\)",
    ),
]


@pytest.mark.parametrize(
    "change, error, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_refused_with_a_clear_message(change, error, message):
    kw = good()
    kw.update(change(kw))
    params, x, y, opt = kw.pop("params"), kw.pop("x"), kw.pop("y"), kw.pop("opt")
    with pytest.raises(error, match=message):
        fnn.fit(params, x, y, opt, **kw)


def test_bad_input_is_refused_before_any_work():
    calls = []

    def model(params, x):
        calls.append(1)
        return NET.apply(params, x)

    kw = good()
    with pytest.raises(ValueError, match="opt_state does not match"):
        fnn.fit(
            kw["params"],
            kw["x"],
            kw["y"],
            kw["opt"],
            model=model,
            steps=2,
            opt_state=optim.adam(1e-3).init(fnn.mlp([D_IN, 7, D_OUT]).init(0)),
        )
    assert calls == []


def test_per_example_grads_refuses_nan_params_as_fit_does():
    kw = good()
    with pytest.raises(ValueError, match=r"params\[1\]\['weight'\] contains 1 NaN or inf values"):
        fnn.per_example_grads(
            poison(kw["params"], 1, "weight", float("nan")), kw["x"], kw["y"], model=NET
        )


def spying(apply, real_calls):
    """apply, recording in real_calls each call on tensors that are not on meta."""

    def model(params, x):
        if x.device.type != "meta":
            real_calls.append(tuple(x.shape))
        return apply(params, x)

    return model


# Mistakes that a Network's own check names, made with a plain callable model: found by running the
# model and the loss once on meta tensors. (id, change, exception, message)
PLAIN_CASES = [
    (
        "width",
        lambda kw: {"x": torch.randn(N, 4)},
        ValueError,
        r"^model\(params, x\) fails for x of shape \(6, 4\) and params \[\{'weight': float32\[8, 5\].* \(run once "
        r"on meta tensors before training\): RuntimeError: .*\[6, 4\].*\[5, 8\]",
    ),
    (
        "other-net",
        lambda kw: {"params": fnn.mlp([4, 7, D_OUT]).init(0)},
        ValueError,
        r"^model\(params, x\) fails for x of shape \(6, 5\) and params \[\{'weight': float32\[7, 4\]",
    ),
    (
        "labels-out-of-range",
        lambda kw: {"loss": fnn.cross_entropy, "y": torch.tensor([0, 1, 2, 3, 0, 1])},
        ValueError,
        r"^cross_entropy: class labels for 3 classes must lie in \[0, 2\], got values from 0 to 3",
    ),
    (
        "target-shape",
        lambda kw: {"y": torch.randn(N, 2)},
        ValueError,
        r"^loss\(pred, y\) fails for pred of shape \(6, 3\) \(torch.float32\) and y of shape \(6, 2\) "
        r"\(torch.float32\) .*: ValueError: sse: .*",
    ),
    (
        "val-width",
        lambda kw: {"val": (torch.randn(3, 4), torch.randn(3, D_OUT))},
        ValueError,
        r"^model\(params, val\[0\] \(x_val\)\) fails for val\[0\] \(x_val\) of shape \(3, 4\)",
    ),
    (
        "val-labels",
        lambda kw: {
            "loss": fnn.cross_entropy,
            "y": torch.tensor([0, 1, 2, 2, 0, 1]),
            "val": (torch.randn(2, D_IN), torch.tensor([0, 5])),
        },
        ValueError,
        r"^val\[1\] \(y_val\): cross_entropy: class labels for 3 classes must lie in \[0, 2\]",
    ),
    # What the loss returns, for a Network and a plain callable alike:
    (
        "loss-not-scalar",
        lambda kw: {"loss": lambda p, t: (p - t) ** 2},
        ValueError,
        r"^loss\(pred, y\) must return a 0-d floating tensor, got shape \(6, 3\); reduce it",
    ),
    (
        "loss-integer",
        lambda kw: {"loss": lambda p, t: (p.argmax(1) != t.argmax(1)).sum()},
        TypeError,
        r"^loss\(pred, y\) must return a 0-d floating tensor, got dtype torch.int64: an integer",
    ),
    (
        "loss-float",
        lambda kw: {"loss": lambda p, t: 1.5},
        TypeError,
        r"^loss\(pred, y\) must return a 0-d floating tensor, got float 1.5",
    ),
    (
        "model-not-tensor",
        lambda kw: {"model_output": lambda out: (out, out)},
        TypeError,
        r"^model\(params, x\) must return a tensor, got tuple",
    ),
]


# The cases found this way for a Network too (its own check reports the others, in CASES).
NETWORK_TOO = {
    "labels-out-of-range",
    "target-shape",
    "val-labels",
    "loss-not-scalar",
    "loss-integer",
    "loss-float",
    "model-not-tensor",
}


@pytest.mark.parametrize("kind", ["plain-callable", "network"])
@pytest.mark.parametrize(
    "case, change, error, message", PLAIN_CASES, ids=[c[0] for c in PLAIN_CASES]
)
def test_a_plain_callable_model_gets_clear_errors_before_the_first_step(
    case, change, error, message, kind
):
    kw = good()
    kw.update(change(kw))
    output = kw.pop("model_output", lambda out: out)
    real_calls = []
    model = spying(lambda p, x: output(NET.apply(p, x)), real_calls)
    if kind == "network":
        if case not in NETWORK_TOO:
            pytest.skip("a Network's own check reports this one (CASES above)")
        model = fnn.Network(init=NET.init, apply=model, check=NET.check)
    params, x, y, opt = kw.pop("params"), kw.pop("x"), kw.pop("y"), kw.pop("opt")
    with pytest.raises(error, match=message):
        fnn.fit(params, x, y, opt, **{**kw, "model": model})
    assert real_calls == []


def item_model(params, x):
    """NET with an output scale read as a Python number: .item() has no value on meta tensors."""
    return NET.apply(params, x) * (1.0 + 0.0 * params[0]["bias"].sum().item())


def cpu_constant_model(params, x):
    """NET plus a tensor made on the cpu, which cannot meet a meta tensor."""
    return NET.apply(params, x) + torch.zeros(D_OUT, dtype=x.dtype)


def unique_model(params, x):
    """NET through torch.unique, an op without a meta kernel."""
    out = NET.apply(params, x)
    return out + 0.0 * torch.unique(x).sum()


@pytest.mark.parametrize("model", [item_model, cpu_constant_model, unique_model])
def test_a_model_that_cannot_run_on_meta_tensors_still_trains(model):
    kw = good()
    r = fnn.fit(kw["params"], kw["x"], kw["y"], optim.adam(1e-2), model=model, steps=3)
    expected = fnn.fit(kw["params"], kw["x"], kw["y"], optim.adam(1e-2), model=NET, steps=3)
    assert r.steps == 3
    for got, want in zip(tree_leaves(r.params), tree_leaves(expected.params)):
        assert torch.allclose(got, want, rtol=1e-6, atol=0)


def test_a_loss_that_cannot_run_on_meta_tensors_still_trains():
    kw = good()
    loss = lambda p, t: fnn.sse(p, t) * (1.0 + 0.0 * p.sum().item())
    r = fnn.fit(
        kw["params"], kw["x"], kw["y"], optim.sgd(1e-3), model=NET.apply, loss=loss, steps=2
    )
    assert r.steps == 2 and bool(torch.isfinite(r.losses).all())


def batch_of(rows):
    """NET for inputs of exactly `rows` rows, as a model written for one batch size is (x.view with
    the batch size spelled out)."""
    return lambda params, x: NET.apply(params, x.view(rows, D_IN))


def test_the_abstract_run_gives_the_model_a_training_batch_not_all_of_x():
    kw = good()
    # Batches of 2 rows are what this model takes, and what fit gives it: it trains as NET does.
    r = fnn.fit(
        kw["params"], kw["x"], kw["y"], optim.sgd(1e-2), model=batch_of(2), batch_size=2, steps=4
    )
    expected = fnn.fit(
        kw["params"], kw["x"], kw["y"], optim.sgd(1e-2), model=NET, batch_size=2, steps=4
    )
    for got, want in zip(tree_leaves(r.params), tree_leaves(expected.params)):
        assert torch.equal(got, want)
    # Batches of 3 it cannot take: refused before any work, naming the batch it was given.
    real_calls = []
    with pytest.raises(
        ValueError, match=r"^model\(params, x\[:3\]\) fails for x\[:3\] of shape \(3, 5\)"
    ):
        fnn.fit(
            kw["params"],
            kw["x"],
            kw["y"],
            optim.sgd(1e-2),
            model=spying(batch_of(2), real_calls),
            batch_size=3,
            steps=4,
        )
    assert real_calls == []


def test_with_minibatches_every_label_is_checked_not_only_the_first_batch():
    kw = good()
    labels = torch.tensor([0, 1, 2, 2, 0, 3])  # the bad label is in the last batch of 2
    with pytest.raises(
        ValueError,
        match=r"^cross_entropy: class labels for 3 classes must lie in \[0, 2\], got values from 0 to 3",
    ):
        fnn.fit(
            kw["params"],
            kw["x"],
            labels,
            kw["opt"],
            model=NET.apply,
            loss=fnn.cross_entropy,
            batch_size=2,
            steps=2,
        )


def counting(opt, calls):
    """opt, appending to calls at each update."""

    def update(grads, state, params=None):
        calls.append(1)
        return opt.update(grads, state, params)

    return optim.GradientTransformation(opt.init, update)


def reads_item(loss):
    """loss, after reading pred through .item(), which meta tensors cannot run: fit's abstract
    check of the loss is skipped."""

    def wrapped(pred, y):
        pred.sum().item()
        return loss(pred, y)

    return wrapped


# What the model or loss returns, when only the first step can tell (the abstract run skipped).
FIRST_STEP_CASES = [
    (
        "loss-float",
        NET.apply,
        reads_item(lambda p, t: fnn.sse(p, t).item()),
        TypeError,
        r"^loss\(pred, y\) must return a 0-d floating tensor, got float",
    ),
    (
        "loss-integer",
        NET.apply,
        reads_item(lambda p, t: fnn.sse(p, t).long()),
        TypeError,
        r"^loss\(pred, y\) must return a 0-d floating tensor, got dtype torch.int64",
    ),
    (
        "loss-not-scalar",
        NET.apply,
        reads_item(lambda p, t: (p - t) ** 2),
        ValueError,
        r"^loss\(pred, y\) must return a 0-d floating tensor, got shape \(6, 3\)",
    ),
    (
        "model-not-tensor",
        lambda p, x: [item_model(p, x)],
        lambda pred, t: fnn.sse(pred[0], t),
        TypeError,
        r"^model\(params, x\) must return a tensor, got list",
    ),
]


@pytest.mark.parametrize(
    "model, loss, error, message",
    [c[1:] for c in FIRST_STEP_CASES],
    ids=[c[0] for c in FIRST_STEP_CASES],
)
def test_what_meta_tensors_cannot_check_the_first_step_does_before_any_update(
    model, loss, error, message
):
    kw, calls = good(), []
    with pytest.raises(error, match=message):
        fnn.fit(
            kw["params"],
            kw["x"],
            kw["y"],
            counting(optim.sgd(1e-3), calls),
            model=model,
            loss=loss,
            steps=2,
        )
    assert calls == []
