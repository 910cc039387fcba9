"""What a newcomer sees: reprs of networks and optimizers, losses and activations by name."""

from __future__ import annotations

import ast
import copy
import functools
import inspect

import pytest
import torch

import functional_nn as fnn
from functional_nn import blocks
from functional_nn.optim import GradientTransformationExtraArgs
from functional_nn.optim._named import shown_as_call
from tests.tables import TORCH_OPTIMIZERS


@pytest.mark.parametrize(
    "net, expected",
    [
        (fnn.mlp([1000, 100, 10]), "Network(mlp: 1000 -> 100 -> 10, relu)"),
        (
            fnn.mlp(
                [3, 4, 2],
                activation=functools.partial(fnn.leaky_relu, negative_slope=0.2),
                bias=False,
                output_activation="sigmoid",
            ),
            "Network(mlp: 3 -> 4 -> 2, leaky_relu(negative_slope=0.2), bias=False, output=sigmoid)",
        ),
        (fnn.mlp([3, 4, 2], activation=fnn.tanh), "Network(mlp: 3 -> 4 -> 2, tanh)"),
        (fnn.dense(3, 4, bias=False), "Network(dense: 3 -> 4, bias=False)"),
        (
            fnn.serial(fnn.dense(3, 4), "relu", fnn.mlp([4, 5, 2]), fnn.tanh),
            "Network(serial: [dense: 3 -> 4, relu, (mlp: 4 -> 5 -> 2, relu), tanh])",
        ),
        (fnn.from_module(torch.nn.Linear(2, 3))[0], "Network(from_module: Linear)"),
        (fnn.Network(init=lambda seed: {}, apply=fnn.linear), "Network(apply=linear)"),
    ],
    ids=["mlp", "mlp-options", "mlp-callable", "dense", "serial", "from_module", "hand-made"],
)
def test_a_network_shows_its_layers_and_activation(net, expected):
    assert repr(net) == expected
    assert "0x" not in repr(net)  # no function address


def test_a_networks_name_is_not_part_of_its_equality():
    net = fnn.mlp([3, 4, 2])
    renamed = fnn.Network(init=net.init, apply=net.apply, check=net.check, name="other")
    assert renamed == net and hash(renamed) == hash(net)


def _call(text: str) -> tuple[str, dict]:
    """The function name and keyword values of a call written as `name(k=v, ...)`."""
    call = ast.parse(text, mode="eval").body
    assert isinstance(call, ast.Call) and not call.args, text
    return call.func.id, {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}


@pytest.mark.parametrize("name", sorted(TORCH_OPTIMIZERS))
def test_an_alias_shows_its_name_and_torch_optims_defaults(name):
    opt = getattr(fnn, name)()
    shown_name, values = _call(repr(opt))
    assert shown_name == name
    # every hyper-parameter the alias takes, valued as torch.optim's defaults (the independent
    # source): torch's dict holds more keys (foreach, fused, ...) than the alias takes
    assert list(values) == list(inspect.signature(getattr(fnn, name)).parameters)
    defaults = TORCH_OPTIMIZERS[name]([torch.zeros(1, requires_grad=True)]).defaults
    for key, value in values.items():
        assert value == defaults[key], (name, key, value, defaults[key])


def test_an_alias_shows_the_values_given():
    assert repr(fnn.adam(1e-4, betas=(0.8, 0.99), amsgrad=True)) == (
        "adam(lr=0.0001, betas=(0.8, 0.99), eps=1e-08, weight_decay=0.0, amsgrad=True, "
        "maximize=False)"
    )
    schedule = fnn.optim.schedules.cosine_decay(0.1, 10)
    assert repr(fnn.sgd(schedule)).startswith("sgd(lr=cosine_decay.<locals>.schedule, momentum=")
    assert repr(fnn.sgd(torch.tensor(0.5))).startswith("sgd(lr=tensor(0.5000), momentum=")


def test_an_alias_is_still_the_pair_it_was():
    opt = fnn.adam(1e-3)
    init, update = opt
    plain = fnn.GradientTransformation(init, update)
    assert isinstance(opt, fnn.GradientTransformation)
    assert type(opt).__name__ == "GradientTransformation"  # as error messages name it
    assert opt == plain and hash(opt) == hash(plain)
    assert (opt.init, opt.update) == (init, update)
    for copied in (copy.copy(opt), copy.deepcopy(opt)):
        assert copied == opt and repr(copied) == repr(opt)
    # a modified copy is no longer what adam made, so it no longer says so
    assert repr(opt._replace(init=init)).startswith("GradientTransformation(init=")
    # and the step it takes is the plain pair's
    params = {"w": torch.tensor([1.0, -2.0], dtype=torch.float64)}
    grads = {"w": torch.tensor([0.5, 0.25], dtype=torch.float64)}
    ours, _ = update(grads, init(params), params)
    theirs, _ = plain.update(grads, plain.init(params), params)
    assert torch.equal(ours["w"], theirs["w"])


def test_an_alias_of_extra_args_keeps_its_kind():
    def takes_value(params):
        return ()

    @shown_as_call
    def plateau(lr: float = 0.1):
        return GradientTransformationExtraArgs(takes_value, lambda g, s, p=None, **kw: (g, s))

    opt = plateau()
    assert isinstance(opt, GradientTransformationExtraArgs)
    assert isinstance(fnn.chain(opt, fnn.optim.scale(1.0)), GradientTransformationExtraArgs)
    assert repr(opt) == "plateau(lr=0.1)"


def test_an_alias_still_rejects_bad_hyper_parameters_with_its_own_error():
    with pytest.raises(ValueError, match="Invalid betas"):
        fnn.adam(betas=(0.9,))


def test_per_example_grads_takes_a_loss_by_name():
    net = fnn.mlp([3, 4, 2])
    params = net.init(0, dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 1, 0, 1])
    by_name = fnn.per_example_grads(params, x, y, model=net, loss="cross_entropy")
    by_callable = fnn.per_example_grads(params, x, y, model=net, loss=fnn.cross_entropy)
    for a, b in zip(by_name, by_callable):
        assert torch.equal(a["weight"], b["weight"]) and torch.equal(a["bias"], b["bias"])
    with pytest.raises(ValueError, match="Unknown loss 'cross_entropi'"):
        fnn.per_example_grads(params, x, y, model=net, loss="cross_entropi")


def test_activations_are_taken_by_name_as_by_callable():
    x = torch.linspace(-2, 2, 7, dtype=torch.float64).reshape(7, 1)
    by_name = fnn.serial(fnn.dense(1, 3), "tanh", fnn.dense(3, 1))
    by_callable = fnn.serial(fnn.dense(1, 3), fnn.tanh, fnn.dense(3, 1))
    params = by_name.init(0, dtype=torch.float64)
    assert torch.equal(by_name(params, x), by_callable(params, x))
    with pytest.raises(ValueError, match="Unknown activation 'tanhh'"):
        fnn.mlp([1, 3, 1], activation="tanhh")


def test_blocks_show_their_shapes():
    net = fnn.serial(
        blocks.conv2d(1, 8, 3, padding=1),
        blocks.batch_norm(8),
        "relu",
        blocks.max_pool2d(2),
        blocks.flatten(),
        blocks.dropout(0.2),
        blocks.embedding(5, 3),
    )
    assert repr(net) == (
        "Network(serial: [(conv2d: 1 -> 8, 3x3, padding=1), batch_norm: 8, relu, max_pool2d: 2, "
        "flatten, dropout: p=0.2, embedding: 5 x 3])"
    )
