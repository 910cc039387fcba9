"""Shared fixtures: the device axis every numeric test runs on."""

import os

import pytest
import torch


def pytest_configure(config):
    """Share the cores among pytest-xdist workers.

    Each worker is a process with torch's default of one intra-op thread per core, so `-n N` runs
    N times too many threads; their spinning slowed the float64 training tests more than tenfold on
    a busy 2-core machine.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, torch.get_num_threads() // workers))


DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(
            not torch.cuda.is_available(), reason="no CUDA device on this machine"
        ),
    ),
]


@pytest.fixture(params=DEVICES)
def device(request):
    """ "cpu", and "cuda" where a GPU is present. TF32 is off so float32 matmuls are IEEE."""
    if request.param == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return torch.device(request.param)
