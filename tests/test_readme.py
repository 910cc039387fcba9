"""README.md's python blocks run as written: each on its own, in a fresh interpreter."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

import functional_nn as fnn

ROOT = pathlib.Path(__file__).resolve().parent.parent
BLOCKS = re.findall(r"^```python\n(.*?)^```$", (ROOT / "README.md").read_text(), re.S | re.M)


def test_the_readme_has_its_examples():
    assert len(BLOCKS) >= 4  # the seed network by hand, fit's options, an ensemble, compiled


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(b, id=f"block{i}", marks=[pytest.mark.slow] if "compile=True" in b else [])
        for i, b in enumerate(BLOCKS)
    ],
)
def test_a_readme_block_runs_on_its_own(block, tmp_path):
    # a fresh process: no import, name or torch setting leaks from another block or the tests;
    # cwd is a scratch directory, since a block may write files (a checkpoint)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", block],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if "init_process_group" in block and _gloo_teardown_abort(done):
        # torch's gloo can abort the process at interpreter exit, after destroy_process_group
        # (seen once in CI, torch 2.14.1): the block's work must be done and saved by then,
        # 64 rows in batches of 16 for 5 epochs
        saved = fnn.checkpoint.load(tmp_path / "run.pt")
        assert saved.meta["steps"] == 64 // 16 * 5, saved.meta
        return
    assert done.returncode == 0, f"README block failed:\n{block}\n{done.stderr}"
    if "log_every=" in block:  # a progress line, so log_every is within the steps the block runs
        assert "steps/s" in done.stderr, done.stderr


def _gloo_teardown_abort(done: subprocess.CompletedProcess) -> bool:
    """Whether the process was aborted by C++'s std::terminate at exit, and by nothing else."""
    return (
        done.returncode == -6
        and done.stderr.strip() == "terminate called without an active exception"
    )
