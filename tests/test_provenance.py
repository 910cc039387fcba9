"""fit(params, x, y, opt) without model=: it trains the network that made params, bitwise as with
model= given, or refuses with a TypeError asking for model=; never a different network. And the
two mistakes a newcomer makes first: an nn.Module as model, integer labels with a regression loss."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

import functional_nn as fnn
from functional_nn import _provenance, optim
from functional_nn._pytree import tree_leaves, tree_map

N, D_IN, H, D_OUT = 8, 5, 6, 3


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, D_IN, generator=g), torch.randn(N, D_OUT, generator=g)


def nets():
    """Networks of every kind that makes params: mlp, serial, from_module, a stateful serial."""
    module_net, _ = fnn.from_module(torch.nn.Sequential(torch.nn.Linear(D_IN, D_OUT)))
    return {
        "mlp": fnn.mlp([D_IN, H, D_OUT]),
        "serial": fnn.serial(fnn.dense(D_IN, H), "tanh", fnn.dense(H, D_OUT)),
        "from_module": module_net,
        "stateful": fnn.serial(
            fnn.dense(D_IN, H), fnn.blocks.batch_norm(H), "relu", fnn.dense(H, D_OUT)
        ),
    }


def assert_same(a, b):
    assert torch.equal(a.losses, b.losses)
    for p, q in zip(tree_leaves(a.params), tree_leaves(b.params), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("kind", list(nets()))
def test_fit_finds_the_network_of_init_and_of_its_own_result(kind):
    net, (x, y) = nets()[kind], data()
    params = net.init(1)
    found = fnn.fit(params, x, y, optim.adam(1e-2), steps=3)
    given = fnn.fit(params, x, y, optim.adam(1e-2), steps=3, model=net)
    assert_same(found, given)
    # the result is noted too, so training goes on without model=
    on = fnn.fit(found.params, x, y, optim.adam(1e-2), steps=2, model_state=found.model_state)
    on_given = fnn.fit(
        given.params, x, y, optim.adam(1e-2), steps=2, model=net, model_state=given.model_state
    )
    assert_same(on, on_given)


def test_from_module_params_train_without_model():
    module = torch.nn.Linear(D_IN, D_OUT)
    net, params = fnn.from_module(module)
    x, y = data()
    assert_same(
        fnn.fit(params, x, y, optim.sgd(1e-2), steps=3),
        fnn.fit(params, x, y, optim.sgd(1e-2), steps=3, model=net),
    )


def refused(params, match, **kw):
    x, y = data()
    with pytest.raises(TypeError, match=match) as info:
        fnn.fit(params, x, y, optim.sgd(1e-2), steps=1, **kw)
    assert "model=" in str(info.value)


def test_params_made_by_other_code_are_refused():
    params = fnn.mlp([D_IN, H, D_OUT]).init(0)
    refused(tree_map(lambda t: t * 1.0, params), "were not returned by a Network's init")
    half = [params[0], {"weight": params[1]["weight"] * 1.0, "bias": params[1]["bias"]}]
    refused(half, "1 of its 4 tensors")


def test_params_of_two_networks_are_refused_though_their_shapes_fit_both():
    a, b = fnn.mlp([D_IN, H, D_OUT]), fnn.mlp([D_IN, H, D_OUT], activation="tanh")
    refused([a.init(0)[0], b.init(0)[1]], "different networks")


def test_a_changed_structure_is_refused():
    params = fnn.mlp([D_IN, H, D_OUT]).init(0)
    refused(tuple(params), "tree structure")
    refused([params[1], params[0]], "tree structure")  # shapes aside, the places differ


def test_a_plain_callable_result_is_not_noted():
    net, (x, y) = fnn.mlp([D_IN, H, D_OUT]), data()
    apply = lambda p, xb: net.apply(p, xb)
    result = fnn.fit(net.init(0), x, y, optim.sgd(1e-2), steps=1, model=apply)
    refused(result.params, "plain callable")


def test_fit_ensemble_finds_the_network_of_a_list_and_of_its_stack():
    net, (x, y) = fnn.mlp([D_IN, H, D_OUT]), data()
    trees = [net.init(i) for i in range(3)]
    found = fnn.fit_ensemble(trees, x, y, optim.sgd(1e-2), steps=2)
    assert_same(found, fnn.fit_ensemble(trees, x, y, optim.sgd(1e-2), steps=2, model=net))
    again = fnn.fit_ensemble(found.params, x, y, optim.sgd(1e-2), steps=2)
    assert_same(again, fnn.fit_ensemble(found.params, x, y, optim.sgd(1e-2), steps=2, model=net))
    refused(found.params, "not one model's params")  # a stack is not fit's
    other = fnn.mlp([D_IN, H, D_OUT]).init(0)
    with pytest.raises(TypeError, match="different networks"):
        fnn.fit_ensemble([trees[0], other], x, y, optim.sgd(1e-2), steps=1)


def test_the_registry_holds_no_tensor_alive():
    params = fnn.mlp([D_IN, H, D_OUT]).init(0)
    ref, key = weakref.ref(params[0]["weight"]), id(params[0]["weight"])
    assert key in _provenance._registry
    del params
    gc.collect()
    assert ref() is None and key not in _provenance._registry


def test_an_nn_module_as_model_points_to_from_module_before_any_work():
    calls = []
    module = torch.nn.Linear(D_IN, D_OUT)
    module.register_forward_pre_hook(lambda *a: calls.append(a))
    x, y = data()
    params = fnn.mlp([D_IN, D_OUT]).init(0)
    for train, p in ((fnn.fit, params), (fnn.fit_ensemble, [params, params])):
        with pytest.raises(TypeError, match=r"torch.nn.Module \(Linear\).*fnn.from_module"):
            train(p, x, y, optim.sgd(1e-2), model=module, steps=1)
    assert calls == []


@pytest.mark.parametrize("loss", ["sse", "mse", "l1", "huber", "smooth_l1"])
def test_integer_labels_with_a_regression_loss_suggest_cross_entropy(loss):
    net, (x, _) = fnn.mlp([D_IN, D_OUT]), data()
    labels = torch.arange(N) % D_OUT
    with pytest.raises(ValueError, match=r'look like class labels.*loss="cross_entropy"'):
        fnn.fit(net.init(0), x, labels, optim.sgd(1e-2), loss=loss, steps=1)
    # float targets of a wrong shape are a plain shape error, without the hint
    with pytest.raises(ValueError, match="must be equal") as info:
        fnn.fit(net.init(0), x, labels.double(), optim.sgd(1e-2), loss=loss, steps=1)
    assert "class labels" not in str(info.value)
