"""PyTorch's own optimizer test inputs (`optim_db`) against functional_nn's optimizers.

For every OptimizerInfo whose torch class has an equivalent `functional_nn.optim.<lowercase name>`,
every config of its `optim_inputs_func` (device cpu) must follow torch.optim's trajectory on a fixed
stream of seeded gradients, and every ErrorOptimizerInput about hyper-parameters must raise the
same exception type when our optimizer is built. Nothing is dropped silently: a config we cannot
run is skipped with its reason, and `test_tally` accounts for every config.
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch

from functional_nn import apply_updates, optim
from oracle.gradcheck import rel_error
from tests.helpers import assert_trees_close, default_dtype

pytest.importorskip("expecttest", reason="torch's optim_db imports expecttest (the test extra)")
from torch.testing._internal.common_optimizers import OptimizerErrorEnum, optim_db

STEPS = 20
RTOL = {torch.float64: 1e-11, torch.float32: 2e-5}
# LBFGS's step is up to 20 inner iterations with a line search: one float32 rounding apart, two
# runs branch apart (torch against itself with another op order does the same); float64 stays
# within 1e-15 of torch, so only float32 is looser, for this class alone.
RTOL_CLASS = {"LBFGS": {torch.float32: 1e-4}}
# torch.optim's implementation switches: one implementation here, so they are accepted and ignored.
IMPLEMENTATION_FLAGS = ("foreach", "fused", "capturable", "differentiable")
# Classes functional_nn does not have, and why.
DECLINED = {
    "SparseAdam": "no dense equivalent: torch.func's gradients are dense, so an absent entry "
    "cannot be told from a present zero (see functional_nn/optim/__init__.py)"
}
# LBFGS re-evaluates the loss in its line search: a fixed gradient stream cannot drive it, so
# both sides step on a fixed least-squares loss instead (torch's closure, our value_fn), for a
# few steps (its 20 inner iterations a step amplify rounding quickly).
NEEDS_CLOSURE = {"LBFGS": 2}
SHAPES = {"weight": (5, 4), "bias": (5,)}
SHAPES_2D = {"Muon": {"weight": (5, 4), "proj": (3, 5)}}  # Muon takes 2-d params only


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def ours(torch_cls: type):
    """functional_nn's optimizer factory for a torch.optim class, or None (e.g. SGD -> sgd,
    SparseAdam -> sparseadam or sparse_adam)."""
    for name in dict.fromkeys([torch_cls.__name__.lower(), _snake(torch_cls.__name__)]):
        factory = getattr(optim, name, None)
        if callable(factory):
            return factory
    return None


def skip_reason(info) -> str | None:
    """Why a whole OptimizerInfo is not run here, or None."""
    name = info.optim_cls.__name__
    if name in DECLINED:
        return DECLINED[name]
    if ours(info.optim_cls) is None:
        return f"no functional_nn.optim.{name.lower()} yet"
    return None


def configs(info, listing="cpu"):
    """The OptimizerInputs of `info` (a fresh call: kwargs hold tensors, e.g. lr): those listed for
    cpu, or with listing "cuda" those listed for cuda only (capturable ones, tensor betas), which
    run here on cpu too, their implementation flags ignored by both sides."""
    if listing == "cpu":
        return info.optim_inputs_func(device="cpu", dtype=None)
    cpu = {oi.desc for oi in info.optim_inputs_func(device="cpu", dtype=None)}
    return [oi for oi in info.optim_inputs_func(device="cuda", dtype=None) if oi.desc not in cpu]


def hyper_errors(info):
    """(error input, skip reason or None) for each ErrorOptimizerInput of `info` on cpu."""
    out = []
    for e in info.optim_error_inputs_func(device="cpu", dtype=torch.float64):
        inp = e.optimizer_error_input
        flags = sorted(set(inp.kwargs) & set(IMPLEMENTATION_FLAGS))
        if e.error_on != OptimizerErrorEnum.CONSTRUCTION_ERROR:
            reason = "raised by step(), not at construction"
        elif issubclass(e.error_type, Warning):
            reason = f"a {e.error_type.__name__}, not an error"
        elif not inp.kwargs:
            reason = "about the params argument (torch's param list), not a hyper-parameter"
        elif flags:
            reason = f"about implementation flag(s) {flags}, which are accepted and ignored"
        else:
            reason = None
        out.append((e, reason))
    return out


LISTINGS = ("cpu", "cuda")
CONFIGS = [
    pytest.param(info, listing, i, id=f"{info.optim_cls.__name__}-{listing}-{i}-{oi.desc}")
    for listing in LISTINGS
    for info in optim_db
    for i, oi in enumerate(configs(info, listing))
]
ERRORS = [
    pytest.param(info, i, id=f"{info.optim_cls.__name__}-{i}-{e.optimizer_error_input.desc}")
    for info in optim_db
    for i, (e, _) in enumerate(hyper_errors(info))
]


def stream(info, dtype, seed=0):
    """(params0, [grads_1 .. grads_STEPS]): dicts of seeded normal tensors in `dtype`."""
    gen = torch.Generator().manual_seed(seed)
    shapes = SHAPES_2D.get(info.optim_cls.__name__, SHAPES)
    draw = lambda: {
        k: torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for k, s in shapes.items()
    }
    return draw(), [draw() for _ in range(STEPS)]


def least_squares(params, maximize=False, seed=1):
    """A fixed loss of a params dict: 0.5 * sum_k ||W_k vec(p_k) - b_k||^2, seeded W_k, b_k;
    negated for a config that maximizes (it has a maximum then)."""
    gen = torch.Generator().manual_seed(seed)
    terms = []
    for k, p in params.items():
        w = torch.randn(4 * p.numel(), p.numel(), generator=gen, dtype=torch.float64).to(p.dtype)
        b = torch.randn(4 * p.numel(), generator=gen, dtype=torch.float64).to(p.dtype)
        terms.append((k, w, b))
    sign = -1.0 if maximize else 1.0
    return lambda ps: (
        sign * sum(0.5 * ((w @ ps[k].reshape(-1) - b) ** 2).sum() for k, w, b in terms)
    )


def _clone(value):
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_clone(v) for v in value)
    return value


def run_ours(info, kwargs, groups, params, grads):
    """Our trajectory: one optimizer per param group (torch's per-group state), each over its
    group's keys with the group's kwargs over the config's. With a closure (NEEDS_CLOSURE), the
    grads and value_fn come from least_squares, whose sum over groups is the loss."""
    factory, trajectory, opts = ours(info.optim_cls), [], []
    closure = info.optim_cls.__name__ in NEEDS_CLOSURE
    loss = least_squares(params, kwargs.get("maximize", False)) if closure else None
    for keys, group_kwargs in groups:
        opt = factory(**_clone({**kwargs, **group_kwargs}))
        sub = {k: params[k] for k in keys}
        opts.append([keys, opt, opt.init(sub)])
    for g in grads:
        extra = {}
        if loss is not None:
            g = torch.func.grad(loss)(params)
            extra = {"value_fn": lambda p, params=params: loss({**params, **p})}
        new = dict(params)
        for entry in opts:
            keys, opt, state = entry
            sub = {k: params[k] for k in keys}
            updates, entry[2] = opt.update({k: g[k] for k in keys}, state, sub, **extra)
            new.update(apply_updates(sub, updates))
        params = new
        trajectory.append(params)
    return trajectory


def run_torch(info, kwargs, groups, params, grads):
    """torch.optim's trajectory on leaf copies of `params`, with the same param groups."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    param_groups = [
        {"params": [leaves[k] for k in keys], **_clone(group_kwargs)}
        for keys, group_kwargs in groups
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "lr as a Tensor" hints
        opt = info.optim_cls(param_groups, **_clone(kwargs))
    trajectory, loss = [], None
    if info.optim_cls.__name__ in NEEDS_CLOSURE:
        loss = least_squares(params, kwargs.get("maximize", False))

    def closure():
        opt.zero_grad()
        value = loss(leaves)
        value.backward()
        return value

    for g in grads:
        if loss is not None:
            opt.step(closure)
            trajectory.append({k: p.detach().clone() for k, p in leaves.items()})
            continue
        for k, p in leaves.items():
            p.grad = g[k].clone()
        opt.step()
        trajectory.append({k: p.detach().clone() for k, p in leaves.items()})
    return trajectory


def split(oi, params) -> tuple[dict, list[tuple[list[str], dict]]]:
    """The config's kwargs (implementation flags dropped) and its param groups as (keys, kwargs):
    one group of all params unless the config gives groups (dicts naming our keys in "params")."""
    kwargs = {k: v for k, v in oi.kwargs.items() if k not in IMPLEMENTATION_FLAGS}
    if oi.params is None:
        return kwargs, [(list(params), {})]
    groups = []
    for group in oi.params:
        if not isinstance(group, dict) or not all(isinstance(k, str) for k in group["params"]):
            pytest.skip(f"config gives its own params ({type(oi.params).__name__}), not groups")
        rest = {k: v for k, v in group.items() if k != "params" and k not in IMPLEMENTATION_FLAGS}
        groups.append((list(group["params"]), rest))
    return kwargs, groups


def compare(info, listing, index, dtype) -> float:
    """Worst relative error of our trajectory against torch.optim's; asserts RTOL[dtype], and
    that torch's params moved well beyond it (else the comparison would prove nothing)."""
    with default_dtype(dtype):
        oi = configs(info, listing)[index]
        params, grads = stream(info, dtype)
        grads = grads[: NEEDS_CLOSURE.get(info.optim_cls.__name__, STEPS)]
        kwargs, groups = split(oi, params)
        theirs = run_torch(info, kwargs, groups, params, grads)
        mine = run_ours(info, kwargs, groups, params, grads)
    moved = min(rel_error(theirs[-1][k].numpy(), params[k].numpy()) for k in params)
    assert moved > 1e3 * RTOL[torch.float64], f"{oi.desc}: torch moved the params by {moved:.1e}"
    rtol = RTOL_CLASS.get(info.optim_cls.__name__, {}).get(dtype, RTOL[dtype])
    return assert_trees_close(mine, theirs, rtol, f"{oi.desc}: functional_nn vs torch")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("info,listing,index", CONFIGS)
def test_config_matches_torch(info, listing, index, dtype):
    reason = skip_reason(info)
    if reason:
        pytest.skip(reason)
    compare(info, listing, index, dtype)


@pytest.mark.parametrize("info,index", ERRORS)
def test_error_input_raises_the_same_type(info, index):
    error, reason = hyper_errors(info)[index]
    reason = reason or skip_reason(info)
    if reason:
        pytest.skip(reason)
    kwargs = error.optimizer_error_input.kwargs
    with pytest.raises(error.error_type):
        ours(info.optim_cls)(**_clone(kwargs))


def _outcome(info, listing, index) -> tuple[str, dict | str]:
    """("matched", worst error per dtype), ("failed", messages) or ("skipped", the reason)."""
    results = {}
    for dtype in RTOL:
        try:
            results[dtype] = compare(info, listing, index, dtype)
        except pytest.skip.Exception as e:
            return "skipped", str(e)
        except Exception as e:  # tallied, then failed in test_tally
            results[dtype] = f"{type(e).__name__}: {e}".splitlines()[0]
    good = all(isinstance(r, float) for r in results.values())
    return ("matched" if good else "failed"), results


@pytest.mark.parametrize("listing", LISTINGS)
def test_tally(listing):
    """Every config is matched (both dtypes) or skipped with a reason: the tally, printed with
    `pytest -s`; a mismatch fails here too, after the whole tally is printed."""
    lines, failures, matched, total = [], [], 0, 0
    for info in optim_db:
        name, reason, n = info.optim_cls.__name__, skip_reason(info), len(configs(info, listing))
        total += n
        if reason or not n:
            lines += [f"{name}: 0/{n} (skipped: {reason})"] if n else []
            continue
        outcomes = [_outcome(info, listing, i) for i in range(n)]
        done = [r for kind, r in outcomes if kind == "matched"]
        matched += len(done)
        failures += [f"{name}-{i}: {r}" for i, (kind, r) in enumerate(outcomes) if kind == "failed"]
        skips = [
            f"  {name}-{i} skipped: {r}"
            for i, (kind, r) in enumerate(outcomes)
            if kind == "skipped"
        ]
        worst = [max((r[d] for r in done), default=0.0) for d in RTOL]
        lines.append(
            f"{name}: {len(done)}/{n} (worst {worst[0]:.1e} float64, {worst[1]:.1e} float32)"
        )
        lines += skips
    print(
        f"\noptim_db ({listing} listing, run on cpu): {matched}/{total} configs match torch.optim"
    )
    print("\n".join(lines))
    assert not failures, "\n".join(failures)
