"""fit on the seeds' workload, against the oracle's training program and the seeds' torch programs.

The workload: N, D_in, H, D_out = 64, 1000, 100, 10; mlp([1000, 100, 10], bias=False, init="normal");
summed squared error; 500 steps of SGD (lr 1e-6) or Adam (lr 1e-4); float64. Three independent
implementations (functional_nn.fit, oracle.train.train in numpy, the seeds' torch.nn/torch.optim
loop) must give the same loss curve and final weights to SEED_RTOL = 1e-9 in rel_error, the
scale-free distance max|a - b| / max(|a| + |b|) of oracle.gradcheck (measured: below 1e-15).

Each 500-step run takes a second or two on CPU, so each run is made once per test process and
device (functools.cache) and shared, read-only, by the tests that read it; a test that hands
tensors to fit hands it copies.
"""

from __future__ import annotations

import functools

import pytest
import torch

import functional_nn as fnn
from functional_nn._pytree import clone, tree_leaves
from oracle import optim as oracle_optim
from oracle.train import train as oracle_train
from tests.helpers import assert_trees_close, to_numpy

N, D_IN, H, D_OUT = 64, 1000, 100, 10
STEPS = 500
SEED_RTOL = 1e-9

LR = {"sgd": 1e-6, "adam": 1e-4}  # the seeds' learning rates
# name: (functional_nn optimizer, oracle optimizer)
OPTIMIZERS = {"sgd": (fnn.sgd, oracle_optim.SGD), "adam": (fnn.adam, oracle_optim.Adam)}


def _seed_net() -> fnn.Network:
    return fnn.mlp([D_IN, H, D_OUT], bias=False, init="normal")


@functools.cache
def _workload(device: str):
    """(params, x, y) of the seeds, float64, on `device`: standard-normal data and weights."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D_IN, generator=g, dtype=torch.float64)
    y = torch.randn(N, D_OUT, generator=g, dtype=torch.float64)
    params = _seed_net().init(1, dtype=torch.float64, device=device)
    return params, x.to(device), y.to(device)


def _fresh_workload(device: str):
    """Copies of the workload a test may hand to fit without risking the shared one."""
    return clone(_workload(device))


@functools.cache
def _fit(device: str, name: str) -> fnn.FitResult:
    params, x, y = _fresh_workload(device)
    return fnn.fit(params, x, y, OPTIMIZERS[name][0](lr=LR[name]), model=_seed_net(), steps=STEPS)


@functools.cache
def _oracle(name: str):
    """The oracle's run, in numpy on the CPU whatever the device under test (the data are the same)."""
    params, x, y = _workload("cpu")
    return oracle_train(
        to_numpy(params), x.numpy(), y.numpy(), OPTIMIZERS[name][1](lr=LR[name]), steps=STEPS
    )


def _seed_torch_program(params, x, y, name: str):
    """The seeds' torch.nn stage (SGD by hand) or torch.optim stage (Adam), from `params`.

    Returns (final weights in mlp's layout, (STEPS,) losses before each update).
    """
    model = torch.nn.Sequential(
        torch.nn.Linear(D_IN, H, bias=False),
        torch.nn.ReLU(),
        torch.nn.Linear(H, D_OUT, bias=False),
    ).to(dtype=torch.float64, device=x.device)
    with torch.no_grad():  # mlp params are nn.Linear-shaped, (out, in): copied as they are
        model[0].weight.copy_(params[0]["weight"])
        model[2].weight.copy_(params[1]["weight"])
    loss_fn = torch.nn.MSELoss(reduction="sum")
    optimizer = (
        torch.optim.Adam(model.parameters(), lr=LR["adam"], foreach=False)
        if name == "adam"
        else None
    )
    losses = []
    for _ in range(STEPS):
        loss = loss_fn(model(x), y)
        losses.append(loss.detach())
        if optimizer is not None:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        else:
            loss.backward()
            with torch.no_grad():
                for param in model.parameters():
                    param -= LR["sgd"] * param.grad
            model.zero_grad()
    weights = [
        {"weight": model[0].weight.detach().clone()},
        {"weight": model[2].weight.detach().clone()},
    ]
    return weights, torch.stack(losses)


# ---------------------------------------------------------------------------- agreement


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_fit_matches_oracle_training(name, device):
    result = _fit(str(device), name)
    oracle_params, oracle_losses = _oracle(name)
    assert result.losses.shape == (STEPS,)
    assert result.losses.device.type == device.type and result.losses.dtype == torch.float64
    assert_trees_close(result.losses, oracle_losses, rtol=SEED_RTOL, name=f"fit({name}) losses")
    assert_trees_close(result.params, oracle_params, rtol=SEED_RTOL, name=f"fit({name}) params")


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_fit_matches_seed_torch_program(name, device):
    result = _fit(str(device), name)
    weights, losses = _seed_torch_program(*_fresh_workload(str(device)), name)
    assert_trees_close(result.losses, losses, rtol=SEED_RTOL, name=f"fit({name}) losses")
    assert_trees_close(result.params, weights, rtol=SEED_RTOL, name=f"fit({name}) params")


def test_the_workload_trains():
    """The comparison is not between curves that stand still: the seeds' SGD drives the loss down
    by orders of magnitude, and Adam moves it too."""
    sgd, adam = _fit("cpu", "sgd").losses, _fit("cpu", "adam").losses
    assert sgd[-1] < 1e-3 * sgd[0]
    assert adam[-1] < 0.5 * adam[0]


# ---------------------------------------------------------------------------- fit's contract


def _exact_on_cpu(device: torch.device) -> float:
    """0 (bitwise) on CPU; on CUDA a rounding-level bound, as its kernels promise no bitwise repeat."""
    return 0.0 if device.type == "cpu" else 1e-13


def test_first_loss_is_the_loss_before_any_update(device):
    params, x, y = _workload(str(device))
    initial = fnn.sse(_seed_net().apply(params, x), y)
    for name in OPTIMIZERS:
        first = _fit(str(device), name).losses[0]
        assert_trees_close(
            first, initial, rtol=_exact_on_cpu(device), name=f"fit({name}).losses[0]"
        )


@pytest.mark.parametrize(
    "opt",
    [fnn.adam(lr=LR["adam"]), fnn.sgd(lr=LR["sgd"], momentum=0.9)],
    ids=["adam", "sgd_momentum"],
)
def test_fit_mutates_nothing_it_is_given(opt, device):
    params, x, y = _fresh_workload(str(device))
    net = _seed_net()
    data_before = clone((params, x, y))
    opt_state = fnn.fit(params, x, y, opt, model=net, steps=2).opt_state  # a state with history
    state_before = clone(opt_state)
    fnn.fit(params, x, y, opt, model=net, steps=3, opt_state=opt_state)
    for after, before in (((params, x, y), data_before), (opt_state, state_before)):
        after, before = tree_leaves(after), tree_leaves(before)
        assert len(after) == len(before) > 0
        assert all(torch.equal(a, b) for a, b in zip(after, before))


def test_fit_is_deterministic_on_cpu():
    """Bitwise: the same inputs give the same params and losses (CUDA does not promise this)."""
    params, x, y = _fresh_workload("cpu")
    again = fnn.fit(params, x, y, fnn.adam(lr=LR["adam"]), model=_seed_net(), steps=STEPS)
    first = _fit("cpu", "adam")
    assert all(
        torch.equal(a, b) for a, b in zip(tree_leaves(again.params), tree_leaves(first.params))
    )
    assert torch.equal(again.losses, first.losses)


def test_fit_resumes_from_its_opt_state(device):
    """fit 200 Adam steps, then 300 more from the returned params and opt_state, is fit 500 steps."""
    params, x, y = _fresh_workload(str(device))
    opt, net = fnn.adam(lr=LR["adam"]), _seed_net()
    first = fnn.fit(params, x, y, opt, model=net, steps=200)
    second = fnn.fit(first.params, x, y, opt, model=net, steps=300, opt_state=first.opt_state)
    whole, rtol = _fit(str(device), "adam"), _exact_on_cpu(device)
    assert_trees_close(second.params, whole.params, rtol=rtol, name="resumed params")
    assert_trees_close(second.opt_state, whole.opt_state, rtol=rtol, name="resumed opt_state")
    assert_trees_close(
        torch.cat([first.losses, second.losses]), whole.losses, rtol=rtol, name="resumed losses"
    )


# ---------------------------------------------------------------------------- bad input


# (id, kwargs made from the seed's x and y, exception, what the message must say)
BAD_INPUTS = [
    (
        "row_mismatch",
        lambda x, y: dict(x=x, y=y[:63]),
        ValueError,
        r"same number of rows.*\(64, 1000\).*\(63, 10\)",
    ),
    (
        "x_width",
        lambda x, y: dict(x=x[:, :999], y=y),
        ValueError,
        r"\(64, 999\).*expects 1000 features",
    ),
    (
        "int_x",
        lambda x, y: dict(x=x.to(torch.int64), y=y),
        TypeError,
        r"x must be a floating.*got dtype torch\.int64",
    ),
    (
        "steps_zero",
        lambda x, y: dict(x=x, y=y, steps=0),
        ValueError,
        r"Invalid steps: 0 \(expected an int >= 1\)",
    ),
]


def _spy_optimizer(calls: list) -> fnn.GradientTransformation:
    """SGD that appends to `calls` whenever fit uses it."""
    inner = fnn.sgd(lr=LR["sgd"])

    def init(params):
        calls.append("init")
        return inner.init(params)

    def update(grads, state, params=None):
        calls.append("update")
        return inner.update(grads, state, params)

    return fnn.GradientTransformation(init, update)


@pytest.mark.parametrize(
    "make_kwargs, error, message", [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS]
)
def test_fit_rejects_bad_input_before_any_work(make_kwargs, error, message):
    params, x, y = _workload("cpu")
    calls = []
    with pytest.raises(error, match=message):
        fnn.fit(params, opt=_spy_optimizer(calls), model=_seed_net(), **make_kwargs(x, y))
    assert calls == []
