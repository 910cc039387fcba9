"""Data parallel: 2 and 3 CPU processes (gloo on loopback) against one process, float64.

The test launches its workers as torchrun would (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), each
`python -c` running `_worker` below, which writes what it saw to a file; every launch is bounded in
time and its processes killed when it runs over. The reference is the plain single-process loop
(torch.func.grad_and_value and adam) on the same global batches.
"""

from __future__ import annotations

import datetime
import functools
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist

import functional_nn as fnn
from functional_nn import _collectives, data, distributed
from functional_nn._pytree import tree_leaves
from tests.helpers import assert_trees_close

pytestmark = [pytest.mark.distributed, pytest.mark.xdist_group("distributed")]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH_TIMEOUT_S = 90  # a whole launch, torch imports included, on a busy 2-core machine
SIZES = [5, 7, 3]
# (loss, N, batch size, steps): 23 = 8 + 8 + 7 rows, an unequal last batch; 17 = 8 + 8 + 1, so
# with 2 or 3 ranks some get no row of the last batch.
CASES = {
    "sse": ("sse", 23, 8, 9),
    "mse": ("mse", 17, 8, 9),
    "cross_entropy": ("cross_entropy", 23, 8, 9),
}
NONFINITE_STEP = 3  # the step at which rank 1's share of the batch turns NaN


def _data(loss: str, n: int):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, SIZES[0], generator=g, dtype=torch.float64)
    if loss == "cross_entropy":
        return x, torch.randint(0, SIZES[-1], (n,), generator=g)
    return x, torch.randn(n, SIZES[-1], generator=g, dtype=torch.float64)


def _train(case, rank: int = 0, world: int = 1, group=None, nan_at: int | None = None):
    """The loop of `case`: single-process when world == 1 (no torch.distributed call at all)."""
    name, n, batch_size, steps = case
    x, y = _data(name, n)
    net = fnn.mlp(SIZES)
    opt = fnn.adam(lr=1e-2)
    loss_fn = fnn.losses.get_loss(name)
    params = net.init(0, dtype=torch.float64)
    state = opt.init(params)
    if world > 1:  # each rank starts elsewhere; broadcast must bring rank 0's params and state
        params = distributed.broadcast(net.init(rank, dtype=torch.float64), group)
        state = distributed.broadcast(opt.init(params), group)
    losses = []
    for step, (xb, yb) in zip(range(steps), data.batches(x, y, batch_size, True, 0)):
        xr, yr = distributed.shard((xb, yb), rank, world) if world > 1 else (xb, yb)
        if step == nan_at and rank == 1:
            xr = torch.full_like(xr, float("nan"))
        objective = lambda p, xr=xr, yr=yr: loss_fn(net.apply(p, xr), yr)
        grads, value = torch.func.grad_and_value(objective)(params)
        if world > 1:
            if nan_at is not None and not distributed.all_true(torch.isfinite(value), group):
                break  # decided alike on every rank, although only rank 1's loss is NaN
            reduction = distributed.loss_reduction(loss_fn)
            value, grads = distributed.all_reduce_grads(
                grads, value, xr.shape[0], xb.shape[0], reduction, group
            )
        losses.append(value)
        updates, state = opt.update(grads, state, params)
        params = fnn.apply_updates(params, updates)
    return torch.stack(losses), params


def _counting_all_reduce(params, group, **options):
    """How many all_reduce calls one gradient reduction of `params`' shapes makes."""
    calls = []
    original = dist.all_reduce
    dist.all_reduce = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        grads = [{k: torch.ones_like(v) for k, v in layer.items()} for layer in params]
        distributed.all_reduce_grads(
            grads, torch.ones((), dtype=torch.float64), 1, 2, "mean", group, **options
        )
    finally:
        dist.all_reduce = original
    return len(calls)


def _worker_train(rank: int, world: int, out: dict, tmp: str) -> None:
    net = fnn.mlp(SIZES)
    mine = net.init(rank, dtype=torch.float64)
    before = [{k: v.clone() for k, v in layer.items()} for layer in mine]
    got = distributed.broadcast(mine, None)
    out["broadcast"] = got
    out["broadcast_input_unchanged"] = all(
        torch.equal(a, b) for la, lb in zip(mine, before) for a, b in zip(la.values(), lb.values())
    )
    out["broadcast_shares_memory"] = any(
        a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
        for la, lb in zip(mine, got)
        for a, b in zip(la.values(), lb.values())
    )
    distributed.check_equal(got, None, "params")  # must pass: equal everywhere now
    out["check_equal"] = _error(lambda: distributed.check_equal(mine, None, "params"))
    wrong = net.init(0, dtype=torch.float64 if rank != 1 else torch.float32)
    out["structure"] = _error(lambda: distributed.broadcast(wrong, None))
    out["collectives"] = _counting_all_reduce(got, None)
    out["collectives_capped"] = _counting_all_reduce(got, None, bucket_cap_mb=1e-6)
    out["all_true"] = (distributed.all_true(True), distributed.all_true(rank != 1))
    for key, case in CASES.items():
        out[key] = _train(case, rank, world)
    out["nonfinite"] = _train(CASES["sse"], rank, world, nan_at=NONFINITE_STEP)[0]
    losses, params = out["sse"]
    path = os.path.join(tmp, "ckpt.pt")
    distributed.save(path, params, steps=len(losses))
    out["checkpoint"] = fnn.checkpoint.load(path)
    out["save_fails"] = _error(
        lambda: distributed.save(os.path.join(tmp, "no", "such", "dir.pt"), params)
    )


def _worker_fail(rank: int, world: int, out: dict, tmp: str) -> None:
    """Rank 1 raises (or, with FNN_STUCK, hangs) after one step; the others must not hang."""
    group = dist.new_group(timeout=datetime.timedelta(seconds=3))
    one = torch.ones(4)
    distributed.all_reduce_grads([one], None, 1, world, "mean", group)
    if rank == 1:
        if os.environ.get("FNN_STUCK"):
            time.sleep(LAUNCH_TIMEOUT_S)
        raise RuntimeError("rank 1 fails on purpose")
    distributed.all_reduce_grads([one], None, 1, world, "mean", group)


def _fit(case, params, **options):
    """fit on `case`'s data, as the single-process reference and (with distributed=) each rank."""
    name, n, batch_size, steps = case
    x, y = _data(name, n)
    defaults = dict(model=fnn.mlp(SIZES), loss=name, batch_size=batch_size, steps=steps)
    return fnn.fit(params, x, y, fnn.adam(lr=1e-2), **{**defaults, **options})


def _sampled(world: int, rank: int, n: int = 23):
    """The loader case: rank's share of 23 rows by DistributedSampler, shuffled, in batches of 5."""
    ds = torch.utils.data.TensorDataset(*_data("mse", n))
    sampler = torch.utils.data.DistributedSampler(ds, world, rank, shuffle=True, seed=2)
    return torch.utils.data.DataLoader(ds, batch_size=5, sampler=sampler)


def _worker_fit(rank: int, world: int, out: dict, tmp: str) -> None:
    mine = fnn.mlp(SIZES).init(rank, dtype=torch.float64)  # broadcast must bring rank 0's
    for key, case in CASES.items():
        r = _fit(case, mine, distributed=True)
        out[key] = (r.losses, r.params)
    r = fnn.fit(mine, _sampled(world, rank), None, fnn.adam(lr=1e-2), model=fnn.mlp(SIZES),
                loss="mse", epochs=2, distributed=True)  # fmt: skip
    out["loader"] = (r.losses, r.params)
    first = _fit(CASES["mse"], mine, steps=4, distributed=True)
    distributed.save(os.path.join(tmp, "half.pt"), first.params, first.opt_state, steps=first.steps)
    out["compile"] = _error(lambda: _fit(CASES["sse"], mine, distributed=True, compile=True))


def _worker_resume(rank: int, world: int, out: dict, tmp: str) -> None:
    ckpt = fnn.checkpoint.load(os.path.join(tmp, "half.pt"))
    steps = CASES["mse"][3] - ckpt.meta["steps"]
    r = _fit(CASES["mse"], ckpt.params, steps=steps, opt_state=ckpt.opt_state,
             start_step=ckpt.meta["steps"], distributed=True)  # fmt: skip
    out["resumed"] = (r.losses, r.params)


def _worker_fit_fail(rank: int, world: int, out: dict, tmp: str) -> None:
    """Rank 1 gives fit NaN params (an error before any collective); the others must not hang."""
    group = dist.new_group(timeout=datetime.timedelta(seconds=3))
    params = fnn.mlp(SIZES).init(0, dtype=torch.float64)
    if rank == 1:
        params[0]["bias"][0] = float("nan")
    _fit(CASES["sse"], params, distributed=group)


def _worker() -> None:
    """A worker process's entry point (see _launch)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=LAUNCH_TIMEOUT_S))
    rank, world = distributed.rank_and_world()
    tmp, out = os.environ["FNN_TMP"], {}
    modes = {"train": _worker_train, "fail": _worker_fail, "fit": _worker_fit}
    modes.update(resume=_worker_resume, fit_fail=_worker_fit_fail)
    modes[os.environ["FNN_MODE"]](rank, world, out, tmp)
    torch.save(out, os.path.join(tmp, f"rank{rank}.pt"))
    dist.barrier()  # every rank is past its last collective
    # then exit without gloo's teardown, whose threads can abort a rank at exit ("terminate
    # called without an active exception", seen once in CI on torch 2.13)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _error(fn) -> str | None:
    try:
        fn()
    except (ValueError, TypeError, RuntimeError, FileNotFoundError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(world: int, mode: str, tmp, wait_for=None, **env) -> list[tuple[int, str, float]]:
    """Start `world` workers; wait (bounded) for those in `wait_for` (all by default), kill the rest.

    Returns:
        One (return code, stderr, seconds to exit) per rank.
    """
    base = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": str(world),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": ROOT,
        "FNN_MODE": mode,
        "FNN_TMP": str(tmp),
        **env,
    }
    code = "from tests.test_distributed import _worker; _worker()"
    start = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(world)
    ]
    results = []
    try:
        for r, p in enumerate(procs):
            if wait_for is None or r in wait_for:
                left = LAUNCH_TIMEOUT_S - (time.monotonic() - start)
                try:
                    _, err = p.communicate(timeout=max(left, 0.1))
                except subprocess.TimeoutExpired:
                    pytest.fail(f"rank {r} of {world} ({mode}) still running after the time bound")
                results.append((p.returncode, err, time.monotonic() - start))
            else:
                results.append((None, "", float("nan")))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return results


@functools.cache
def _reference(key: str):
    return _train(CASES[key])


@pytest.fixture(scope="module", params=[2, 3], ids=lambda p: f"P{p}")
def runs(request, tmp_path_factory):
    """What each of P workers saw in the training run: one dict per rank."""
    tmp = tmp_path_factory.mktemp(f"dist{request.param}")
    for r, (code, err, _) in enumerate(_launch(request.param, "train", tmp)):
        assert code == 0, f"rank {r} failed:\n{err[-3000:]}"
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(request.param)]


@pytest.mark.parametrize("key", list(CASES))
def test_follows_the_single_process_trajectory(runs, key):
    want_losses, want_params = _reference(key)
    for r, out in enumerate(runs):
        losses, params = out[key]
        assert_trees_close(losses, want_losses, 1e-10, f"rank {r} losses")
        assert_trees_close(params, want_params, 1e-10, f"rank {r} params")
        for a, b in zip(tree_leaves(params), tree_leaves(runs[0][key][1])):
            assert torch.equal(a, b), f"rank {r}'s params differ from rank 0's"


def test_broadcast_gives_rank0s_values_in_new_tensors(runs):
    want = fnn.mlp(SIZES).init(0, dtype=torch.float64)
    for r, out in enumerate(runs):
        assert_trees_close(out["broadcast"], want, 0.0, f"rank {r}")
        assert out["broadcast_input_unchanged"] and not out["broadcast_shares_memory"]


def test_mismatches_fail_on_every_rank(runs):
    for out in runs:
        assert out["check_equal"].startswith(
            "ValueError: params[0]['weight'] differs between rank 0 and rank 1"
        )
        assert out["structure"].startswith("ValueError: broadcast: tree differs in structure")
        assert "float32" in out["structure"]


def test_one_collective_per_step_for_a_small_model(runs):
    leaves = 2 * (len(SIZES) - 1)
    for out in runs:
        assert out["collectives"] == 1
        assert out["collectives_capped"] == leaves + 1  # each leaf and the loss alone


def test_decisions_agree(runs):
    for out in runs:
        assert out["all_true"] == (True, False)
        assert len(out["nonfinite"]) == NONFINITE_STEP  # every rank stopped before that step


def test_checkpoint_written_once_read_everywhere(runs):
    losses, params = runs[0]["sse"]
    for r, out in enumerate(runs):
        assert out["checkpoint"].meta == {"steps": len(losses)}
        assert_trees_close(out["checkpoint"].params, params, 0.0, f"rank {r} checkpoint")
        want = "FileNotFoundError" if r == 0 else "RuntimeError: rank 0 could not save"
        assert out["save_fails"].startswith(want), out["save_fails"]


@pytest.mark.parametrize("stuck", [False, True], ids=["raises", "hangs"])
def test_a_failing_rank_makes_the_others_fail(tmp_path, stuck):
    env = {"FNN_STUCK": "1"} if stuck else {}
    results = _launch(3, "fail", tmp_path, wait_for=None if not stuck else {0, 2}, **env)
    if not stuck:
        assert results[1][0] != 0 and "rank 1 fails on purpose" in results[1][1]
    for r in (0, 2):
        code, err, _ = results[r]
        assert code != 0, f"rank {r} exited cleanly although rank 1 failed"
        assert "functional_nn.distributed: all_reduce failed on rank" in err, err[-2000:]
    if stuck:  # the group's 3 s timeout ended them, long before rank 1's sleep would
        assert max(results[0][2], results[2][2]) < LAUNCH_TIMEOUT_S


def test_shares_split_every_row_once():
    assert distributed.shard_sizes(7, 3) == [3, 2, 2]
    assert distributed.shard_sizes(1, 3) == [1, 0, 0]
    x = torch.arange(7)
    parts = [distributed.shard(x, r, 3) for r in range(3)]
    assert sorted(torch.cat(parts).tolist()) == list(range(7))
    assert parts[1].tolist() == [1, 4]  # DistributedSampler's rank::world assignment
    with pytest.raises(ValueError, match="rank=3"):
        distributed.shard(x, 3, 3)


def test_loss_reduction():
    assert distributed.loss_reduction(fnn.sse) == "sum"
    assert distributed.loss_reduction("mse") == "mean"
    assert distributed.loss_reduction(functools.partial(fnn.mse, reduction="sum")) == "sum"
    assert distributed.loss_reduction(fnn.cross_entropy) == "mean"
    custom = lambda pred, target: (pred - target).abs().sum()
    with pytest.raises(ValueError, match="pass reduction='sum' or reduction='mean'"):
        distributed.loss_reduction(custom)
    assert distributed.loss_reduction(custom, reduction="sum") == "sum"
    with pytest.raises(ValueError, match="got 'none'"):
        distributed.loss_reduction(functools.partial(fnn.mse, reduction="none"))


def test_buckets_by_kind_and_cap():
    f64, f32 = torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float32)
    assert _collectives.plan([f64, f32, None, f64, f32], 1 << 20) == [[0, 3], [1, 4]]
    assert _collectives.plan([f64, f64, f64], 64) == [[0, 1], [2]]  # 32 bytes each, 64 a bucket
    flat = _collectives.pack([f64.view(2, 2)])
    assert flat.data_ptr() != f64.data_ptr()
    assert [
        t.shape for t in _collectives.unpack(torch.arange(6.0), [torch.zeros(2), torch.zeros(1, 4)])
    ] == [
        (2,),
        (1, 4),
    ]


def test_needs_an_initialised_group():
    if dist.is_initialized():
        pytest.skip("a process group is initialised in this process")
    with pytest.raises(RuntimeError, match="init_process_group"):
        distributed.rank_and_world()


@pytest.fixture(scope="module", params=[2, 3], ids=lambda p: f"P{p}")
def fit_runs(request, tmp_path_factory):
    """What each of P ranks got from fit(distributed=True), and from resuming its checkpoint in a
    second launch: (P, one dict per rank)."""
    tmp = tmp_path_factory.mktemp(f"fit{request.param}")
    outs = []
    for mode in ("fit", "resume"):
        for r, (code, err, _) in enumerate(_launch(request.param, mode, tmp)):
            assert code == 0, f"rank {r} failed ({mode}):\n{err[-3000:]}"
        outs.append(
            [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(request.param)]
        )
    return request.param, [{**a, **b} for a, b in zip(*outs)]


def _assert_follows(got, want, name):
    assert_trees_close(got[0], want.losses, 1e-10, f"{name} losses")
    assert_trees_close(got[1], want.params, 1e-10, f"{name} params")


@pytest.mark.parametrize("key", list(CASES))
def test_fit_distributed_follows_the_single_process_fit(fit_runs, key):
    _, outs = fit_runs
    want = _fit(CASES[key], fnn.mlp(SIZES).init(0, dtype=torch.float64))
    for r, out in enumerate(outs):
        _assert_follows(out[key], want, f"rank {r}")
        for a, b in zip(tree_leaves(out[key][1]), tree_leaves(outs[0][key][1])):
            assert torch.equal(a, b), f"rank {r}'s params differ from rank 0's"


def test_fit_distributed_over_a_loader_with_distributed_sampler(fit_runs):
    world, outs = fit_runs
    global_batches = []  # batch t of every rank, together: what one process must train on
    for epoch in range(2):
        loaders = [_sampled(world, r) for r in range(world)]
        for loader in loaders:
            loader.sampler.set_epoch(epoch)
        for parts in zip(*loaders):
            global_batches.append(tuple(torch.cat([p[i] for p in parts]) for i in (0, 1)))
    params = fnn.mlp(SIZES).init(0, dtype=torch.float64)
    want = fnn.fit(params, global_batches, None, fnn.adam(lr=1e-2), model=fnn.mlp(SIZES),
                   loss="mse", epochs=1)  # fmt: skip
    assert len(want.losses) == 2 * len(_sampled(world, 0))
    for r, out in enumerate(outs):
        _assert_follows(out["loader"], want, f"rank {r}")


def test_fit_distributed_resumes_across_a_relaunch(fit_runs):
    _, outs = fit_runs
    for r, out in enumerate(outs):
        uninterrupted = out["mse"][1]
        for a, b in zip(tree_leaves(out["resumed"][1]), tree_leaves(uninterrupted)):
            assert torch.equal(a, b), (
                f"rank {r}: the resumed run differs from the uninterrupted one"
            )
        assert torch.equal(out["resumed"][0], out["mse"][0][4:])


def test_fit_distributed_refuses_compile(fit_runs):
    _, outs = fit_runs
    for out in outs:
        assert out["compile"].startswith("ValueError: distributed=True does not support compile")


def test_fit_distributed_a_failing_rank_makes_the_others_fail(tmp_path):
    results = _launch(3, "fit_fail", tmp_path)
    assert results[1][0] != 0 and "params[0]['bias'] contains 1 NaN" in results[1][1]
    for r in (0, 2):
        code, err, _ = results[r]
        assert code != 0, f"rank {r} exited cleanly although rank 1 failed"
        assert "functional_nn.distributed: broadcast failed on rank" in err, err[-2000:]
