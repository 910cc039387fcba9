"""The in-place fast path of the updates (optim/_foreach.py's Fresh lists): how many full-size
tensors a step allocates, and the out-of-place fallback wherever autograd records.

Purity (no caller tensor written) and agreement with torch.optim are in test_optim_state.py and
test_optim.py; they run this path too.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from functional_nn import optim
from functional_nn._pytree import clone, tree_leaves
from functional_nn.optim import _foreach
from tests.tables import SHAPES, mlp_tree


class ForeachCalls(TorchDispatchMode):
    """Records the names of the multi-tensor ops that run."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name.startswith("_foreach_"):
            self.names.append(name)
        return func(*args, **(kwargs or {}))


# The allocating multi-tensor ops of one update + apply_updates, each a fresh full-size list:
# what must be new (the state's moments, the params) and the temporaries named beside each. The
# transforms after the direction (AdamW's decay, the lr scale) write into the direction in place.
ALLOCATIONS = {
    "sgd": (lambda: optim.sgd(0.1), 2),  # the updates (-lr g), the params
    "momentum": (lambda: optim.sgd(0.1, momentum=0.9), 3),  # + the buffer (kept, so not reused)
    "rmsprop": (lambda: optim.rmsprop(0.1), 3),  # v, sqrt(v) (becomes the direction), params
    "adam": (lambda: optim.adam(0.1), 4),  # m, v, the denominator (the direction), params
    "adamw": (lambda: optim.adamw(0.1), 4),  # as adam: the decay goes into the direction
    "adagrad": (lambda: optim.adagrad(0.1), 3),  # s, sqrt(s) (the direction), params
    "adamax": (lambda: optim.adamax(0.1), 5),  # m, u, |g| + eps, m / u, params
    "nadam": (lambda: optim.nadam(0.1), 6),  # m, v, v / bc2 (the denominator), two parts, params
    "radam": (lambda: optim.radam(0.1), 4),  # m, v, sqrt(v) (the direction), params
}


def _problem(dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    draw = lambda: mlp_tree([torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES])
    return draw(), draw()


@pytest.mark.parametrize("name", ALLOCATIONS)
def test_a_step_allocates_only_what_it_returns_and_its_named_temporaries(name):
    make, expected = ALLOCATIONS[name]
    opt = make()
    params, g = _problem()
    state = opt.update(g, opt.init(params), params)[1]  # past the first step's special cases
    with ForeachCalls() as calls:
        updates, _ = opt.update(g, state, params)
        optim.apply_updates(params, updates)
    allocating = [n for n in calls.names if not n.endswith("_") and n != "_foreach_norm"]
    assert len(allocating) == expected, calls.names
    # SGD's buffer is kept in the state and its updates must be new: nothing to reuse.
    assert any(n.endswith("_") for n in calls.names) or name in ("sgd", "momentum"), "none in place"


@pytest.mark.parametrize("name", ALLOCATIONS)
def test_grads_that_require_grad_take_the_out_of_place_path_and_differentiate(name):
    """Differentiating through an update with respect to the grads (as unrolled optimisation
    does): an in-place write would clobber a tensor autograd saved (sqrt's result), and backward
    would raise. The out-of-place fallback gives what a detached run gives, and a gradient equal
    to torch.func.grad's of the same update (which takes the per-tensor path)."""
    make, _ = ALLOCATIONS[name]
    opt = make()
    params, detached = _problem()
    state = opt.update(detached, opt.init(params), params)[1]
    g = [{k: v.clone().requires_grad_(True) for k, v in layer.items()} for layer in detached]
    before = clone((params, g, state))
    updates, _ = opt.update(g, state, params)
    total = sum((u * u).sum() for u in tree_leaves(updates))
    total.backward()
    for a, b in zip(tree_leaves(before), tree_leaves((params, g, state))):
        assert torch.equal(a, b)
    reference, _ = opt.update(detached, state, params)
    assert all(
        torch.equal(a, b.detach()) for a, b in zip(tree_leaves(reference), tree_leaves(updates))
    )

    def squared(grads):
        return sum((u * u).sum() for u in tree_leaves(opt.update(grads, state, params)[0]))

    expected = torch.func.grad(squared)(detached)
    for got, want in zip(tree_leaves(g), tree_leaves(expected)):
        torch.testing.assert_close(got.grad, want, rtol=1e-10, atol=1e-12)


def test_a_tensor_lr_that_requires_grad_gets_its_hypergradient():
    """The learning rate multiplies the updates in place when nothing records; with an lr that
    requires grad it must not: first Adam step, p' = p - lr g / (|g| + eps), so
    d sum(p') / d lr = -sum(g / (|g| + eps))."""
    params, g = _problem()
    lr = torch.tensor(1e-2, dtype=torch.float64, requires_grad=True)
    opt = optim.adam(lr)
    updates, _ = opt.update(g, opt.init(params), params)
    sum(p.sum() for p in tree_leaves(optim.apply_updates(params, updates))).backward()
    expected = -sum((t / (t.abs() + 1e-8)).sum() for t in tree_leaves(g))
    assert float(lr.grad) == pytest.approx(float(expected), rel=1e-12)


def test_only_fresh_lists_are_written():
    """The consuming ops write a Fresh list's tensors, and nothing else: a plain list (the
    caller's grads, params, state) gets a new result."""
    plain = [torch.ones(3), torch.ones(2)]
    fresh = _foreach.mul(plain, 1.0)
    assert isinstance(fresh, _foreach.Fresh)
    out = _foreach.mul_(plain, 2.0)
    assert all(torch.equal(t, torch.ones_like(t)) for t in plain)
    assert all(o.data_ptr() != p.data_ptr() for o, p in zip(out, plain))
    pointers = [t.data_ptr() for t in fresh]
    out = _foreach.add_scalar_(_foreach.mul_(fresh, 2.0), 1.0)
    assert out is fresh and [t.data_ptr() for t in out] == pointers
    assert all(torch.equal(t, torch.full_like(t, 3.0)) for t in out)


def test_step_factors_are_floats_in_eager_cpu_code_and_tensors_where_traced():
    count = torch.tensor(3)
    assert _foreach.value(count) == 3.0 and isinstance(_foreach.value(count), float)
    batched = torch.func.vmap(lambda c: _foreach.value(c) * 1.0)(torch.tensor([1, 2]))
    assert batched.dtype == torch.float64 and batched.tolist() == [1.0, 2.0]
    assert (
        _foreach.select(torch.tensor(True), 1.0, 2.0).item() == 1.0
        and _foreach.select(False, 1.0, 2.0) == 2.0
    )
