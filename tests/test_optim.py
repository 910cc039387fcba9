"""Every optimizer config three ways: functional_nn, the numpy oracle, torch.optim (foreach=False).

First driven by one fixed stream of gradients (no feedback, so rounding is not amplified) for
hundreds of steps, then through a short real training run of a tiny mlp on sse. One table of
configs, crossed with dtypes and the `device` fixture.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torch.optim.lr_scheduler as lrs

import functional_nn as fnn
import oracle.losses
import oracle.optim
import oracle.train
from functional_nn import optim
from functional_nn._pytree import tree_leaves, tree_structure, tree_unflatten
from oracle.gradcheck import rel_error
from tests.helpers import assert_trees_close, default_dtype
from tests.tables import SHAPES, TORCH_OPTIMIZERS, mlp_tree

ORACLE = {
    "sgd": oracle.optim.SGD,
    "rmsprop": oracle.optim.RMSprop,
    "adam": oracle.optim.Adam,
    "adamw": oracle.optim.AdamW,
    "adagrad": oracle.optim.Adagrad,
    "adamax": oracle.optim.Adamax,
    "nadam": oracle.optim.NAdam,
    "radam": oracle.optim.RAdam,
}


@dataclass
class Case:
    """One optimizer config; `schedule` = (name, kwargs, torch scheduler factory), its base lr in
    kwargs["lr"]; `tensor_lr` passes lr as a 0-d tensor to functional_nn and torch."""

    name: str
    kwargs: dict = field(default_factory=dict)
    schedule: tuple[str, dict, Callable] | None = None
    tensor_lr: bool = False

    def __str__(self):
        extra = [f"{k}={v}" for k, v in self.kwargs.items()]
        extra += [self.schedule[0]] if self.schedule else []
        extra += ["tensor_lr"] if self.tensor_lr else []
        return "-".join([self.name, *extra])

    def fnn(self, device):
        kwargs = dict(self.kwargs)
        if self.schedule:
            kwargs["lr"] = getattr(optim.schedules, self.schedule[0])(**self.schedule[1])
        elif self.tensor_lr:
            kwargs["lr"] = torch.tensor(kwargs["lr"], dtype=torch.float64, device=device)
        return getattr(optim, self.name)(**kwargs)

    def torch(self, params, device):
        kwargs = dict(self.kwargs)
        if self.tensor_lr:
            kwargs["lr"] = torch.tensor(kwargs["lr"], dtype=torch.float64, device=device)
        opt = TORCH_OPTIMIZERS[self.name](params, **kwargs, foreach=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SequentialLR's spurious "step order" warning
            scheduler = self.schedule[2](opt) if self.schedule else None
        return opt, scheduler

    def oracle(self):
        kwargs = dict(self.kwargs)
        if self.schedule:
            kwargs["lr"] = getattr(oracle.optim, self.schedule[0])(**self.schedule[1])
        return ORACLE[self.name](**kwargs)


def _warmup_cosine(opt):
    warmup = lrs.LinearLR(opt, start_factor=0.01, total_iters=30)
    return lrs.SequentialLR(
        opt, [warmup, lrs.CosineAnnealingLR(opt, T_max=270, eta_min=1e-4)], [30]
    )


CASES = [
    Case("sgd", dict(lr=0.05)),
    Case("sgd", dict(lr=0.05, momentum=0.9)),
    Case("sgd", dict(lr=0.05, momentum=0.9, dampening=0.5)),
    Case("sgd", dict(lr=0.05, momentum=0.8, nesterov=True)),
    Case("sgd", dict(lr=0.05, momentum=0.5, weight_decay=0.1)),
    Case("sgd", dict(lr=0.05, weight_decay=0.1, maximize=True)),
    Case("rmsprop", dict(lr=1e-2)),
    Case("rmsprop", dict(lr=1e-2, alpha=0.9, eps=1e-6)),
    Case("rmsprop", dict(lr=1e-2, centered=True)),
    Case("rmsprop", dict(lr=1e-2, momentum=0.5)),
    Case("rmsprop", dict(lr=1e-2, centered=True, momentum=0.5, weight_decay=0.1, maximize=True)),
    Case("adam", dict(lr=1e-2)),
    Case("adam", dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6)),
    Case("adam", dict(lr=1e-2, amsgrad=True)),
    Case("adam", dict(lr=1e-2, weight_decay=0.1)),
    Case("adam", dict(lr=1e-2, amsgrad=True, maximize=True)),
    Case("adamw", dict(lr=1e-2)),
    Case("adamw", dict(lr=1e-2, weight_decay=0.05, amsgrad=True)),
    Case("adamw", dict(lr=1e-2, maximize=True)),
    Case("adagrad", dict(lr=5e-2)),
    Case("adagrad", dict(lr=5e-2, lr_decay=1e-2)),
    Case("adagrad", dict(lr=5e-2, initial_accumulator_value=0.5, eps=1e-6)),
    Case("adagrad", dict(lr=5e-2, weight_decay=0.1, maximize=True)),
    Case("adamax", dict(lr=1e-2)),
    Case("adamax", dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    Case("adamax", dict(lr=1e-2, maximize=True)),
    Case("nadam", dict(lr=1e-2)),
    Case("nadam", dict(lr=1e-2, momentum_decay=1e-2, weight_decay=0.1)),
    Case("nadam", dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)),
    Case("nadam", dict(lr=1e-2, maximize=True)),
    Case("radam", dict(lr=1e-2)),
    Case("radam", dict(lr=1e-2, weight_decay=0.1)),
    Case("radam", dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)),
    Case("radam", dict(lr=1e-2, betas=(0.9, 0.99), maximize=True)),
    Case(
        "sgd",
        dict(lr=0.05, momentum=0.9),
        schedule=(
            "step_decay",
            dict(init_value=0.05, step_size=40, gamma=0.5),
            lambda o: lrs.StepLR(o, 40, 0.5),
        ),
    ),
    Case(
        "rmsprop",
        dict(lr=1e-2),
        schedule=(
            "exponential_decay",
            dict(init_value=1e-2, gamma=0.99),
            lambda o: lrs.ExponentialLR(o, 0.99),
        ),
    ),
    Case(
        "adam",
        dict(lr=1e-2),
        schedule=(
            "warmup_cosine_decay",
            dict(
                init_value=1e-4, peak_value=1e-2, warmup_steps=30, decay_steps=300, end_value=1e-4
            ),
            _warmup_cosine,
        ),
    ),
    Case(
        "adagrad",
        dict(lr=5e-2, lr_decay=1e-2),
        schedule=(
            "cosine_decay",
            dict(init_value=5e-2, decay_steps=300),
            lambda o: lrs.CosineAnnealingLR(o, 300),
        ),
    ),
    Case(
        "adamw",
        dict(lr=1e-2),
        schedule=(
            "linear",
            dict(init_value=1e-3, end_value=1e-2, transition_steps=50),
            lambda o: lrs.LinearLR(o, start_factor=0.1, total_iters=50),
        ),
    ),
    Case("adam", dict(lr=1e-2, amsgrad=True), tensor_lr=True),
    Case("sgd", dict(lr=0.05, momentum=0.9, nesterov=True), tensor_lr=True),
]

DTYPES = [torch.float64, torch.float32]
# Relative error allowed against torch.optim and the oracle: rounding only, in each dtype.
STREAM_RTOL = {torch.float64: 1e-12, torch.float32: 1e-5}
STEPS = 200


def gradient_stream(dtype, seed=0):
    """(params0, [grads_1 .. grads_STEPS]): float64 trees of SHAPES, rounded to `dtype` so all
    three implementations see the same numbers."""
    gen = torch.Generator().manual_seed(seed)

    def draw():
        return mlp_tree(
            [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).double() for s in SHAPES]
        )

    return draw(), [draw() for _ in range(STEPS)]


def run_functional(case, params, grads, dtype, device, default=None):
    """Params after each step, and the learning rate the state reports before each step; init
    runs under the default dtype `default` (`dtype` when None), as torch.optim in `run_torch`
    (NAdam's momentum product takes torch's scalar dtype)."""
    to = lambda tree: [
        {k: v.to(dtype=dtype, device=device) for k, v in layer.items()} for layer in tree
    ]
    opt, params = case.fnn(device), to(params)
    with default_dtype(default or dtype):
        state = opt.init(params)
    trajectory, lrs_seen = [], []
    for g in grads:
        lrs_seen.append(optim.current_lr(state).item())
        updates, state = opt.update(to(g), state, params)
        params = fnn.apply_updates(params, updates)
        trajectory.append(params)
    return trajectory, lrs_seen


def run_torch(case, params, grads, dtype, device, default=None):
    """torch.optim's trajectory, run under the default dtype `default` (`dtype` when None)."""
    leaves = [
        t.to(dtype=dtype, device=device).clone().requires_grad_(True) for t in tree_leaves(params)
    ]
    spec = tree_structure(params)
    with default_dtype(default or dtype):
        opt, scheduler = case.torch(leaves, device)
        trajectory, lrs_seen = [], []
        for step, g in enumerate(grads):
            # Adagrad's lr_decay is part of our scheduled rate; torch applies it inside step().
            lrs_seen.append(
                float(opt.param_groups[0]["lr"]) / (1 + step * case.kwargs.get("lr_decay", 0.0))
            )
            for p, gi in zip(leaves, tree_leaves(g)):
                p.grad = gi.to(dtype=dtype, device=device).clone()
            opt.step()
            if scheduler is not None:
                scheduler.step()
            trajectory.append(tree_unflatten([p.detach().clone() for p in leaves], spec))
    return trajectory, lrs_seen


def run_oracle(case, params, grads):
    arrays = [t.numpy().copy() for t in tree_leaves(params)]
    opt, spec, trajectory = case.oracle(), tree_structure(params), []
    for g in grads:
        opt.step(arrays, [t.numpy() for t in tree_leaves(g)])
        trajectory.append(tree_unflatten([torch.from_numpy(a.copy()) for a in arrays], spec))
    return trajectory


def stacked(trajectory):
    """One (steps, *shape) tensor per leaf: the whole trajectory as a tree."""
    return [
        torch.stack(leaf).detach().cpu().double() for leaf in zip(*map(tree_leaves, trajectory))
    ]


def stream_errors(case, dtype, device):
    """Worst relative errors of the three trajectories against each other; asserts the tolerance."""
    params, grads = gradient_stream(dtype)
    ours, our_lrs = run_functional(case, params, grads, dtype, device)
    theirs, torch_lrs = run_torch(case, params, grads, dtype, device)
    reference = run_oracle(case, params, grads)
    rtol = STREAM_RTOL[dtype]
    return {
        "torch": assert_trees_close(
            stacked(ours), stacked(theirs), rtol, "functional_nn vs torch.optim"
        ),
        "oracle": assert_trees_close(
            stacked(ours), stacked(reference), rtol, "functional_nn vs oracle"
        ),
        "torch-oracle": assert_trees_close(
            stacked(theirs), stacked(reference), rtol, "torch.optim vs oracle"
        ),
        "lr": assert_trees_close(
            np.array(our_lrs), np.array(torch_lrs), 1e-14, "current_lr vs torch's lr"
        ),
        "moved": rel_error(
            np.concatenate([t.numpy().ravel() for t in tree_leaves(reference[-1])]),
            np.concatenate([t.numpy().ravel() for t in tree_leaves(params)]),
        ),
    }


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_gradient_stream_three_ways(case, dtype, device):
    errors = stream_errors(case, dtype, device)
    # Trajectories that barely moved would agree trivially.
    assert errors["moved"] > 1e-2


# A short real run: every step's gradient depends on the last step's params, so rounding feeds back.
TRAIN_STEPS = 25
TRAIN_RTOL = {torch.float64: 1e-12, torch.float32: 5e-5}


def training_problem(dtype, device):
    net = fnn.mlp([4, 8, 3])
    gen = torch.Generator().manual_seed(1)
    params = [
        {k: 0.3 * v for k, v in layer.items()} for layer in net.init(gen, dtype=torch.float64)
    ]
    x = torch.randn(8, 4, generator=gen, dtype=torch.float64) * 0.5
    y = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    params = [{k: v.to(dtype).double() for k, v in layer.items()} for layer in params]
    x, y = x.to(dtype).double(), y.to(dtype).double()
    cast = lambda t: t.to(dtype=dtype, device=device)
    return net, params, x, y, cast


def train_torch(case, params, x, y, cast, device, dtype, sign):
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).to(
        device, dtype
    )
    with torch.no_grad():
        for linear, layer in zip([model[0], model[2]], params):
            linear.weight.copy_(layer["weight"]), linear.bias.copy_(layer["bias"])
    with default_dtype(dtype):
        opt, scheduler = case.torch(list(model.parameters()), device)
        for _ in range(TRAIN_STEPS):
            opt.zero_grad()
            (sign * ((model(cast(x)) - cast(y)) ** 2).sum()).backward()
            opt.step()
            if scheduler is not None:
                scheduler.step()
    return [
        {"weight": lin.weight.detach(), "bias": lin.bias.detach()} for lin in (model[0], model[2])
    ]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_training_three_ways(case, dtype, device):
    net, params, x, y, cast = training_problem(dtype, device)
    # Ascent on -sse is descent on sse: maximize=True configs train on the negated loss.
    sign = -1.0 if case.kwargs.get("maximize") else 1.0
    start = [{k: cast(v) for k, v in layer.items()} for layer in params]
    loss = lambda pred, target: sign * fnn.sse(pred, target)
    with default_dtype(dtype):  # as train_torch's
        ours = fnn.fit(
            start, cast(x), cast(y), case.fnn(device), model=net, loss=loss, steps=TRAIN_STEPS
        ).params
    theirs = train_torch(case, params, x, y, cast, device, dtype, sign)
    as_np = [{k: v.numpy() for k, v in layer.items()} for layer in params]
    oracle_loss = lambda pred, target: tuple(sign * v for v in oracle.losses.sse(pred, target))
    reference, _ = oracle.train.train(
        as_np, x.numpy(), y.numpy(), case.oracle(), steps=TRAIN_STEPS, loss=oracle_loss
    )
    rtol = TRAIN_RTOL[dtype]
    assert_trees_close(ours, theirs, rtol, "functional_nn vs torch.optim")
    assert_trees_close(ours, reference, rtol, "functional_nn vs oracle")
    assert assert_trees_close(reference, params, 1.0) > 1e-3, "training did not move the params"


def _nadam_first(g, eps=1e-8, b1=0.9, psi=4e-3):
    mu1, mu2 = (b1 * (1 - 0.5 * 0.96 ** (t * psi)) for t in (1, 2))
    return (g + mu2 / (1 - mu1 * mu2) * (1 - b1) * g) / (np.abs(g) + eps)


# The first update, -lr * direction, worked out by hand from each method's formula (moments start
# at zero, so bias-corrected moments equal g and g^2): checks the oracle and us independently.
FIRST_DIRECTION = [
    ("sgd", dict(momentum=0.9, dampening=0.5), lambda g: g),  # dampening skipped on step 1
    ("rmsprop", dict(), lambda g: g / (np.sqrt(0.01 * g * g) + 1e-8)),
    ("rmsprop", dict(centered=True), lambda g: g / (np.sqrt(0.01 * g * g - 1e-4 * g * g) + 1e-8)),
    ("adam", dict(), lambda g: g / (np.abs(g) + 1e-8)),
    ("adagrad", dict(initial_accumulator_value=0.5), lambda g: g / (np.sqrt(0.5 + g * g) + 1e-10)),
    ("adamax", dict(), lambda g: g / (np.abs(g) + 1e-8)),
    ("nadam", dict(), _nadam_first),
    ("radam", dict(), lambda g: g),  # rho_1 = 1 <= 5: plain bias-corrected momentum
]


@pytest.mark.parametrize(
    "name, kwargs, direction", FIRST_DIRECTION, ids=[c[0] for c in FIRST_DIRECTION]
)
def test_first_step_by_hand(name, kwargs, direction):
    params, (g, *_) = gradient_stream(torch.float64)
    case = Case(name, dict(lr=0.1, **kwargs))
    expected = [
        p.numpy() - 0.1 * direction(x.numpy()) for p, x in zip(tree_leaves(params), tree_leaves(g))
    ]
    ours, _ = run_functional(case, params, [g], torch.float64, "cpu")
    assert_trees_close(tree_leaves(ours[0]), expected, 1e-14, "functional_nn")
    assert_trees_close(tree_leaves(run_oracle(case, params, [g])[0]), expected, 1e-14, "oracle")


@pytest.mark.parametrize("default", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize(
    "kwargs", [dict(lr=1e-2), dict(lr=1e-2, momentum_decay=1e-2, weight_decay=0.1)], ids=str
)
def test_nadam_keeps_its_momentum_product_in_torchs_scalar_dtype(kwargs, default):
    """torch.optim.NAdam rounds its momentum product in the default dtype if that is float64, else
    in float32 (`_get_scalar_dtype`); so do we, so float64 params follow torch's to rounding under
    either default (a float64 product under a float32 default differed from torch's by 6e-11)."""
    case = Case("nadam", kwargs)
    params, grads = gradient_stream(torch.float64)
    with default_dtype(default):
        state = case.fnn("cpu").init(params)
    assert torch.get_default_dtype() == torch.float32  # restored
    ours, _ = run_functional(case, params, grads, torch.float64, "cpu", default=default)
    products = [s.mu_product for s in state if isinstance(s, optim.ScaleByNadamState)]
    assert [p.dtype for p in products] == [default]
    theirs, _ = run_torch(case, params, grads, torch.float64, "cpu", default=default)
    assert_trees_close(stacked(ours), stacked(theirs), 1e-11, "functional_nn vs torch.optim")


TENSOR_BETAS = ["adam", "adamw", "adamax", "nadam", "radam"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", TENSOR_BETAS)
def test_tensor_hyperparameters_give_the_numerics_of_floats(name, dtype):
    """betas as two tensors and lr as a 0-d tensor (as torch.optim takes them) give bitwise the
    trajectory of the same values as floats; float32 tensors stand for their rounded values."""
    values = torch.tensor([1e-2, 0.8, 0.99], dtype=dtype)
    as_floats = Case(name, dict(lr=values[0].item(), betas=(values[1].item(), values[2].item())))
    as_tensors = Case(name, dict(lr=values[0], betas=(values[1], values[2])))
    params, grads = gradient_stream(torch.float64)
    floats, _ = run_functional(as_floats, params, grads[:50], torch.float64, "cpu")
    tensors, _ = run_functional(as_tensors, params, grads[:50], torch.float64, "cpu")
    assert all(torch.equal(a, b) for a, b in zip(stacked(tensors), stacked(floats)))


def test_tensor_betas_follow_torch_optim_adam():
    """torch.optim.Adam(betas=(tensor, tensor)) takes the same path: the trajectories agree."""
    betas = (torch.tensor(0.8, dtype=torch.float64), torch.tensor(0.99, dtype=torch.float64))
    case = Case("adam", dict(lr=1e-2, betas=betas))
    params, grads = gradient_stream(torch.float64)
    ours, _ = run_functional(case, params, grads, torch.float64, "cpu")
    theirs, _ = run_torch(case, params, grads, torch.float64, "cpu")
    assert_trees_close(
        stacked(ours), stacked(theirs), STREAM_RTOL[torch.float64], "functional_nn vs torch.optim"
    )
