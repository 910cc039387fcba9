"""What scripts/compare.py compares: four workloads, each a problem and the stages that train it.

- regression: the seeds' net (no bias, summed squared error, standard-normal weights), all six
  stages. The seeds' optim and nn.Module stages start from torch's default init; here they start
  from the standard-normal weights too, so that they are comparable.
- regression + bias: h = W1 x + b1, y = W2 a + b2, as the seeds write the model before dropping
  the biases; the same data and weights plus standard-normal b1, b2; five of the stages.
- classification: mean cross-entropy on 10 class labels, with biases and Adam; the oracle,
  torch.optim and functional_nn.
- batch norm + dropout: regression's data through x W1 -> batch_norm -> relu -> dropout -> W2 + b2
  (scripts/stages_state.py), the same dropout masks in all three programs; the oracle, the
  torch.nn + torch.optim loop and functional_nn, compared in running statistics too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch

import functional_nn as fnn
from scripts import stages, stages_state
from scripts.stages import Problem, StageResult

N, D_IN, H, D_OUT = 64, 1000, 100, 10  # D_OUT is also the number of classes
SEED_LR = {"sgd": 1e-6, "adam": 1e-4}  # the seeds' learning rates
# Adam at the seeds' lr takes the classifier from chance (loss ln 10) to 1.1e-2 and all training
# labels right in 500 steps, the curve moving throughout; at lr 1e-3 it is at 1.7e-3 by step 50
# and creeps after. Measured at seed 0.
CLASSIFIER_LR = {"adam": 1e-4}
ORACLE = "numpy by hand (oracle)"
# Agreement with the oracle: oracle.gradcheck.rel_error, max|a - b| / max(|a| + |b|), of the loss
# curve and of each final param, both <= the workload's tolerances[dtype]. Not the per-step
# |l_t - r_t| / |r_t|: SGD drives the loss from 2.6e7 to 1e-8, and so small a sum of squared
# residuals is ill-conditioned (numpy and torch evaluating the SAME float64 weights differ by 4e-9
# relative at step 499); float32 stops at its rounding floor near 1e-5. The final params are well
# conditioned and carry any bug. Measured on the CPU, 500 steps, every stage, seeds 0-4 in float64
# and 0-9 in float32. Regression (with or without biases): float64 worst 1.6e-15 (params), so 1e-9
# leaves six decades and still fails any wrong formula; float32 worst 2.4e-4 (Adam's weights: each
# step moves a weight by up to lr whatever its gradient, so rounding in near-zero gradients shows)
# and 1.9e-6 (curves), so 1e-3; a wrong update rule is off by >= 1e-2.
TOLERANCES = {"float64": 1e-9, "float32": 1e-3}
# Classification: float64 worst 8.2e-14. float32 worst 4.9e-3 (torch.optim as far as functional_nn):
# its torch-init weights (|w| < 0.06) move by up to lr = 1e-4 a step, and once a hidden unit's ReLU
# flips for an example in float32 and not in float64, that unit's steps part ways. So 2e-2, which
# an lr 1% off (2.1e-2 in the first weight), an Adam beta off by 0.01 or no bias correction
# (>= 3e-2) still exceed; float64's 1e-9 catches far smaller errors.
CLASSIFICATION_TOLERANCES = {"float64": 1e-9, "float32": 2e-2}


class Stage(NamedTuple):
    """One row of a table: a training program and the optimizer it uses."""

    name: str
    optimizer: str
    run: Callable[[str, Problem, int, torch.device, torch.dtype], StageResult]  # see stages.py
    gates: bool  # whether disagreement with the oracle fails the script


class Workload(NamedTuple):
    """One table: a problem drawn from the seed, and the stages that train on it. Each optimizer's
    oracle row comes first without being listed: it is the reference the others are checked with."""

    name: str
    about: str
    problem: Callable[[int], Problem]
    stages: list[Stage]
    tolerances: dict[str, float] = TOLERANCES  # the agreement bound per dtype
    oracle: Callable = stages.numpy_oracle  # the reference program of each optimizer's rows


def _float64_numpy(params: list[dict]) -> list[dict]:
    return [{k: t.double().numpy() for k, t in layer.items()} for layer in params]


def regression(seed: int, bias: bool = False) -> Problem:
    """The seeds' standard-normal x, y and weights, float64, from one seed; with `bias`, standard-
    normal b1, b2 drawn after them, so that x, y and the weights are the bias-free problem's."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D_IN, generator=generator, dtype=torch.float64)
    y = torch.randn(N, D_OUT, generator=generator, dtype=torch.float64)
    params = fnn.mlp([D_IN, H, D_OUT], bias=False).init(generator, dtype=torch.float64)
    if bias:
        for layer in params:
            out_features = len(layer["weight"])
            layer["bias"] = torch.randn(out_features, generator=generator, dtype=torch.float64)
    return Problem(x.numpy(), y.numpy(), _float64_numpy(params), "sse", SEED_LR)


def classification(seed: int) -> Problem:
    """x as regression's; labels argmax(x T) for a standard-normal teacher T (D_IN, D_OUT), a
    linear rule the net can learn; params drawn as torch.nn.Linear draws them (init="torch"), whose
    logits start near 0, at chance. Standard-normal weights start them hundreds apart instead, the
    softmax saturated (loss 325): 500 steps at lr 1e-4 then reach only 87% training accuracy."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D_IN, generator=generator, dtype=torch.float64)
    labels = (x @ torch.randn(D_IN, D_OUT, generator=generator, dtype=torch.float64)).argmax(1)
    params = fnn.mlp([D_IN, H, D_OUT], init="torch").init(generator, dtype=torch.float64)
    return Problem(
        x.numpy(), labels.numpy(), _float64_numpy(params), "cross_entropy", CLASSIFIER_LR
    )


# Batch norm makes the loss indifferent to W1's scale, so lrs far above the seeds' move it: the sum
# of squares falls from 7.9e2 to 1.3e2 (SGD) and 9.4e1 (Adam) in 20 steps at seed 0. The default
# tolerances hold: measured over 20 steps, float64 <= 1.8e-15 (params, running statistics,
# curves), float32 <= 7.5e-7.
BATCH_NORM_LR = {"sgd": 1e-4, "adam": 1e-3}
DROPOUT_P = 0.2


def batch_norm_dropout(seed: int) -> Problem:
    """regression's x and y; the net of stages_state (batch norm, relu, dropout p=0.2) with
    torch.nn's init, drawn after x and y; dropout keys from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D_IN, generator=generator, dtype=torch.float64)
    y = torch.randn(N, D_OUT, generator=generator, dtype=torch.float64)
    params = stages_state.network(D_IN, H, D_OUT, DROPOUT_P).init(generator, dtype=torch.float64)
    layers = [{k: t.numpy() for k, t in layer.items()} for layer in params]
    return Problem(x.numpy(), y.numpy(), layers, "sse", BATCH_NORM_LR, (DROPOUT_P, seed))


def _table(*rows: tuple[str, str, Callable]) -> list[Stage]:
    """Stages from (name, optimizer, run) rows; functional_nn's alone gate the exit code: it is
    what this project promises. The seeds' torch programs are reported against the same oracle
    (they agree too), but a change in torch's own kernels or torch.optim is not a functional_nn
    failure."""
    return [Stage(name, opt, run, gates=name == "functional_nn") for name, opt, run in rows]


WORKLOADS = [
    Workload(
        "regression",
        "the seeds' net: no bias, summed squared error, standard-normal weights",
        regression,
        _table(
            ("torch by hand", "sgd", stages.torch_by_hand),
            ("torch autograd", "sgd", stages.torch_autograd),
            ("torch.nn", "sgd", stages.torch_nn),
            ("torch.optim", "sgd", stages.torch_optim),
            ("functional_nn", "sgd", stages.functional),
            ("torch.optim", "adam", stages.torch_optim),
            ("nn.Module", "adam", stages.nn_module),
            ("functional_nn", "adam", stages.functional),
        ),
    ),
    Workload(
        "regression + bias",
        "h = W1 x + b1, y = W2 a + b2 as the seeds write it; the same data "
        "and weights as above, standard-normal b1, b2",
        functools.partial(regression, bias=True),
        _table(
            ("torch by hand", "sgd", stages.torch_by_hand),
            ("torch.nn", "sgd", stages.torch_nn),
            ("functional_nn", "sgd", stages.functional),
            ("torch.optim", "adam", stages.torch_optim),
            ("functional_nn", "adam", stages.functional),
        ),
    ),
    Workload(
        "classification",
        f"{D_OUT} classes, labels argmax(x T) for a fixed random T; biases, "
        "mean cross-entropy, torch.nn.Linear's init",
        classification,
        _table(
            ("torch.optim", "adam", stages.torch_optim),
            ("functional_nn", "adam", stages.functional),
        ),
        CLASSIFICATION_TOLERANCES,
    ),
    Workload(
        "batch norm + dropout",
        f"x W1 -> batch_norm -> relu -> dropout(p={DROPOUT_P}, fit's keyed masks) -> W2 + b2, "
        "summed squared error; params, running statistics and losses",
        batch_norm_dropout,
        _table(
            ("torch.optim", "sgd", stages_state.torch_optim),
            ("functional_nn", "sgd", stages_state.functional),
            ("torch.optim", "adam", stages_state.torch_optim),
            ("functional_nn", "adam", stages_state.functional),
        ),
        oracle=stages_state.numpy_oracle,
    ),
]
