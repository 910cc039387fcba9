"""scripts/compare.py: every stage agrees with the oracle; the script fails when one does not."""

from __future__ import annotations

import json
import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scripts import compare, stages, workloads

ROOT = Path(__file__).resolve().parents[1]

STEPS = 5  # enough for Adam's bias corrections and SGD's decay to show; cheap enough to run often
ROWS = {  # (workload, stage, optimizer); each optimizer's oracle row is always there
    "regression": {
        ("numpy by hand (oracle)", "sgd"),
        ("torch by hand", "sgd"),
        ("torch autograd", "sgd"),
        ("torch.nn", "sgd"),
        ("torch.optim", "sgd"),
        ("functional_nn", "sgd"),
        ("numpy by hand (oracle)", "adam"),
        ("torch.optim", "adam"),
        ("nn.Module", "adam"),
        ("functional_nn", "adam"),
    },
    "regression + bias": {
        ("numpy by hand (oracle)", "sgd"),
        ("torch by hand", "sgd"),
        ("torch.nn", "sgd"),
        ("functional_nn", "sgd"),
        ("numpy by hand (oracle)", "adam"),
        ("torch.optim", "adam"),
        ("functional_nn", "adam"),
    },
    "classification": {
        ("numpy by hand (oracle)", "adam"),
        ("torch.optim", "adam"),
        ("functional_nn", "adam"),
    },
    "batch norm + dropout": {
        ("numpy by hand (oracle)", "sgd"),
        ("torch.optim", "sgd"),
        ("functional_nn", "sgd"),
        ("numpy by hand (oracle)", "adam"),
        ("torch.optim", "adam"),
        ("functional_nn", "adam"),
    },
}
WORKLOADS = {w.name: w for w in workloads.WORKLOADS}


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the figures checked here do not depend on it, and on a busy machine
    torch's spinning worker threads make these small matmuls many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(tmp_path, *flags, chosen=workloads.WORKLOADS):
    """main's exit code and the JSON it wrote, running the `chosen` workloads."""
    path = tmp_path / "out.json"
    code = compare.main(["--steps", str(STEPS), "--json", str(path), *flags], workloads=chosen)
    return code, json.loads(path.read_text())


def _only(workload: str, *picks):
    """The workload with just these of its stages, given as (name, optimizer) or as Stages."""
    w = WORKLOADS[workload]
    picked = [s if isinstance(s, workloads.Stage) else _stage(w, *s) for s in picks]
    return [w._replace(stages=picked)]


def _stage(workload, name: str, optimizer: str):
    (stage,) = [s for s in workload.stages if (s.name, s.optimizer) == (name, optimizer)]
    return stage


def _perturbed(stage, what: str):
    """The stage with its losses, its final weights, biases or running statistics scaled by
    1 + 1e-6."""

    def run(*args):
        result = stage.run(*args)
        if what == "losses":
            return result._replace(losses=result.losses * (1 + 1e-6))
        if what == "state":
            state = {k: v * (1 + 1e-6) for k, v in result.model_state.items()}
            return result._replace(model_state=state)
        key = {"weights": "weight", "biases": "bias"}[what]
        params = [
            {k: v * (1 + 1e-6) if k == key else v for k, v in layer.items()}
            for layer in result.params
        ]
        return result._replace(params=params)

    return stage._replace(run=run)


# float64 is rounding only: measured <= 1.4e-13 (classification's first weights), seeds 0-2.
# float32 measured over 20 steps, seeds 0-2: regression <= 3.5e-6, classification <= 4.1e-5 (Adam
# moves a weight by about lr whatever the size of its gradient, so a small gradient's rounding
# error becomes a step's, and torch's init makes the classifier's weights ~30 times smaller).
RTOL = {
    "float64": dict.fromkeys(ROWS, 1e-9),
    "float32": {
        "regression": 1e-4,
        "regression + bias": 1e-4,
        "classification": 1e-3,
        "batch norm + dropout": 1e-4,
    },
}


@pytest.mark.parametrize("dtype", sorted(RTOL))
def test_every_stage_agrees_with_the_oracle(tmp_path, dtype):
    code, out = _run(tmp_path, "--dtype", dtype)
    assert code == 0 and out["ok"]
    assert list(out["config"]["workloads"]) == list(ROWS)
    for workload, expected in ROWS.items():
        rows, rtol = [r for r in out["rows"] if r["workload"] == workload], RTOL[dtype][workload]
        assert {(r["stage"], r["optimizer"]) for r in rows} == expected
        first = rows[0]["first_loss"]
        for r in rows:
            losses = np.array(r["losses"])
            assert losses.shape == (STEPS,) and np.all(np.isfinite(losses)), r["stage"]
            # same data and initial params within a workload: the same first loss, then lower
            assert abs(r["first_loss"] - first) <= rtol * first, r["stage"]
            assert r["final_loss"] < r["first_loss"], r["stage"]
            assert r["curve_rel_diff"] <= rtol and r["params_rel_diff"] <= rtol, r
            assert r["agrees"] and r["us_per_step"] > 0
        assert [r["stage"] for r in rows if r["gates"]] == ["functional_nn"] * len(
            {r["optimizer"] for r in rows}
        )


def test_classification_reports_the_training_accuracy(tmp_path):
    problem = workloads.classification(0)
    assert compare.accuracy(problem.params, problem) <= 0.3  # the initial params: near chance, 0.1
    # 40 steps fit the 64 labels in float64 (measured: 61% right after 10 steps, 98% after 20)
    path = tmp_path / "out.json"
    code = compare.main(
        ["--steps", "40", "--json", str(path)],
        workloads=_only("classification", ("torch.optim", "adam"), ("functional_nn", "adam")),
    )
    rows = json.loads(path.read_text())["rows"]
    assert code == 0 and [r["accuracy"] for r in rows] == [1.0, 1.0, 1.0]
    code, out = _run(tmp_path, chosen=_only("regression", ("functional_nn", "sgd")))
    assert {r["accuracy"] for r in out["rows"]} == {None}


CASES = [  # (workload, optimizer, what is perturbed)
    *[("regression", opt, what) for opt in ("sgd", "adam") for what in ("losses", "weights")],
    *[
        ("regression + bias", opt, what)
        for opt in ("sgd", "adam")
        for what in ("losses", "weights", "biases")
    ],
    *[("classification", "adam", what) for what in ("losses", "weights", "biases")],
    *[
        ("batch norm + dropout", opt, what)
        for opt in ("sgd", "adam")
        for what in ("losses", "weights", "biases", "state")
    ],
]


@pytest.mark.parametrize("workload, optimizer, what", CASES)
def test_a_functional_row_off_by_1e_6_fails_the_check(tmp_path, capsys, workload, optimizer, what):
    functional = _stage(WORKLOADS[workload], "functional_nn", optimizer)
    code, out = _run(tmp_path, chosen=_only(workload, _perturbed(functional, what)))
    assert code == 1 and not out["ok"]
    oracle_row, functional_row = out["rows"]
    assert oracle_row["agrees"] and not functional_row["agrees"]
    assert f"FAIL: functional_nn ({optimizer}, {workload})" in capsys.readouterr().out


def test_a_reported_row_that_differs_does_not_gate(tmp_path, capsys):
    by_hand = _stage(WORKLOADS["regression + bias"], "torch by hand", "sgd")
    chosen = _only("regression + bias", _perturbed(by_hand, "biases"), ("functional_nn", "sgd"))
    code, out = _run(tmp_path, chosen=chosen)
    assert code == 0 and out["ok"]
    _, by_hand, functional = out["rows"]
    assert not by_hand["agrees"] and by_hand["params_rel_diff"] > 1e-7
    assert functional["agrees"]
    assert "DIFFERS" in capsys.readouterr().out


def test_the_problems_share_their_data():
    plain, with_bias, classes = (
        workloads.regression(3),
        workloads.regression(3, bias=True),
        workloads.classification(3),
    )
    for a, b in [(plain.x, with_bias.x), (plain.y, with_bias.y), (plain.x, classes.x)]:
        np.testing.assert_array_equal(a, b)
    for layer, biased in zip(plain.params, with_bias.params, strict=True):
        assert "bias" not in layer and biased["bias"].shape == biased["weight"].shape[:1]
        np.testing.assert_array_equal(layer["weight"], biased["weight"])
    assert classes.y.shape == (workloads.N,) and classes.y.dtype == np.int64
    # a learnable rule that uses many of the classes, not a constant
    assert len(np.unique(classes.y)) >= workloads.D_OUT // 2
    assert classes.y.min() >= 0 and classes.y.max() < workloads.D_OUT
    assert not np.array_equal(workloads.regression(4).x, plain.x)


def test_accuracy_counts_the_largest_logit():
    params = [{"weight": np.eye(3), "bias": np.zeros(3)}]  # logits = x
    x = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 1.0], [0.0, 1.0, 3.0]])
    problem = stages.Problem(x, np.array([0, 1, 1]), params, "cross_entropy", {})
    assert compare.accuracy(params, problem) == pytest.approx(2 / 3, abs=1e-12)
    assert compare.accuracy(params, problem._replace(y=x)) is None


@pytest.mark.parametrize(
    "run, optimizer, problem, match",
    [
        (
            stages.torch_by_hand,
            "sgd",
            workloads.classification,
            r"torch by hand: its backward is derived for loss 'sse' only, got 'cross_entropy'",
        ),
        (stages.torch_autograd, "sgd", workloads.classification, r"for loss 'sse' only"),
        (stages.torch_by_hand, "adam", workloads.regression, r"SGD by hand, got optimizer 'adam'"),
        (stages.torch_nn, "adam", workloads.regression, r"torch.nn updates the params by SGD"),
    ],
)
def test_the_by_hand_stages_reject_what_they_do_not_implement(run, optimizer, problem, match):
    with pytest.raises(ValueError, match=match):
        run(optimizer, problem(0), 1, torch.device("cpu"), torch.float64)


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


def test_batch_norm_dropout_rows_agree_in_running_statistics_and_masks(tmp_path):
    code, out = _run(tmp_path, chosen=[WORKLOADS["batch norm + dropout"]])
    assert code == 0
    for r in out["rows"]:
        # float64: rounding only, measured <= 2e-15 over 20 steps, seed 0
        assert r["state_rel_diff"] is not None and r["state_rel_diff"] <= 1e-12, r["stage"]
        assert r["params_rel_diff"] <= 1e-12 and r["curve_rel_diff"] <= 1e-12, r["stage"]
    _, plain = _run(tmp_path, chosen=_only("regression", ("functional_nn", "sgd")))
    assert {r["state_rel_diff"] for r in plain["rows"]} == {None}  # no state, no column


def test_batch_norm_dropout_with_other_masks_fails_the_check(tmp_path):
    # functional_nn trained with another key seed draws other masks: the check must notice
    w = WORKLOADS["batch norm + dropout"]
    functional = _stage(w, "functional_nn", "sgd")

    def other_seed(optimizer, problem, *rest):
        p, seed = problem.dropout
        return functional.run(optimizer, problem._replace(dropout=(p, seed + 1)), *rest)

    code, out = _run(tmp_path, chosen=_only(w.name, functional._replace(run=other_seed)))
    assert code == 1 and not out["rows"][1]["agrees"]
    assert out["rows"][1]["params_rel_diff"] > 1e-3


def test_the_batch_norm_problem_shares_the_regression_data():
    plain, bn = workloads.regression(2), workloads.batch_norm_dropout(2)
    np.testing.assert_array_equal(plain.x, bn.x)
    np.testing.assert_array_equal(plain.y, bn.y)
    assert bn.dropout == (workloads.DROPOUT_P, 2)
    assert [sorted(layer) for layer in bn.params] == [
        ["weight"],
        ["bias", "weight"],
        [],
        [],
        ["bias", "weight"],
    ]
