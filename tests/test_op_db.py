"""PyTorch's own sample inputs (op_db) for every loss and activation functional_nn has: value equal
to torch.nn.functional's to 1e-12 and input gradient (of a random-weighted sum) to 1e-10, float64.

A sample whose options functional_nn does not take (e.g. torch's legacy size_average, inplace,
a softmax dtype) or whose shapes it rejects by design (losses do not broadcast pred against target)
is recorded with its reason; each op's tally (matched / total) is printed (`pytest -s`). Kinks:
every kink of ours is built to take the branch torch's kernel takes (hardswish at -3 and 3, elu
and selu at 0, relu at 0), so no sample point is excluded: a tie that differed would fail here.
"""

from __future__ import annotations

import functools

import pytest
import torch

from functional_nn import layers, losses
from oracle.gradcheck import rel_error

common = pytest.importorskip(
    "torch.testing._internal.common_methods_invocations",
    reason="op_db needs expecttest (pip install expecttest)",
)

# op name in op_db -> (ours, number of positional args after the input that ours takes alike)
OPS = {
    "nn.functional.relu": (layers.relu, 0),
    "nn.functional.leaky_relu": (layers.leaky_relu, 1),
    "tanh": (layers.tanh, 0),
    "sigmoid": (layers.sigmoid, 0),
    "nn.functional.gelu": (layers.gelu, 0),
    "nn.functional.softplus": (layers.softplus, 2),
    "nn.functional.silu": (layers.silu, 0),
    "nn.functional.mish": (layers.mish, 0),
    "nn.functional.elu": (layers.elu, 1),
    "nn.functional.selu": (layers.selu, 0),
    "nn.functional.hardswish": (layers.hardswish, 0),
    "nn.functional.logsigmoid": (layers.logsigmoid, 0),
    "softmax": (layers.softmax, 1),
    "log_softmax": (layers.log_softmax, 1),
    "nn.functional.mse_loss": (losses.mse, 1),
    "nn.functional.l1_loss": (losses.l1, 1),
    "nn.functional.huber_loss": (losses.huber, 1),
    "nn.functional.smooth_l1_loss": (losses.smooth_l1, 1),
    "nn.functional.cross_entropy": (losses.cross_entropy, 1),
    "nn.functional.nll_loss": (losses.nll, 1),
    "nn.functional.binary_cross_entropy": (losses.binary_cross_entropy, 1),
    "nn.functional.binary_cross_entropy_with_logits": (losses.binary_cross_entropy_with_logits, 1),
    "nn.functional.kl_div": (losses.kl_div, 1),
    "nn.functional.poisson_nll_loss": (losses.poisson_nll, 1),
    "nn.functional.gaussian_nll_loss": (losses.gaussian_nll, 2),
}

VALUE_RTOL, GRAD_RTOL = 1e-12, 1e-10


def _op(name):
    matches = [op for op in common.op_db if op.name == name and op.variant_test_name == ""]
    assert len(matches) == 1, f"{name}: {len(matches)} entries in op_db"
    return matches[0]


def _options(fn):
    base = fn.func if isinstance(fn, functools.partial) else fn
    return set(
        base.__code__.co_varnames[: base.__code__.co_argcount + base.__code__.co_kwonlyargcount]
    )


def _compare(name, fn, positional, sample, seed):
    """None when the sample matches; else the reason it is not compared. Asserts on a mismatch."""
    unknown = set(sample.kwargs) - _options(fn)
    if unknown:
        return f"options {sorted(unknown)} not supported"
    if len(sample.args) > positional:
        return f"{len(sample.args)} positional args, ours takes {positional}"
    x = sample.input
    if not isinstance(x, torch.Tensor) or not x.requires_grad:
        return "input without gradient"
    try:
        ours = fn(x, *sample.args, **sample.kwargs)
    except ValueError as error:
        return f"rejected by design: {str(error)[:80]}"
    ref = _op(name).op(x, *sample.args, **sample.kwargs)
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} vs {tuple(ref.shape)}"
    value_error = rel_error(ours.detach().numpy(), ref.detach().numpy())
    assert value_error <= VALUE_RTOL, f"{name} {sample}: value error {value_error:.2e}"
    g = torch.Generator().manual_seed(seed)
    weights = torch.randn(ref.shape, dtype=ref.dtype, generator=g)
    (grad,) = torch.autograd.grad((ours * weights).sum(), x)
    (ref_grad,) = torch.autograd.grad((ref * weights).sum(), x)
    grad_error = rel_error(grad.numpy(), ref_grad.numpy())
    assert grad_error <= GRAD_RTOL, f"{name} {sample}: gradient error {grad_error:.2e}"
    worst = _compare.worst.get(name, (0.0, 0.0))
    _compare.worst[name] = (max(worst[0], value_error), max(worst[1], grad_error))
    return None


_compare.worst = {}


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_db_samples_match_torch(name):
    fn, positional = OPS[name]
    samples = list(_op(name).sample_inputs("cpu", torch.float64, requires_grad=True))
    skipped = {}
    for i, sample in enumerate(samples):
        reason = _compare(name, fn, positional, sample, seed=i)
        if reason is not None:
            skipped[reason] = skipped.get(reason, 0) + 1
    matched = len(samples) - sum(skipped.values())
    value_error, grad_error = _compare.worst.get(name, (0.0, 0.0))
    print(
        f"\nop_db {name}: {matched}/{len(samples)} matched; worst value {value_error:.1e}, "
        f"gradient {grad_error:.1e}; not compared: {skipped or 'none'}"
    )
    assert matched > 0, f"{name}: no sample compared ({skipped})"
