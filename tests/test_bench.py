"""scripts/bench.py: every contender runs and reports, and the ratios follow from the times.

Nothing here asserts a timing: the machine is shared and the figures are noise at these sizes.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
from pathlib import Path

import pytest
import torch

# bench.py imports its sibling bench_cases, as it does when run as `python scripts/bench.py`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench
import bench_cases

TINY = bench_cases.Sizes(n=8, d_in=30, h=12, d_out=3)
NAMES = [c.name for c in bench.CONTENDERS]
# The only n/a cells: the by-hand loop has no Adam, and --no-compile leaves out (b).
NOT_AVAILABLE = {
    ("sgd", "fit(compile=True)"),
    ("adam", "fit(compile=True)"),
    ("adam", "torch by hand"),
}
RTOL = 1e-12  # ratios are one float division of the reported figures


@contextlib.contextmanager
def _one_thread():
    """One intra-op thread, restored after: the figures checked here do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _run(tmp_path, *flags, settings=None) -> tuple[dict, str]:
    """The JSON that main wrote, and what it printed."""
    path, printed = tmp_path / "bench.json", io.StringIO()
    argv = ["--quick", "--steps", "3", "--repeats", "1", "--json", str(path), *flags]
    with _one_thread(), contextlib.redirect_stdout(printed):
        assert bench.main(argv, sizes=TINY, settings=settings) == 0
    return json.loads(path.read_text()), printed.getvalue()


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[dict, str]:
    """One quick run without compilation, shared by the tests that only read it."""
    return _run(tmp_path_factory.mktemp("bench"), "--no-compile")


def _positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_seed_tables_have_every_contender_and_consistent_ratios(quick):
    out, printed = quick
    assert set(out["seed"]) == {"sgd", "adam"}
    for opt, rows in out["seed"].items():
        assert [r["contender"] for r in rows] == NAMES
        us = {r["contender"]: r["us_per_step"] for r in rows}
        for r in rows:
            if (opt, r["contender"]) in NOT_AVAILABLE:
                assert us[r["contender"]] is None and r["note"], r
                continue
            assert _positive(us[r["contender"]]), r
            base, floor = us[bench.BASELINE], us[bench.FLOOR]
            assert r["vs_torch_optim"] == pytest.approx(us[r["contender"]] / base, rel=RTOL)
            assert r["vs_floor"] == pytest.approx(us[r["contender"]] / floor, rel=RTOL)
    assert all(name in printed for name in NAMES) and "left out by --no-compile" in printed


def test_sweep_scales_n_and_h_and_gflops_follow_from_the_flop_count(quick):
    out, _ = quick
    assert [(r["n"], r["h"]) for r in out["sweep"]] == [(TINY.n * 4, TINY.h), (TINY.n, TINY.h * 4)]
    for r in out["sweep"]:
        n, h = r["n"], r["h"]
        flops = 2 * n * TINY.d_in * h * 2 + 2 * n * h * TINY.d_out * 3  # the five matmuls
        assert r["gflop_per_step"] == pytest.approx(flops / 1e9, rel=RTOL)
        assert set(r["us_per_step"]) == set(bench.SWEPT) - {"fit(compile=True)"}
        assert set(r["notes"]) == {"fit(compile=True)"}
        for name, us in r["us_per_step"].items():
            assert _positive(us), (r, name)
            assert r["gflops"][name] == pytest.approx(flops / 1e9 / (us * 1e-6), rel=RTOL)


def test_ensembles_report_per_model_step_times_and_the_speedup(quick):
    out, _ = quick
    rows = out["ensembles"]
    assert [r["k"] for r in rows] == list(bench.QUICK.ks)
    for r in rows:
        us = r["us_per_model_step"]
        assert set(us) == {"fit_ensemble", "sequential fits", "matmul floor"}
        assert all(_positive(t) for t in us.values()), r
        assert r["sequential_timed"] == min(r["k"], bench.QUICK.max_sequential)
        assert r["speedup"] == pytest.approx(us["sequential fits"] / us["fit_ensemble"], rel=RTOL)


def test_update_table_has_every_optimizer_at_every_size_and_consistent_ratios(quick):
    out, printed = quick
    rows = out["updates"]
    assert [(r["size"], r["optimizer"]) for r in rows] == [
        (size, opt) for size in bench.QUICK.update_sizes for opt in bench_cases.UPDATES
    ]
    names = [n for n, _ in bench.UPDATE_CONTENDERS]
    for r in rows:
        us = r["us_per_step"]
        # torch has no fused RMSprop, Adamax, NAdam or RAdam: those say so, the rest all run.
        assert set(us) | set(r["notes"]) == set(names) and set(r["notes"]) <= {"torch.optim fused"}
        assert (r["optimizer"] in ("rmsprop", "adamax", "nadam", "radam")) == bool(r["notes"]), r
        assert r["steps"] == max(
            2, bench.QUICK.update_steps * bench.QUICK.update_sizes[0] // r["size"]
        )
        for name, t in us.items():
            assert _positive(t), (r, name)
            for base in r["vs"]:
                assert r["vs"][base][name] == pytest.approx(t / us[base], rel=RTOL)
            assert r["faults_per_step"][name] >= 0
            assert r["peak_mb"][name] is None or r["peak_mb"][name] >= 0
    assert "the update alone" in printed and "has no {'fused': True}" in printed


def test_update_leaves_sum_to_the_size_in_four_tensors():
    params, grads = bench_cases.update_leaves(1_000_003, "cpu", torch.float32)
    assert [t.numel() for t in params] == [500_001, 250_000, 125_000, 125_002]
    assert [t.shape for t in grads] == [t.shape for t in params]
    assert not any(torch.equal(p, g) for p, g in zip(params, grads))


def test_timed_steps_counts_the_page_faults_and_peak_rss_of_fresh_memory():
    """64 MiB written into fresh pages each step: at least that many minor faults (4 KiB pages)
    and that much peak RSS above the start, where /proc gives them."""
    size = 64 * 2**20

    def step():
        torch.ones(size // 4)  # float32: size bytes, freed at once

    figures = bench_cases.timed_steps(step, 2, torch.device("cpu"))
    assert figures["seconds"] > 0 and figures["faults"] >= size // 4096
    if figures["peak_bytes"] is not None:
        assert figures["peak_bytes"] >= 0.9 * size


def test_measure_takes_the_median_of_each_figure_of_dict_runs():
    samples = iter(
        [{"s": 9.0, "f": 0}, {"s": 1.0, "f": 4}, {"s": 3.0, "f": 2}, {"s": 2.0, "f": None}]
    )
    medians = bench.measure({"a": bench_cases.Prepared(lambda: next(samples))}, repeats=3)
    assert medians == {"a": {"s": 2.0, "f": None}}  # the warm-up's 9 left out; None wins


def test_only_runs_the_parts_asked_for(tmp_path):
    out, _printed = _run(
        tmp_path,
        "--no-compile",
        "--only",
        "updates",
        settings=bench.QUICK._replace(update_sizes=(1_000,)),
    )
    assert "updates" in out and not {"seed", "sweep", "ensembles"} & set(out)
    assert {r["size"] for r in out["updates"]} == {1_000}


def test_json_names_the_machine(quick):
    machine = quick[0]["machine"]
    assert machine["torch"] == torch.__version__ and machine["device"] == "cpu"
    assert machine["torch_threads"] == 1 and machine["cpu"] and machine["date"]


def test_measure_warms_up_rotates_the_order_and_takes_the_median():
    calls, figures = [], {"a": [9.0, 1.0, 5.0, 3.0], "b": [7.0, 2.0, 4.0, 8.0]}

    def runner(name):
        def run():
            calls.append(name)
            return figures[name][sum(c == name for c in calls) - 1]

        return bench_cases.Prepared(run)

    medians = bench.measure({"a": runner("a"), "b": runner("b")}, repeats=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-ups, then rotating rounds
    assert medians == {"a": 3.0, "b": 4.0}  # of the timed runs only, the warm-ups' 9 and 7 left out


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--steps", "0"], "--steps must be >= 1, got 0"),
        (["--repeats", "-1"], "--repeats must be >= 1, got -1"),
        (["--dtype", "float16"], "invalid choice: 'float16'"),
    ],
)
def test_bad_flags_exit_2_with_a_message(flags, message, capsys):
    with pytest.raises(SystemExit) as exit:
        bench.main(flags, sizes=TINY)
    assert exit.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_exits_2(capsys):
    with pytest.raises(SystemExit) as exit:
        bench.main(["--device", "cuda"], sizes=TINY)
    assert exit.value.code == 2 and "no CUDA device" in capsys.readouterr().err


@pytest.mark.slow
def test_compiled_fit_reports_its_steady_state_and_its_compile_time(tmp_path):
    seed_only = bench.QUICK._replace(factors=(), ks=())  # two compilations, not six
    out, _ = _run(tmp_path, settings=seed_only)
    for rows in out["seed"].values():
        (row,) = [r for r in rows if r["contender"] == "fit(compile=True)"]
        assert _positive(row["us_per_step"]) and _positive(row["compile_s"]), row
