"""Network-building layers: torch.nn's params from the same seed, composition with serial, and a
small CNN built without torch.nn, trained by fit, against the torch.nn + torch.optim loop."""

from __future__ import annotations

import pytest
import torch

import functional_nn as fnn
from functional_nn import blocks
from tests.helpers import assert_trees_close


def _torch_draws(seed: int, make):
    """make() run after torch.manual_seed(seed), the global RNG restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


@pytest.mark.parametrize("groups, bias", [(1, True), (2, False)])
def test_conv2d_block_draws_torch_nn_conv2d_params(groups, bias):
    ours = blocks.conv2d(4, 6, (3, 2), groups=groups, bias=bias).init(5, dtype=torch.float64)
    module = _torch_draws(
        5, lambda: torch.nn.Conv2d(4, 6, (3, 2), groups=groups, bias=bias, dtype=torch.float64)
    )
    expected = module.state_dict()
    assert sorted(ours) == sorted(expected)
    assert all(torch.equal(ours[k], expected[k]) for k in ours)  # the same sampler, bit for bit


def test_embedding_and_norm_blocks_are_torch_nn_modules():
    emb = blocks.embedding(6, 3, padding_idx=2).init(7, dtype=torch.float64)
    module = _torch_draws(7, lambda: torch.nn.Embedding(6, 3, padding_idx=2, dtype=torch.float64))
    assert torch.equal(emb["weight"], module.weight.detach())
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    bn = torch.nn.BatchNorm2d(3, track_running_stats=False).double().eval()
    net = blocks.batch_norm(3, track_running_stats=False)
    y, state = net(net.init(0, dtype=torch.float64), x, state=None, train=False)
    assert state is None
    assert_trees_close(y, bn(x), rtol=1e-14)
    ln = blocks.layer_norm((5, 5))
    ref = torch.nn.LayerNorm((5, 5)).double()
    assert_trees_close(ln(ln.init(0, dtype=torch.float64), x), ref(x), rtol=1e-14)


def _cnn():
    return fnn.serial(
        blocks.conv2d(1, 4, 3, padding=1),
        "relu",
        blocks.max_pool2d(2),
        blocks.conv2d(4, 4, 3, padding=1, groups=2),
        "silu",
        blocks.flatten(),
        fnn.dense(4 * 4 * 4, 3, init="torch"),
        "log_softmax",
    )


def _torch_cnn():
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 4, 3, padding=1, groups=2),
        torch.nn.SiLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 4 * 4, 3),
        torch.nn.LogSoftmax(dim=-1),
    ).double()


def test_a_cnn_without_torch_nn_trained_by_fit_follows_the_torch_loop():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 1, 8, 8, dtype=torch.float64, generator=g)
    y = torch.randint(0, 3, (16,), generator=g)
    net = _cnn()
    params = net.init(0, dtype=torch.float64)
    module = _torch_cnn()
    # the torch.nn twin gets our params: layer i of serial is module i.
    module.load_state_dict(
        {f"{i}.{k}": v.clone() for i, p in enumerate(params) for k, v in p.items()}
    )
    nll = lambda pred, target: -pred.gather(1, target[:, None]).mean()
    result = fnn.fit(
        params,
        x,
        y,
        fnn.sgd(0.05, momentum=0.9),
        model=net,
        loss=nll,
        steps=20,
        batch_size=8,
        shuffle=False,
    )
    opt = torch.optim.SGD(module.parameters(), lr=0.05, momentum=0.9)
    for step in range(20):
        rows = slice(8 * (step % 2), 8 * (step % 2) + 8)
        opt.zero_grad()
        torch.nn.functional.nll_loss(module(x[rows]), y[rows]).backward()
        opt.step()
    expected = [
        {k: module.state_dict()[f"{i}.{k}"] for k in p} for i, p in enumerate(result.params)
    ]
    # it learned: the loss on all the data fell by more than a quarter.
    assert nll(net(result.params, x), y) < 0.75 * nll(net(params, x), y)
    assert_trees_close(result.params, expected, rtol=1e-10, name="CNN after 20 steps")


def test_serial_check_names_the_conv_layer_that_does_not_fit():
    net = _cnn()
    params = net.init(0, dtype=torch.float64)
    with pytest.raises(
        ValueError,
        match=r"serial layer 0: x has shape \(2, 3, 8, 8\), but conv2d expects \(N, 1, H, W\)",
    ):
        net.check(params, torch.zeros(2, 3, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"serial layer 6"):
        net.check(params, torch.zeros(2, 1, 10, 10, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"max_pool2d has no params"):
        blocks.max_pool2d(2).check({"w": torch.ones(1)}, torch.zeros(1, 1, 2, 2))
    with pytest.raises(
        ValueError, match=r"in_channels must be a positive int divisible by groups=2, got 3"
    ):
        blocks.conv2d(3, 4, 3, groups=2)
