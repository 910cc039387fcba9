"""The one tree-aware comparison the tests share, and conversions between torch and numpy trees."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from functional_nn._pytree import assert_same_structure, tree_leaves, tree_map
from oracle.gradcheck import rel_error


def to_numpy(tree):
    """A tree of float64 numpy arrays from a tree of tensors (any device)."""
    return tree_map(lambda t: t.detach().cpu().double().numpy(), tree)


def to_torch(tree, dtype=torch.float64, device="cpu"):
    """A tree of tensors from a tree of numpy arrays (copies)."""
    return tree_map(lambda a: torch.tensor(np.asarray(a), dtype=dtype, device=device), tree)


def assert_trees_close(actual, expected, rtol: float, name: str = "actual") -> float:
    """Structure first, then every leaf: rel_error(actual, expected) <= rtol.

    Leaves may be tensors or numpy arrays; numpy trees are compared against the tensor tree's
    structure. Returns the worst relative error, so a test can report it.
    """
    actual_np, expected_np = _as_numpy(actual), _as_numpy(expected)
    assert_same_structure(
        tree_map(torch.as_tensor, actual_np),
        tree_map(torch.as_tensor, expected_np),
        name,
        "expected",
    )
    worst = 0.0
    for i, (a, e) in enumerate(zip(tree_leaves(actual_np), tree_leaves(expected_np))):
        err = rel_error(a, e)
        assert err <= rtol, (
            f"{name} leaf {i} (shape {np.shape(a)}): relative error {err:.3e} > {rtol:.1e}"
        )
        worst = max(worst, err)
    return worst


def _as_numpy(tree):
    return tree_map(
        lambda t: (
            t.detach().cpu().double().numpy()
            if isinstance(t, torch.Tensor)
            else np.asarray(t, dtype=np.float64)
        ),
        tree,
    )


@contextlib.contextmanager
def default_dtype(dtype):
    """torch.optim keeps step counts and scalar state (NAdam's momentum product, ASGD's eta and
    mu) in the default dtype; ours follows it, so both run under `dtype`."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)
