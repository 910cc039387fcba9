"""fit over a DataLoader or a re-iterable of batches: the same result as the same batches as tensors.

Expected values come from fit on tensors (itself checked against torch and the oracle elsewhere),
fed the same batches: a loader changes where the batches come from, never a step's arithmetic, so
the two agree bitwise on CPU.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler, TensorDataset

import functional_nn as fnn
from functional_nn import data
from tests.helpers import assert_trees_close

N, SIZES, BATCH = 23, [5, 7, 3], 8  # 23 = 8 + 8 + 7: an unequal last batch


def _problem(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, SIZES[0], generator=g, dtype=dtype)
    y = torch.randn(N, SIZES[-1], generator=g, dtype=dtype)
    net = fnn.mlp(SIZES)
    return x, y, net, net.init(0, dtype=dtype)


class EpochOrder(Sampler):
    """fit's own shuffled order, data.epoch_order(n, seed, epoch), as a sampler with set_epoch."""

    def __init__(self, n, seed):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        return iter(data.epoch_order(self.n, self.seed, self.epoch).tolist())

    def __len__(self):
        return self.n


def _assert_same(a, b):
    assert torch.equal(a.losses, b.losses)
    assert_trees_close(a.params, b.params, 0.0)
    assert_trees_close(a.opt_state, b.opt_state, 0.0)
    assert a.steps == b.steps and a.val_steps == b.val_steps
    if a.val_losses is not None:
        assert torch.equal(a.val_losses, b.val_losses)


@pytest.mark.parametrize("shuffle", [False, True], ids=["in_order", "shuffled"])
def test_a_loader_gives_what_its_batches_as_tensors_give(shuffle):
    x, y, net, params = _problem()
    opt = fnn.adam(1e-2)
    want = fnn.fit(
        params, x, y, opt, model=net, batch_size=BATCH, shuffle=shuffle, seed=4, epochs=3,
        val=(x[:6], y[:6]),
    )  # fmt: skip
    sampler = EpochOrder(N, 4) if shuffle else None
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, sampler=sampler)
    val = DataLoader(TensorDataset(x[:6], y[:6]), batch_size=4)  # a val loader: 4 + 2 rows
    got = fnn.fit(params, loader, None, opt, model=net, epochs=3, val=val)
    assert len(got.losses) == 9 and got.val_steps == (3, 6, 9)  # one loss a batch; once an epoch
    _assert_same(got, want)


def test_a_list_of_batches_is_a_loader_and_nothing_is_mutated():
    x, y, net, params = _problem()
    batches = [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, N, BATCH)]
    before = [(a.clone(), b.clone()) for a, b in batches]
    want = fnn.fit(params, x, y, fnn.sgd(1e-2), model=net, batch_size=BATCH, shuffle=False, steps=7)
    got = fnn.fit(params, batches, None, fnn.sgd(1e-2), model=net, steps=7, log_every=7)
    _assert_same(got, want)
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(batches, before))


def test_resume_mid_epoch_is_bitwise_with_a_seeded_epoch_order():
    x, y, net, params = _problem()
    opt = fnn.adam(1e-2)

    def loader():  # a fresh loader, as a restarted process builds it
        ds = TensorDataset(x, y)
        return DataLoader(ds, batch_size=BATCH, sampler=DistributedSampler(ds, 1, 0, seed=9))

    whole = fnn.fit(params, loader(), None, opt, model=net, steps=8)
    first = fnn.fit(params, loader(), None, opt, model=net, steps=4)  # stops in epoch 1, batch 1
    rest = fnn.fit(
        first.params, loader(), None, opt, model=net, steps=4, opt_state=first.opt_state,
        start_step=first.steps,
    )  # fmt: skip
    assert torch.equal(torch.cat([first.losses, rest.losses]), whole.losses)
    assert_trees_close(rest.params, whole.params, 0.0)
    # and the epochs differ (set_epoch reached the sampler): epoch 1's first loss is not epoch 0's
    assert not torch.equal(whole.losses[:3], whole.losses[3:6])


def test_callbacks_see_the_loaders_epochs():
    x, y, net, params = _problem()
    seen = []
    callback = lambda step, loss, p: seen.append(step) or False
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)
    fnn.fit(params, loader, None, fnn.sgd(1e-2), model=net, epochs=2, callbacks=[callback])
    assert seen == [3, 6]


def _bad(i, batch):
    x, y, _, _ = _problem()
    batches = [(x[:BATCH], y[:BATCH])] * 4
    batches[i] = batch(x[:BATCH], y[:BATCH])
    return batches


@pytest.mark.parametrize(
    "batch, error, match",
    [
        (lambda x, y: (x, y, y), TypeError, "must be a pair \\(xb, yb\\) of tensors, got tuple"),
        (lambda x, y: (x.float(), y), TypeError, "xb of dtype torch.float32, but the first"),
        (lambda x, y: (x[:, :4], y), ValueError, r"xb of shape \(8, 4\), but the first"),
        (lambda x, y: (x, y[:5]), ValueError, "the same number of rows"),
    ],
    ids=["structure", "dtype", "shape", "rows"],
)
def test_a_bad_batch_is_named_by_its_index(batch, error, match):
    _, _, net, params = _problem()
    with pytest.raises(error, match=match) as info:
        fnn.fit(params, _bad(2, batch), None, fnn.sgd(1e-2), model=net, steps=4)
    assert "the loader's batch 2 of epoch 0 (step 2)" in str(info.value)
    x, y, _, _ = _problem()
    val = _Unsized(_bad(2, batch))  # a val loader; a list would be val's (x_val, y_val)
    with pytest.raises(error, match="batch 2 of the val loader"):
        fnn.fit(params, x, y, fnn.sgd(1e-2), model=net, steps=1, val=val)


def test_a_loader_that_is_wrong_as_a_whole():
    x, y, net, params = _problem()
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)
    opt = fnn.sgd(1e-2)
    with pytest.raises(ValueError, match="pass y=None"):
        fnn.fit(params, loader, y, opt, model=net)
    with pytest.raises(ValueError, match="set the batch size on the loader"):
        fnn.fit(params, loader, None, opt, model=net, batch_size=4)
    with pytest.raises(TypeError, match="can be read only once"):
        fnn.fit(params, iter(loader), None, opt, model=net)
    unsized = _Unsized([(x[:BATCH], y[:BATCH])])
    with pytest.raises(ValueError, match="epochs needs the loader's length"):
        fnn.fit(params, unsized, None, opt, model=net, epochs=1)
    assert len(fnn.fit(params, unsized, None, opt, model=net, steps=3).losses) == 3
    with pytest.raises(ValueError, match="x yielded 3 batches in epoch 0 but len\\(x\\) is 4"):
        fnn.fit(params, _Lies(loader, 4), None, opt, model=net, steps=5)
    with pytest.raises(
        TypeError,
        match=r"batch 0 of epoch 0 \(step 0\) as x and y: x has dtype torch.float32 but params",
    ):
        fnn.fit(params, [(x.float(), y.float())], None, opt, model=net, steps=1)


class _Unsized:
    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


class _Lies(_Unsized):
    def __init__(self, batches, n):
        self.batches, self.n = batches, n

    def __len__(self):
        return self.n


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pinned_batches_move_to_the_params_device():
    x, y, net, params = _problem(torch.float32)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, pin_memory=True)
    cuda = [{k: v.cuda() for k, v in layer.items()} for layer in params]
    got = fnn.fit(cuda, loader, None, fnn.adam(1e-2), model=net, epochs=2)
    want = fnn.fit(
        cuda, x.cuda(), y.cuda(), fnn.adam(1e-2), model=net, batch_size=BATCH, shuffle=False,
        epochs=2,
    )  # fmt: skip
    assert got.losses.device.type == "cuda"
    assert_trees_close(got.params, want.params, 1e-6)
