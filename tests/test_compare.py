"""scripts/compare.py: every stage agrees with the oracle; the script fails when one does not."""

from __future__ import annotations

import importlib.util
import json
import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("compare", ROOT / "scripts" / "compare.py")
compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare)

STEPS = 5  # enough for Adam's bias corrections and SGD's decay to show; cheap enough to run often
ROWS = {
    ("numpy by hand (oracle)", "sgd"), ("torch by hand", "sgd"), ("torch autograd", "sgd"),
    ("torch.nn", "sgd"), ("torch.optim", "sgd"), ("functional_nn", "sgd"),
    ("numpy by hand (oracle)", "adam"), ("torch.optim", "adam"), ("nn.Module", "adam"),
    ("functional_nn", "adam"),
}


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the figures checked here do not depend on it, and on a busy machine
    torch's spinning worker threads make these small matmuls many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(tmp_path, *flags, stages=compare.STAGES):
    """main's exit code and the JSON it wrote."""
    path = tmp_path / "out.json"
    code = compare.main(["--steps", str(STEPS), "--json", str(path), *flags], stages=stages)
    return code, json.loads(path.read_text())


def _stage(name: str, optimizer: str):
    (stage,) = [s for s in compare.STAGES if (s.name, s.optimizer) == (name, optimizer)]
    return stage


def _perturbed(stage, what: str):
    """The stage with its losses or its final weights scaled by 1 + 1e-6 after it ran."""

    def run(*args):
        losses, weights, seconds = stage.run(*args)
        if what == "losses":
            losses = losses * (1 + 1e-6)
        else:
            weights = [{"weight": w["weight"] * (1 + 1e-6)} for w in weights]
        return losses, weights, seconds

    return stage._replace(run=run)


# (dtype, tolerance): float64 is rounding only (measured <= 2e-15); float32 measured <= 4e-6 over
# 20 steps (Adam's weights, seeds 0-2), less over these 5, so 1e-4.
@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-9), ("float32", 1e-4)])
def test_every_stage_agrees_with_the_oracle(tmp_path, dtype, rtol):
    code, out = _run(tmp_path, "--dtype", dtype)
    assert code == 0 and out["ok"]
    assert {(r["stage"], r["optimizer"]) for r in out["rows"]} == ROWS
    first = out["rows"][0]["first_loss"]
    for r in out["rows"]:
        losses = np.array(r["losses"])
        assert losses.shape == (STEPS,) and np.all(np.isfinite(losses)), r["stage"]
        # same data and initial weights everywhere: the same first loss, then training lowers it
        assert abs(r["first_loss"] - first) <= rtol * first, r["stage"]
        assert r["final_loss"] < r["first_loss"], r["stage"]
        assert r["curve_rel_diff"] <= rtol and r["weights_rel_diff"] <= rtol, r
        assert r["agrees"] and r["us_per_step"] > 0
    assert [r["stage"] for r in out["rows"] if r["gates"]] == ["functional_nn", "functional_nn"]


@pytest.mark.parametrize("what", ["losses", "weights"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_functional_row_off_by_1e_6_fails_the_check(tmp_path, capsys, what, optimizer):
    functional = _stage("functional_nn", optimizer)
    code, out = _run(tmp_path, stages=[_perturbed(functional, what)])
    assert code == 1 and not out["ok"]
    assert not out["rows"][0]["agrees"]
    assert f"FAIL: functional_nn ({optimizer})" in capsys.readouterr().out


def test_a_reported_row_that_differs_does_not_gate(tmp_path, capsys):
    stages = [_perturbed(_stage("torch by hand", "sgd"), "losses"), _stage("functional_nn", "sgd")]
    code, out = _run(tmp_path, stages=stages)
    assert code == 0 and out["ok"]
    by_hand, functional = out["rows"]
    assert not by_hand["agrees"] and by_hand["curve_rel_diff"] > 1e-7
    assert functional["agrees"]
    assert "DIFFERS" in capsys.readouterr().out


def test_non_finite_results_disagree():
    reference = np.array([3.0, 2.0, 1.0])
    assert compare.difference(reference.copy(), reference) == 0.0
    for bad in (np.nan, np.inf):
        assert compare.difference(np.array([3.0, bad, 1.0]), reference) == float("inf")


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--steps", "0"], r"--steps must be >= 1, got 0"),
        (["--dtype", "float16"], r"invalid choice: 'float16'"),
        (["--device", "tpu"], r"invalid choice: 'tpu'"),
    ],
)
def test_bad_flags_exit_2_with_a_message(capsys, flags, match):
    with pytest.raises(SystemExit) as exit_info:
        compare.main(flags)
    assert exit_info.value.code == 2
    assert re.search(match, capsys.readouterr().err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_gpu_exits_2_before_any_work(capsys):
    with pytest.raises(SystemExit) as exit_info:
        compare.main(["--device", "cuda"])
    assert exit_info.value.code == 2
    assert "no CUDA device is available" in capsys.readouterr().err


def test_plot_without_matplotlib_exits_2_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    plot = tmp_path / "curves.png"
    with pytest.raises(SystemExit) as exit_info:
        compare.main(["--plot", str(plot)])
    assert exit_info.value.code == 2
    assert "pip install -e '.[plot]'" in capsys.readouterr().err
    assert not plot.exists()


def test_plot_with_matplotlib_writes_the_curves(tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "curves.png"
    assert compare.main(["--steps", "3", "--plot", str(plot)]) == 0
    assert plot.stat().st_size > 0


def test_the_script_as_a_command_exits_with_mains_code(capsys, monkeypatch):
    # runpy runs the file as __main__ (its sys.exit(main()) line) without a new interpreter
    monkeypatch.setattr(sys, "argv", ["compare.py", "--steps", "2"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "scripts" / "compare.py"), run_name="__main__")
    assert exit_info.value.code == 0
    assert "OK: every functional_nn row agrees with the oracle." in capsys.readouterr().out
