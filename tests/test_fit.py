"""fit as a training loop: minibatches and epochs, validation, progress lines, callbacks, non-finite
losses, purity and determinism. Bad input is in test_fit_errors.py, resuming in test_checkpoint.py."""

from __future__ import annotations

import functools
import hashlib
import operator
import re
import warnings

import pytest
import torch

import functional_nn as fnn
from functional_nn import optim
from functional_nn._pytree import tree_leaves, tree_map
from functional_nn.data import batches, epoch_order
from functional_nn.train import CHECK_EVERY, DEFAULT_STEPS
from tests.helpers import assert_trees_close

N, D_IN, H, D_OUT = 20, 5, 8, 3
NET = fnn.mlp([D_IN, H, D_OUT])

# (name, functional_nn optimizer, the torch.optim twin); lrs small enough for sse on N=20.
OPTIMIZERS = [
    (
        "sgd-momentum",
        lambda: optim.sgd(1e-3, momentum=0.9),
        lambda p: torch.optim.SGD(p, 1e-3, momentum=0.9, foreach=False),
    ),
    ("adam", lambda: optim.adam(1e-2), lambda p: torch.optim.Adam(p, 1e-2, foreach=False)),
]
# Trajectories follow torch.optim to rounding over 12 steps (measured on CPU: <= 3e-16 in float64,
# <= 1.2e-7 in float32).
RTOL = {torch.float64: 1e-13, torch.float32: 1e-6}


def problem(device="cpu", dtype=torch.float64, seed=0, n=N):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D_IN, generator=g, dtype=dtype).to(device)
    y = torch.randn(n, D_OUT, generator=g, dtype=dtype).to(device)
    return NET.init(seed, dtype=dtype, device=device), x, y


def assert_bitwise_equal(actual, expected, name="actual"):
    """Bitwise equal, leaf by leaf: a relative error of exactly 0."""
    assert_trees_close(actual, expected, 0.0, name)


def torch_loop(params, x, y, make_opt, epochs, batch_size, orders):
    """The idiomatic torch loop: DataLoader batches, autograd, torch.optim; orders[e] is epoch e's
    sampler (None: rows in order)."""
    leaves = [t.clone().requires_grad_(True) for t in tree_leaves(params)]
    shaped = [{"weight": leaves[2 * i], "bias": leaves[2 * i + 1]} for i in range(len(leaves) // 2)]
    opt, losses = make_opt(leaves), []
    dataset = torch.utils.data.TensorDataset(x, y)
    for e in range(epochs):
        for xb, yb in torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, sampler=orders[e]
        ):
            opt.zero_grad()
            loss = fnn.sse(NET.apply(shaped, xb), yb)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
    return shaped, torch.stack(losses)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize(
    "name, make_opt, make_torch_opt", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS]
)
def test_minibatches_follow_the_dataloader_loop(
    name, make_opt, make_torch_opt, shuffle, dtype, device
):
    params, x, y = problem(device, dtype)
    epochs, batch_size, seed = 3, 6, 7  # batches of 6, 6, 6, 2
    # The order data.py documents, from its public function (checked against its recipe below).
    orders = [epoch_order(N, seed, e).tolist() if shuffle else None for e in range(epochs)]
    expected_params, expected_losses = torch_loop(
        params, x, y, make_torch_opt, epochs, batch_size, orders
    )
    r = fnn.fit(
        params,
        x,
        y,
        make_opt(),
        model=NET,
        epochs=epochs,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
    )
    assert r.steps == epochs * 4 and r.losses.shape == (epochs * 4,)
    assert_trees_close(r.losses, expected_losses, RTOL[dtype], "losses")
    assert_trees_close(r.params, expected_params, RTOL[dtype], "params")


def recording_model(seen):
    """NET, with each batch's first column (the row index, below) appended to `seen`."""

    def apply(params, xb):
        seen.append(xb[:, 0].round().long().tolist())
        return NET.apply(params, xb)

    return apply


def test_each_epoch_visits_every_example_once_in_batches_like_dataloader():
    params, x, y = problem()
    x = x.clone()
    x[:, 0] = torch.arange(N, dtype=x.dtype)
    runs = {}
    for seed in (0, 0, 1):
        seen = []
        fnn.fit(
            params,
            x,
            y,
            optim.sgd(1e-4),
            model=recording_model(seen),
            epochs=3,
            batch_size=6,
            seed=seed,
        )
        assert [len(b) for b in seen] == [
            6,
            6,
            6,
            2,
        ] * 3  # the last batch short, as drop_last=False
        epochs = [functools.reduce(operator.iadd, seen[4 * e : 4 * e + 4], []) for e in range(3)]
        assert all(sorted(e) == list(range(N)) for e in epochs)
        assert epochs[0] != epochs[1] != epochs[2]
        runs.setdefault(seed, []).append(epochs)
    assert runs[0][0] == runs[0][1]  # the order is a function of the seed
    assert runs[0][0] != runs[1][0]


def test_epoch_order_follows_the_documented_recipe():
    # data.py: randperm from a generator seeded by the first 8 bytes (little-endian) of
    # BLAKE2b("seed,epoch"), written out here from the documentation.
    for seed, epoch in [(0, 0), (7, 2), (2**64 - 1, 10**12)]:
        digest = hashlib.blake2b(f"{seed},{epoch}".encode(), digest_size=8).digest()
        g = torch.Generator().manual_seed(int.from_bytes(digest, "little"))
        assert torch.equal(epoch_order(N, seed, epoch), torch.randperm(N, generator=g))
    assert not torch.equal(epoch_order(N, 0, 1), epoch_order(N, 1, 0))


def test_resuming_draws_one_order_however_far_in(monkeypatch):
    x, y = torch.arange(N, dtype=torch.float64)[:, None], torch.zeros(N, 1)
    for start in (0, 10**6, 2**62):
        draws = []
        real = torch.randperm
        monkeypatch.setattr(
            torch,
            "randperm",
            lambda *a, draws=draws, real=real, **k: draws.append(1) or real(*a, **k),
        )
        xb, _ = next(batches(x, y, 6, True, 3, start_step=start))
        monkeypatch.setattr(torch, "randperm", real)
        epoch, i = divmod(start, 4)  # 4 batches of 6 rows per epoch of 20
        assert len(draws) == 1
        assert xb[:, 0].long().tolist() == epoch_order(N, 3, epoch)[6 * i : 6 * i + 6].tolist()


def test_fit_resumes_at_step_2_to_the_62_at_once():
    params, x, y = problem()
    r = fnn.fit(params, x, y, optim.sgd(1e-3), model=NET, steps=2, batch_size=6, start_step=2**62)
    assert r.steps == 2**62 + 2
    with pytest.raises(
        ValueError,
        match=r"start_step \+ the steps of this call must be <= 2\*\*63 - 1 .*got 9223372036854775808 \+ 2",
    ):
        fnn.fit(params, x, y, optim.sgd(1e-3), model=NET, steps=2, start_step=2**63)
    # The run's end counts, not only its start: 3 epochs of 4 batches from 2**63 - 12 fit exactly.
    with pytest.raises(ValueError, match=r"got 9223372036854775797 \+ 12"):
        fnn.fit(
            params, x, y, optim.sgd(1e-3), model=NET, epochs=3, batch_size=6, start_step=2**63 - 11
        )


def test_unshuffled_batches_are_consecutive_rows():
    params, x, y = problem()
    x = x.clone()
    x[:, 0] = torch.arange(N, dtype=x.dtype)
    seen = []
    fnn.fit(
        params,
        x,
        y,
        optim.sgd(1e-4),
        model=recording_model(seen),
        epochs=2,
        batch_size=8,
        shuffle=False,
    )
    rows = list(range(N))
    assert seen == [rows[:8], rows[8:16], rows[16:]] * 2


def test_one_batch_of_all_rows_in_order_is_full_batch_bitwise():
    params, x, y = problem()
    full = fnn.fit(params, x, y, optim.adam(1e-2), model=NET, steps=6)
    batched = fnn.fit(
        params, x, y, optim.adam(1e-2), model=NET, steps=6, batch_size=N, shuffle=False
    )
    assert_bitwise_equal((batched.params, batched.losses), (full.params, full.losses))


@pytest.mark.parametrize(
    "kwargs, expected_steps",
    [
        ({}, DEFAULT_STEPS),  # neither steps nor epochs: the seeds' 500 full-batch steps
        ({"steps": 7}, 7),
        ({"epochs": 4}, 4),  # full batch: one step per epoch
        ({"epochs": 3, "batch_size": 6}, 12),  # ceil(20 / 6) = 4 steps per epoch
        ({"epochs": 2, "batch_size": 5}, 8),
        ({"steps": 5, "batch_size": 6}, 5),
    ],
)
def test_steps_and_epochs_set_the_number_of_updates(kwargs, expected_steps):
    net = fnn.mlp([2, 2, 1])
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(N, 2, generator=g), torch.randn(N, 1, generator=g)
    r = fnn.fit(net.init(0), x, y, optim.sgd(1e-3), model=net, **kwargs)
    assert r.steps == expected_steps and r.losses.shape == (expected_steps,)
    assert r.stop_reason == "done" and r.nonfinite_step is None


def test_steps_and_epochs_count_this_calls_work_from_start_step():
    params, x, y = problem()
    r = fnn.fit(params, x, y, optim.sgd(1e-3), model=NET, epochs=2, batch_size=6, start_step=3)
    assert r.steps == 3 + 2 * 4 and r.losses.shape == (8,)


@pytest.mark.parametrize(
    "batch_size, eval_every, expected_steps",
    [
        (None, 3, (3, 6, 9, 10)),  # every 3 steps, and after the last
        (6, None, (4, 8, 10)),  # default: once per epoch (4 steps), and after the last
    ],
)
def test_val_losses_are_the_loss_at_the_params_of_those_steps(
    batch_size, eval_every, expected_steps, device
):
    params, x, y = problem(device)
    _, xv, yv = problem(device, seed=1, n=9)
    kwargs = dict(model=NET, batch_size=batch_size, seed=3)
    r = fnn.fit(
        params, x, y, optim.adam(1e-2), steps=10, val=(xv, yv), eval_every=eval_every, **kwargs
    )
    assert r.val_steps == expected_steps and r.val_losses.shape == (len(expected_steps),)
    for s, val_loss in zip(r.val_steps, r.val_losses):
        at_s = fnn.fit(params, x, y, optim.adam(1e-2), steps=s, **kwargs).params  # fit is pure
        assert torch.equal(val_loss, fnn.sse(NET.apply(at_s, xv), yv))


def test_log_every_prints_one_line_per_k_steps_to_stderr(capsys):
    params, x, y = problem()
    _, xv, yv = problem(seed=1, n=9)
    r = fnn.fit(
        params,
        x,
        y,
        optim.adam(1e-2),
        model=NET,
        steps=10,
        log_every=3,
        val=(xv, yv),
        eval_every=100,
    )
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and len(lines) == 3
    for line, s in zip(lines, (3, 6, 9)):
        # After s steps: step s - 1 was the last, and its loss is losses[s - 1].
        m = re.fullmatch(
            r"step +(\d+) \( *(\d+)/10 done\)  loss (\S+)  val (\S+)  (\S+) steps/s", line
        )
        assert m, line
        assert (int(m[1]), int(m[2])) == (s - 1, s)
        assert float(m[3]) == pytest.approx(float(r.losses[s - 1]), rel=1e-5)
        at_s = fnn.fit(params, x, y, optim.adam(1e-2), model=NET, steps=s).params
        assert float(m[4]) == pytest.approx(float(fnn.sse(NET.apply(at_s, xv), yv)), rel=1e-5)
        assert float(m[5]) > 0
    fnn.fit(params, x, y, optim.adam(1e-2), model=NET, steps=4)
    assert capsys.readouterr() == ("", "")


def test_callbacks_see_each_evaluation_and_can_stop():
    params, x, y = problem()
    calls = []

    def callback(step, loss, p):
        calls.append((step, loss, p))
        return step >= 6

    r = fnn.fit(
        params, x, y, optim.adam(1e-2), model=NET, steps=10, eval_every=2, callbacks=[callback]
    )
    assert [c[0] for c in calls] == [2, 4, 6]
    assert r.steps == 6 and r.stop_reason == "callback" and r.losses.shape == (6,)
    assert_bitwise_equal(
        r.params, fnn.fit(params, x, y, optim.adam(1e-2), model=NET, steps=6).params
    )
    # Without val, the monitored loss is the mean training loss since the last evaluation.
    for i, (step, loss, p) in enumerate(calls):
        assert torch.equal(loss, r.losses[2 * i : 2 * i + 2].mean())
        assert_bitwise_equal(
            p, fnn.fit(params, x, y, optim.adam(1e-2), model=NET, steps=step).params
        )


def test_with_val_callbacks_monitor_the_validation_loss():
    params, x, y = problem()
    _, xv, yv = problem(seed=1, n=9)
    seen = []
    r = fnn.fit(
        params,
        x,
        y,
        optim.adam(1e-2),
        model=NET,
        steps=6,
        eval_every=2,
        val=(xv, yv),
        callbacks=[lambda step, loss, p: seen.append(loss)],
    )
    assert r.stop_reason == "done" and torch.equal(torch.stack(seen), r.val_losses)


def test_fit_leaves_its_inputs_untouched_and_repeats_bitwise(device):
    params, x, y = problem(device)
    _, xv, yv = problem(device, seed=1, n=9)
    opt = optim.sgd(1e-3, momentum=0.9)
    state = fnn.fit(params, x, y, opt, model=NET, steps=3).opt_state
    inputs = (params, x, y, state, xv, yv)
    before = tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, inputs)
    kwargs = dict(model=NET, steps=9, batch_size=6, opt_state=state, val=(xv, yv), start_step=3)
    a = fnn.fit(params, x, y, opt, **kwargs)
    b = fnn.fit(params, x, y, opt, **kwargs)
    assert_bitwise_equal(inputs, before, "inputs after fit")
    if device.type == "cpu":
        for field in ("params", "opt_state", "losses", "val_losses"):
            assert_bitwise_equal(getattr(a, field), getattr(b, field), field)


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="counts syncs with CUDA's sync debug mode"
)
def test_the_loop_syncs_with_the_host_only_every_check():
    params, x, y = problem("cuda")
    _, xv, yv = problem("cuda", seed=1, n=9)
    steps = 2 * CHECK_EVERY + 50
    fnn.fit(params, x, y, optim.adam(1e-2), model=NET, steps=2)  # CUDA's lazy start-up syncs
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fnn.fit(
                params, x, y, optim.adam(1e-2), model=NET, steps=steps, val=(xv, yv)
            )  # val every step
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    # 4 NaN checks of the data, 3 looks at the finite flags (steps 100, 200, 250): far below one a step.
    assert len(syncs) <= 12, [str(w.message) for w in syncs]
