"""from_module / to_module and mlp state dicts: round trips between torch.nn and functional_nn with
identical outputs and gradients."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import functional_nn as fnn
from functional_nn._pytree import tree_map
from tests.helpers import assert_trees_close


def _build(make, seed=0, dtype=torch.float64, device="cpu"):
    """A module made under a fixed seed without touching the global RNG, in float64 on device."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make().to(dtype=dtype, device=device)


def _with_running_stats():
    model = nn.Sequential(
        nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Softplus(beta=2.0), nn.Linear(5, 2)
    )
    with torch.no_grad():  # two training passes give the running statistics non-trivial values
        for seed in (1, 2):
            model(torch.randn(8, 3, generator=torch.Generator().manual_seed(seed)))
    return model.eval()


MODELS = [
    pytest.param(lambda: nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)), id="tanh"),
    pytest.param(
        lambda: nn.Sequential(
            nn.Linear(3, 5),
            nn.LeakyReLU(0.2),
            nn.Linear(5, 4),
            nn.GELU(approximate="tanh"),
            nn.Linear(4, 2, bias=False),
            nn.Sigmoid(),
        ),
        id="leaky-gelu-nobias",
    ),
    pytest.param(_with_running_stats, id="batchnorm-eval"),
    pytest.param(
        lambda: nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Dropout(0.5), nn.Linear(5, 2)).eval(),
        id="dropout-eval",
    ),
]


def _eval(net, params, x):
    """net's output in eval mode: a stateful network (buffers, dropout) takes its state and mode."""
    if not net.stateful:
        return net(params, x)
    return net(params, x, state=net.init_state(device=x.device), train=False)[0]


def _data(device):
    rng = np.random.default_rng(0)
    return torch.tensor(rng.standard_normal((6, 3)), device=device), torch.tensor(
        rng.standard_normal((6, 2)), device=device
    )


def _autograd_grads(module, x, y):
    module.zero_grad()
    F.mse_loss(module(x), y).backward()
    return {name: p.grad.clone() for name, p in module.named_parameters()}


@pytest.mark.parametrize("make", MODELS)
def test_from_module_round_trips_outputs_and_gradients(make, device):
    module = _build(make, device=device)
    x, y = _data(device)
    net, params = fnn.from_module(module)
    assert list(params) == [name for name, _ in module.named_parameters()]
    grads = torch.func.grad(lambda p: fnn.mse(_eval(net, p, x), y))(params)
    assert torch.equal(_eval(net, params, x), module(x))
    assert_trees_close(grads, _autograd_grads(module, x, y), rtol=0.0, name="grads vs autograd")
    net.check(params, x)


@pytest.mark.parametrize("make", MODELS)
def test_to_module_loads_params_back_in_place(make, device):
    module = _build(make, device=device)
    x, _ = _data(device)
    net, params = fnn.from_module(module)
    moved = tree_map(lambda t: 0.5 * t + 0.1, params)
    before = {name: id(p) for name, p in module.named_parameters()}
    assert fnn.to_module(module, moved) is module
    assert before == {name: id(p) for name, p in module.named_parameters()}
    assert torch.equal(module(x), _eval(net, moved, x))
    assert not torch.equal(module(x), _eval(net, params, x))


def test_from_module_copies_params_and_buffers(device):
    module = _build(_with_running_stats, device=device)
    x, _ = _data(device)
    net, params = fnn.from_module(module)
    expected = module(x)
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            t.add_(1) if t.is_floating_point() else None
    assert torch.equal(_eval(net, params, x), expected)


def _tensor_bytes_held(root, besides):
    """Bytes of the non-meta tensors reachable from root through attributes, closures and
    containers (not through function globals, nor through `besides`): what root keeps alive."""
    seen, stack, total = {id(besides)}, [root], 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, str, bytes, int, float)):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            total += 0 if obj.is_meta else obj.untyped_storage().nbytes()
            continue
        if isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set)):
            stack.extend(obj)
        elif callable(obj) and getattr(obj, "__closure__", None):
            stack.extend(cell.cell_contents for cell in obj.__closure__)
        stack.extend(getattr(obj, "__dict__", {}).values())
        stack.extend(getattr(obj, name) for name in getattr(type(obj), "__slots__", ()))
    return total


def test_a_stateful_network_holds_its_buffers_once_and_no_params():
    module = nn.Sequential(nn.Linear(256, 512), nn.BatchNorm1d(512), nn.Dropout(0.1)).double()
    net, params = fnn.from_module(module)
    buffers = sum(b.untyped_storage().nbytes() for b in module.buffers())
    param_bytes = sum(p.untyped_storage().nbytes() for p in params.values())
    assert param_bytes > 100 * buffers  # so a copy of the params would show
    # init_state's copy of the buffers; the per-mode copies of the module hold meta tensors (init
    # holds the module itself, to redraw from)
    assert _tensor_bytes_held(net, besides=module) == buffers
    x = torch.randn(4, 256, dtype=torch.float64)
    y, _ = net(params, x, state=net.init_state(), train=False)
    assert torch.equal(y, module.eval()(x))


def test_apply_is_pure_for_a_module_in_training_mode(device):
    """In training mode batch-norm updates running stats in place: on copies, never carried over."""
    module = _build(_with_running_stats, device=device).train()
    reference = copy.deepcopy(module)
    x, _ = _data(device)
    net, params = fnn.from_module(module)
    state = net.init_state(device=device)
    (first, s1), (second, s2) = [net(params, x, state=state, train=True) for _ in range(2)]
    assert torch.equal(first, second) and torch.equal(first, reference(x))
    assert_trees_close(s1, dict(reference.named_buffers()), rtol=0.0, name="new state")
    assert_trees_close(s2, s1, rtol=0.0, name="the second call's state")
    assert_trees_close(state, net.init_state(device=device), rtol=0.0, name="state given")
    assert_trees_close(
        dict(module.named_buffers()),
        dict(_build(_with_running_stats, device=device).train().named_buffers()),
        rtol=0.0,
        name="module buffers",
    )


def test_from_module_init_draws_what_building_the_module_after_manual_seed_draws():
    make = MODELS[1].values[0]
    net, _ = fnn.from_module(_build(make, seed=0, dtype=torch.float32))
    state = torch.get_rng_state()
    drawn = net.init(7)
    assert torch.equal(torch.get_rng_state(), state)
    assert_trees_close(
        drawn,
        dict(_build(make, seed=7, dtype=torch.float32).named_parameters()),
        rtol=0.0,
        name="init(7)",
    )
    assert net.init(7, dtype=torch.float64)["0.weight"].dtype == torch.float64
    a, b = net.init(torch.Generator().manual_seed(3)), net.init(torch.Generator().manual_seed(3))
    assert_trees_close(a, b, rtol=0.0, name="same generator state")
    assert not torch.equal(a["0.weight"], drawn["0.weight"])


def test_mlp_params_load_into_the_equivalent_sequential_and_back(device):
    net = fnn.mlp([3, 5, 4, 2], "tanh", init="torch", output_activation="sigmoid")
    params = net.init(0, dtype=torch.float64, device=device)
    seq = nn.Sequential(
        nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2), nn.Sigmoid()
    )
    seq = seq.to(dtype=torch.float64, device=device)
    seq.load_state_dict(fnn.mlp_to_state_dict(params), strict=True)
    x, y = _data(device)
    assert torch.equal(seq(x), net(params, x))
    back = fnn.mlp_from_state_dict(seq.state_dict())
    assert_trees_close(back, params, rtol=0.0, name="params back")
    grads = torch.func.grad(lambda p: fnn.mse(net(p, x), y))(back)
    assert_trees_close(
        fnn.mlp_to_state_dict(grads), _autograd_grads(seq, x, y), rtol=0.0, name="grads"
    )


def test_mlp_from_state_dict_skips_modules_without_params_and_reads_no_bias():
    seq = _build(
        lambda: nn.Sequential(
            nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Dropout(), nn.Linear(4, 2, bias=False)
        ).eval()
    )
    params = fnn.mlp_from_state_dict(seq.state_dict())
    x, _ = _data("cpu")
    assert [sorted(layer) for layer in params] == [["weight"], ["weight"]]
    assert torch.equal(fnn.mlp([3, 4, 2], bias=False)(params, x), seq(x))


def _linear(i, o, bias=True):
    return {"weight": torch.zeros(o, i), **({"bias": torch.zeros(o)} if bias else {})}


BAD = [
    pytest.param(
        lambda: fnn.from_module(lambda x: x),
        TypeError,
        r"module must be a torch.nn.Module, got function",
        id="from-type",
    ),
    pytest.param(
        lambda: fnn.to_module({}, {}),
        TypeError,
        r"module must be a torch.nn.Module, got dict",
        id="to-type",
    ),
    pytest.param(
        lambda: fnn.to_module(nn.Linear(3, 2), {"weight": torch.zeros(2, 3)}),
        ValueError,
        r"missing \['bias'\], unexpected \[\]",
        id="to-missing",
    ),
    pytest.param(
        lambda: fnn.to_module(
            nn.Linear(3, 2), {"weight": torch.zeros(3, 2), "bias": torch.zeros(2)}
        ),
        ValueError,
        r"Linear parameter 'weight' has shape \(3, 2\), expected \(2, 3\)",
        id="to-shape",
    ),
    pytest.param(
        lambda: fnn.mlp_from_state_dict(
            nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).state_dict()
        ),
        ValueError,
        r"key '1.running_mean' is not '<index>.weight'.*from_module",
        id="sd-buffer",
    ),
    pytest.param(
        lambda: fnn.mlp_from_state_dict({}), ValueError, r"holds no linear layer", id="sd-empty"
    ),
    pytest.param(
        lambda: fnn.mlp_from_state_dict(
            {"0.weight": torch.zeros(4, 3), "2.weight": torch.zeros(2, 5)}
        ),
        ValueError,
        r"0.weight has 4 outputs, but 2.weight takes 5 inputs",
        id="sd-chain",
    ),
    pytest.param(
        lambda: fnn.mlp_from_state_dict({"0.weight": torch.zeros(4, 3), "0.bias": torch.zeros(3)}),
        ValueError,
        r"0.bias has shape \(3,\), expected \(4,\)",
        id="sd-bias-shape",
    ),
    pytest.param(
        lambda: fnn.mlp_from_state_dict(
            {**{f"0.{k}": v for k, v in _linear(3, 4).items()}, "2.weight": torch.zeros(2, 4)}
        ),
        ValueError,
        r"layer '2.' must hold a 2-d weight, and a bias exactly when",
        id="sd-mixed-bias",
    ),
    pytest.param(
        lambda: fnn.mlp_to_state_dict({"weight": torch.zeros(2, 3)}),
        TypeError,
        r"params must be mlp params, a list of layer dicts, got dict",
        id="to-sd-type",
    ),
]


@pytest.mark.parametrize("call, error, message", BAD)
def test_bad_interop_input_is_rejected(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_from_module_check_names_the_parameter_and_the_input():
    net, params = fnn.from_module(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    with pytest.raises(
        ValueError, match=r"Sequential parameter '2.weight' has shape \(2, 5\), expected \(2, 4\)"
    ):
        net.check({**params, "2.weight": torch.zeros(2, 5)}, torch.zeros(6, 3))
    with pytest.raises(ValueError, match=r"missing \['0.bias'\]"):
        net.check({k: v for k, v in params.items() if k != "0.bias"}, torch.zeros(6, 3))
    with pytest.raises(ValueError, match=r"Sequential: input of shape \(6, 2\) does not fit"):
        net.check(params, torch.zeros(6, 2))


def test_from_module_init_refuses_parameters_it_cannot_redraw():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 2)
            self.scale = nn.Parameter(torch.ones(2))

        def forward(self, x):
            return self.scale * self.linear(x)

    net, params = fnn.from_module(Scaled())
    assert sorted(params) == ["linear.bias", "linear.weight", "scale"]
    with pytest.raises(
        ValueError, match=r"cannot redraw the parameters \['scale'\] of Scaled.*no reset_parameters"
    ):
        net.init(0)


def test_from_module_check_wants_a_dict_of_params():
    net, params = fnn.from_module(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    with pytest.raises(
        TypeError, match=r"params must be a dict \{name: tensor\} as from_module makes, got list"
    ):
        net.check(list(params.values()), torch.zeros(6, 3))


def _bad_last_value(kind):
    """Params for nn.Sequential(Linear(3, 4), ReLU, Linear(4, 2)): good values for every parameter
    but the last one ('2.bias'), which is bad in the way `kind` names."""
    module = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    params = {name: torch.full_like(p, 7.0) for name, p in module.named_parameters()}
    params["2.bias"] = {
        "shape": torch.zeros(3),
        "integer": torch.zeros(2, dtype=torch.int64),
        "complex": torch.zeros(2, dtype=torch.complex64),
        "non-tensor": [0.0, 0.0],
        "meta": torch.zeros(2, device="meta"),
    }[kind]
    assert list(params)[-1] == "2.bias"
    return module, params


@pytest.mark.parametrize(
    "kind, error, message",
    [
        pytest.param(
            "shape",
            ValueError,
            r"Sequential parameter '2.bias' has shape \(3,\), expected \(2,\)",
            id="shape",
        ),
        pytest.param(
            "integer",
            TypeError,
            r"'2.bias' must be loaded from a floating tensor \(real, not complex\), got dtype torch.int64",
            id="integer",
        ),
        pytest.param(
            "complex",
            TypeError,
            r"'2.bias' must be loaded from a floating tensor .*got dtype torch.complex64",
            id="complex",
        ),
        pytest.param(
            "non-tensor",
            TypeError,
            r"Sequential parameter '2.bias' must be a torch.Tensor, got list",
            id="non-tensor",
        ),
        pytest.param("meta", ValueError, r"'2.bias' cannot be moved from meta to cpu", id="meta"),
    ],
)
def test_to_module_with_a_bad_last_value_leaves_every_parameter_unchanged(kind, error, message):
    module, params = _bad_last_value(kind)
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    with pytest.raises(error, match=message):
        fnn.to_module(module, params)
    assert all(torch.equal(p, before[name]) for name, p in module.named_parameters())


def test_to_module_converts_values_to_the_modules_dtype_and_device(device):
    module = _build(lambda: nn.Linear(3, 2), dtype=torch.float32, device=device)
    params = {
        "weight": torch.full((2, 3), 0.1, dtype=torch.float64),
        "bias": torch.full((2,), 0.3, dtype=torch.float64),
    }
    fnn.to_module(module, params)
    assert (
        module.weight.dtype == torch.float32
        and module.weight.device.type == torch.device(device).type
    )
    assert torch.equal(module.weight.cpu(), torch.full((2, 3), 0.1, dtype=torch.float64).float())
