"""Model state through fit: batch-norm running statistics trained as torch.nn + torch.optim train
them (from_module networks and native blocks), eval-mode validation, to_module and checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import functional_nn as fnn
from functional_nn import blocks, checkpoint, optim
from functional_nn.dropout import dropout_mask, fold_in, key
from tests.helpers import assert_trees_close

STEPS, LR, MOMENTUM = 20, 0.05, 0.9


def _cnn() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)
        ).double()


def _images(n=12):
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(n, 1, 6, 6, generator=g, dtype=torch.float64),
        torch.randn(n, 2, generator=g, dtype=torch.float64),
    )


def _torch_loop(module: nn.Module, x, y, steps=STEPS):
    """The torch user's loop: module.train(), SGD with momentum, mse, full batch."""
    module.train()
    opt = torch.optim.SGD(module.parameters(), lr=LR, momentum=MOMENTUM)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(module(x), y).backward()
        opt.step()
    return module


def test_from_module_batch_norm_trains_as_the_torch_loop():
    module, (x, y) = _cnn(), _images()
    net, params = fnn.from_module(module)
    assert net.stateful and module.training  # a fresh module is in training mode
    module.eval()  # fit must not consult the module's flag
    r = fnn.fit(params, x, y, optim.sgd(LR, momentum=MOMENTUM), model=net, steps=STEPS, loss="mse")
    assert not module.training  # nor change it
    reference = _torch_loop(copy.deepcopy(_cnn()), x, y)
    worst = assert_trees_close(r.params, dict(reference.named_parameters()), 1e-10, "params")
    worst = max(
        worst, assert_trees_close(r.model_state, dict(reference.named_buffers()), 1e-10, "buffers")
    )
    assert int(r.model_state["1.num_batches_tracked"]) == STEPS
    assert worst <= 1e-10
    # to_module loads params and buffers: the loaded module's eval output is the reference's.
    loaded = fnn.to_module(_cnn(), r.params, r.model_state)
    assert_trees_close(loaded.eval()(x), reference.eval()(x), 1e-10, "loaded module's output")
    assert_trees_close(loaded.state_dict(), reference.state_dict(), 1e-10, "loaded state dict")
    # the module given to from_module is untouched, buffers included
    assert int(module[1].num_batches_tracked) == 0
    assert torch.equal(module[1].running_mean, torch.zeros(3, dtype=torch.float64))


def test_validation_runs_in_eval_mode_on_the_latest_running_statistics():
    module, (x, y) = _cnn(), _images()
    net, params = fnn.from_module(module)
    val = _images(5)
    r = fnn.fit(params, x, y, optim.sgd(LR), model=net, steps=4, loss="mse", val=val, eval_every=2)
    reference = copy.deepcopy(_cnn())
    opt = torch.optim.SGD(reference.parameters(), lr=LR)
    expected = []
    for t in range(4):
        reference.train()
        opt.zero_grad()
        nn.functional.mse_loss(reference(x), y).backward()
        opt.step()
        if t % 2 == 1:
            with torch.no_grad():
                expected.append(nn.functional.mse_loss(reference.eval()(val[0]), val[1]))
    assert r.val_steps == (2, 4)
    assert_trees_close(r.val_losses, torch.stack(expected), 1e-10, "val losses")


def _native(p=0.25):
    return fnn.serial(
        fnn.dense(4, 6, init="torch"),
        blocks.batch_norm(6),
        "relu",
        blocks.dropout(p),
        fnn.dense(6, 2, init="torch"),
    )


def test_native_batch_norm_and_dropout_train_as_the_torch_loop_with_the_same_masks():
    p, seed = 0.25, 3
    net = _native(p)
    params = net.init(0, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(16, 4, generator=g, dtype=torch.float64), torch.randn(16, 2, generator=g)
    y = y.double()
    r = fnn.fit(
        params,
        x,
        y,
        optim.sgd(LR, momentum=MOMENTUM),
        model=net,
        steps=STEPS,
        loss="mse",
        seed=seed,
    )
    first, bn, last = nn.Linear(4, 6).double(), nn.BatchNorm1d(6).double(), nn.Linear(6, 2).double()
    with torch.no_grad():
        for module, layer in ((first, params[0]), (last, params[4])):
            module.weight.copy_(layer["weight"])
            module.bias.copy_(layer["bias"])
    modules = nn.ModuleList([first, bn, last])
    opt = torch.optim.SGD(modules.parameters(), lr=LR, momentum=MOMENTUM)
    for t in range(STEPS):
        opt.zero_grad()
        h = torch.relu(bn(first(x)))
        mask = dropout_mask(fold_in(fold_in(key(seed), t), 3), tuple(h.shape), p)  # layer 3
        nn.functional.mse_loss(last(h * mask / (1 - p)), y).backward()
        opt.step()
    expected = [
        {"weight": first.weight, "bias": first.bias},
        {"weight": bn.weight, "bias": bn.bias},
        {},
        {},
        {"weight": last.weight, "bias": last.bias},
    ]
    assert_trees_close(r.params, expected, 1e-10, "params")
    assert_trees_close(r.model_state[1], dict(bn.named_buffers()), 1e-10, "running statistics")
    assert r.model_state[3] == {}


def test_eval_mode_uses_the_running_statistics_and_returns_the_state_unchanged():
    net = blocks.batch_norm(3)
    state = {
        "running_mean": torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64),
        "running_var": torch.tensor([4.0, 0.25, 1.0], dtype=torch.float64),
        "num_batches_tracked": torch.tensor(7),
    }
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y, new = net(net.init(0, dtype=torch.float64), x, state=state, train=False)
    bn = nn.BatchNorm1d(3).double().eval()
    bn.load_state_dict({**state, "weight": torch.ones(3), "bias": torch.zeros(3)})
    assert_trees_close(y, bn(x), 1e-14, "eval output")
    assert new is state


def test_fit_leaves_the_callers_model_state_and_resumes_from_it():
    module, (x, y) = _cnn(), _images()
    net, params = fnn.from_module(module)
    start = net.init_state()
    before = {k: t.clone() for k, t in start.items()}
    opt = optim.sgd(LR, momentum=MOMENTUM)
    r = fnn.fit(params, x, y, opt, model=net, steps=3, loss="mse", model_state=start)
    assert_trees_close(start, before, 0.0, "caller's model state")
    assert int(r.model_state["1.num_batches_tracked"]) == 3


def test_model_state_errors_name_the_argument():
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    plain = fnn.mlp([4, 2])
    with pytest.raises(ValueError, match="model_state is given, but the model has no state"):
        fnn.fit(
            plain.init(0, dtype=torch.float64),
            x,
            y,
            optim.sgd(0.1),
            model=plain,
            steps=1,
            model_state={},
        )
    net = _native()
    params = net.init(0, dtype=torch.float64)
    bad = net.init_state(dtype=torch.float64)
    bad[1]["running_mean"] = torch.zeros(5, dtype=torch.float64)
    with pytest.raises(ValueError, match="model_state does not match"):
        fnn.fit(params, x, y, optim.sgd(0.1), model=net, steps=1, model_state=bad)
    with pytest.raises(TypeError, match=r"model_state holds a torch\.float32"):
        fnn.fit(
            params,
            x,
            y,
            optim.sgd(0.1),
            model=net,
            steps=1,
            model_state=net.init_state(dtype=torch.float32),
        )


def test_to_module_with_a_bad_buffer_changes_nothing():
    module = _cnn()
    net, params = fnn.from_module(module)
    state = net.init_state()
    state["1.running_var"] = torch.ones(4, dtype=torch.float64)
    snapshot = copy.deepcopy(module.state_dict())
    with pytest.raises(ValueError, match="running_var"):
        fnn.to_module(module, {k: t + 1 for k, t in params.items()}, state)
    assert_trees_close(module.state_dict(), snapshot, 0.0, "module after a refused load")


def test_checkpoints_carry_the_model_state(tmp_path):
    module, (x, y) = _cnn(), _images()
    net, params = fnn.from_module(module)
    r = fnn.fit(params, x, y, optim.sgd(LR), model=net, steps=2, loss="mse")
    path = tmp_path / "c.pt"
    checkpoint.save(path, r.params, r.opt_state, model_state=r.model_state, steps=r.steps)
    assert torch.load(path, weights_only=True)["version"] == 3
    c = checkpoint.load(path)
    assert_trees_close(c.model_state, r.model_state, 0.0, "loaded model state")
    checkpoint.save(path, r.params, r.opt_state, steps=r.steps)  # no model state: version 2
    assert torch.load(path, weights_only=True)["version"] == 2
    assert checkpoint.load(path).model_state is None


def test_early_stopping_restores_the_model_state_of_the_best_step_too():
    net = _native()
    params = net.init(0, dtype=torch.float64)
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(16, 4, generator=g, dtype=torch.float64), torch.randn(16, 2, generator=g)
    val = (torch.randn(8, 4, generator=g, dtype=torch.float64), y[:8].double() + 1.0)
    opt, kwargs = optim.sgd(0.3, momentum=MOMENTUM), dict(model=net, loss="mse", seed=1)
    stopper = fnn.EarlyStopping(patience=100, restore_best=True)  # never stops: runs all steps
    r = fnn.fit(
        params, x, y.double(), opt, steps=12, val=val, eval_every=1, callbacks=[stopper], **kwargs
    )
    best = stopper.best_step
    assert best is not None and best < r.steps  # the best is not the last: a real restore
    at_best = fnn.fit(params, x, y.double(), opt, steps=best, **kwargs)
    assert_trees_close(r.params, at_best.params, 0.0, "restored params")
    assert_trees_close(r.model_state, at_best.model_state, 0.0, "restored model state")
    assert int(r.model_state[1]["num_batches_tracked"]) == best
    # the state at the best step is a copy: the final state moved on
    last = fnn.fit(params, x, y.double(), opt, steps=r.steps, **kwargs)
    assert int(last.model_state[1]["num_batches_tracked"]) == r.steps
