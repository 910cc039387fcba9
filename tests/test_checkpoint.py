"""Checkpoints: exact round trips, safe loading, atomic writes, clear errors, and a fit resumed from
a checkpoint equal to one never interrupted."""

from __future__ import annotations

import io
import os

import attrs
import pytest
import torch

import functional_nn as fnn
from functional_nn import checkpoint, optim
from functional_nn._pytree import register_attrs, tree_leaves
from tests.helpers import assert_trees_close

NET = fnn.mlp([4, 6, 2])


@register_attrs
@attrs.frozen
class CountState:
    """An attrs state, as optimizers may define them."""

    count: torch.Tensor
    trace: list


def problem(device="cpu", n=20):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64).to(device)
    y = torch.randn(n, 2, generator=g, dtype=torch.float64).to(device)
    return NET.init(0, dtype=torch.float64, device=device), x, y


def test_a_checkpoint_round_trips_exactly(tmp_path, device):
    params, _, _ = problem(device)
    states = (
        optim.sgd(1e-3, momentum=0.9).init(params),
        optim.adam(1e-3, amsgrad=True).init(params),
        optim.adam(1e-3).init(params),
        CountState(torch.tensor(7, device=device), [torch.ones(3, dtype=torch.float16, device=device)]),
    )
    meta = {"steps": 120, "seed": 3, "lr": 1e-3, "note": "run A", "sizes": [4, 6, 2], "extra": None}
    checkpoint.save(tmp_path / "ck.pt", params, states, **meta)
    loaded = checkpoint.load(tmp_path / "ck.pt")
    assert loaded.meta == meta
    assert [type(s) for s in loaded.opt_state] == [type(s) for s in states]
    assert [type(s) for s in loaded.opt_state[0]] == [type(s) for s in states[0]]
    for got, want in zip(tree_leaves((loaded.params, loaded.opt_state)), tree_leaves((params, states))):
        assert (got is None and want is None) or (
            got.dtype == want.dtype and got.device == want.device and torch.equal(got, want)
        )


def test_map_location_moves_the_tensors(tmp_path, device):
    params, _, _ = problem(device)
    checkpoint.save(tmp_path / "ck.pt", params)
    loaded = checkpoint.load(tmp_path / "ck.pt", map_location="cpu")
    assert all(t.device.type == "cpu" for t in tree_leaves(loaded.params)) and loaded.opt_state is None
    assert_trees_close(loaded.params, params, 0.0)


def _touch(path):
    with open(path, "w") as f:
        f.write("ran")


class Payload:
    """Unpickling this runs _touch: what a malicious checkpoint would do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (_touch, (self.path,))


def test_load_never_runs_code_from_the_file(tmp_path):
    marker = str(tmp_path / "ran.txt")
    torch.save({"format": checkpoint.FORMAT, "version": 1, "params": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"evil.pt' is not a checkpoint a safe \(weights_only\) load can read"):
        checkpoint.load(tmp_path / "evil.pt")
    assert not os.path.exists(marker)


def test_a_crash_mid_write_leaves_the_old_checkpoint_whole(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    old, new = NET.init(0), NET.init(1)
    checkpoint.save(path, old, steps=1)
    real_save = torch.save

    def crash(obj, f):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: buffer.tell() // 2])
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save(path, new, steps=2)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["ck.pt"]  # no half-written temporary file left behind
    kept = checkpoint.load(path)
    assert kept.meta == {"steps": 1}
    assert_trees_close(kept.params, old, 0.0)
    checkpoint.save(path, new, steps=2)
    assert checkpoint.load(path).meta == {"steps": 2} and os.listdir(tmp_path) == ["ck.pt"]


def write_bytes(tmp_path, name, data: bytes):
    (tmp_path / name).write_bytes(data)
    return tmp_path / name


def test_bad_checkpoint_files_get_clear_errors(tmp_path):
    checkpoint.save(tmp_path / "good.pt", NET.init(0))
    whole = (tmp_path / "good.pt").read_bytes()
    with pytest.raises(FileNotFoundError, match=r"no checkpoint file at '.*missing.pt'; check the path"):
        checkpoint.load(tmp_path / "missing.pt")
    for name, data in [("half.pt", whole[: len(whole) // 2]), ("last-byte.pt", whole[:-1]), ("empty.pt", b"")]:
        with pytest.raises(ValueError, match=rf"{name}' cannot be read as a checkpoint: the file is truncated, corrupt"):
            checkpoint.load(write_bytes(tmp_path, name, data))
    with pytest.raises(ValueError, match=r"notes.txt' cannot be read as a checkpoint: the file is truncated, corrupt or not a torch file"):
        checkpoint.load(write_bytes(tmp_path, "notes.txt", b"epoch 3: loss 0.25\n"))
    torch.save(torch.nn.Linear(4, 2).state_dict(), tmp_path / "state_dict.pt")
    with pytest.raises(ValueError, match=r"is not a functional_nn checkpoint \(it holds a dict with keys \['weight', 'bias'\]\)"):
        checkpoint.load(tmp_path / "state_dict.pt")
    torch.save({"format": checkpoint.FORMAT, "version": 99, "params": {}, "opt_state": None, "meta": {}}, tmp_path / "v99.pt")
    with pytest.raises(ValueError, match=r"is a checkpoint of format version 99; this functional_nn reads versions 1, 2"):
        checkpoint.load(tmp_path / "v99.pt")


# (id, fit kwargs, total steps, the step the run is cut at)
RESUMES = [
    ("full-batch-sgd", dict(opt=lambda: optim.sgd(1e-3, momentum=0.9)), 10, 3),
    ("minibatch-adam-mid-epoch", dict(opt=lambda: optim.adam(1e-2), batch_size=6), 10, 5),
    ("minibatch-adam-epoch-end", dict(opt=lambda: optim.adam(1e-2), batch_size=6), 10, 8),
    ("ordered-sgd-val", dict(opt=lambda: optim.sgd(1e-3), batch_size=7, shuffle=False, eval_every=2), 9, 4),
]  # fmt: skip


@pytest.mark.parametrize("kwargs, total, cut", [r[1:] for r in RESUMES], ids=[r[0] for r in RESUMES])
def test_a_fit_resumed_from_a_checkpoint_equals_one_never_interrupted(kwargs, total, cut, tmp_path, device):
    params, x, y = problem(device)
    _, xv, yv = problem(device, n=7)
    kwargs = dict(kwargs, model=NET, seed=5, val=(xv, yv))
    make_opt = kwargs.pop("opt")
    whole = fnn.fit(params, x, y, make_opt(), steps=total, **kwargs)
    first = fnn.fit(params, x, y, make_opt(), steps=cut, **kwargs)
    checkpoint.save(tmp_path / "ck.pt", first.params, first.opt_state, steps=first.steps)
    c = checkpoint.load(tmp_path / "ck.pt")
    rest = fnn.fit(c.params, x, y, make_opt(), steps=total - cut, opt_state=c.opt_state,
                   start_step=c.meta["steps"], **kwargs)  # fmt: skip
    rtol = 0.0 if device.type == "cpu" else 1e-12  # bitwise is promised on CPU
    assert rest.steps == whole.steps == total
    state_tensors = lambda r: [t for t in tree_leaves(r.opt_state) if isinstance(t, torch.Tensor)]  # noqa: E731
    assert_trees_close((rest.params, state_tensors(rest)), (whole.params, state_tensors(whole)), rtol, "resumed")
    assert_trees_close(torch.cat([first.losses, rest.losses]), whole.losses, rtol, "losses")
    later = [i for i, s in enumerate(whole.val_steps) if s > cut]
    assert rest.val_steps == tuple(whole.val_steps[i] for i in later)
    assert_trees_close(rest.val_losses, whole.val_losses[later], rtol, "val losses")
