"""Checkpoints: exact round trips, safe loading, atomic writes, clear errors, and a fit resumed from
a checkpoint equal to one never interrupted."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zipfile
from typing import NamedTuple

import attrs
import numpy as np
import pytest
import torch

import functional_nn as fnn
from functional_nn import checkpoint, optim
from functional_nn._pytree import register_attrs, tree_leaves, tree_map
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
        CountState(
            torch.tensor(7, device=device), [torch.ones(3, dtype=torch.float16, device=device)]
        ),
    )
    meta = {"steps": 120, "seed": 3, "lr": 1e-3, "note": "run A", "sizes": [4, 6, 2], "extra": None}
    checkpoint.save(tmp_path / "ck.pt", params, states, **meta)
    loaded = checkpoint.load(tmp_path / "ck.pt")
    assert loaded.meta == meta
    assert [type(s) for s in loaded.opt_state] == [type(s) for s in states]
    assert [type(s) for s in loaded.opt_state[0]] == [type(s) for s in states[0]]
    for got, want in zip(
        tree_leaves((loaded.params, loaded.opt_state)), tree_leaves((params, states))
    ):
        assert (got is None and want is None) or (
            got.dtype == want.dtype and got.device == want.device and torch.equal(got, want)
        )


def test_map_location_moves_the_tensors(tmp_path, device):
    params, _, _ = problem(device)
    checkpoint.save(tmp_path / "ck.pt", params)
    loaded = checkpoint.load(tmp_path / "ck.pt", map_location="cpu")
    assert (
        all(t.device.type == "cpu" for t in tree_leaves(loaded.params)) and loaded.opt_state is None
    )
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
    torch.save(
        {"format": checkpoint.FORMAT, "version": 1, "params": Payload(marker)}, tmp_path / "evil.pt"
    )
    with pytest.raises(
        ValueError, match=r"evil.pt' is not a checkpoint a safe \(weights_only\) load can read"
    ):
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
    with pytest.raises(
        FileNotFoundError, match=r"no checkpoint file at '.*missing.pt'; check the path"
    ):
        checkpoint.load(tmp_path / "missing.pt")
    for name, data in [
        ("half.pt", whole[: len(whole) // 2]),
        ("last-byte.pt", whole[:-1]),
        ("empty.pt", b""),
    ]:
        with pytest.raises(
            ValueError,
            match=rf"{name}' cannot be read as a checkpoint: the file is truncated, corrupt",
        ):
            checkpoint.load(write_bytes(tmp_path, name, data))
    with pytest.raises(
        ValueError,
        match=r"notes.txt' cannot be read as a checkpoint: the file is truncated, corrupt or not a torch file",
    ):
        checkpoint.load(write_bytes(tmp_path, "notes.txt", b"epoch 3: loss 0.25\n"))
    torch.save(torch.nn.Linear(4, 2).state_dict(), tmp_path / "state_dict.pt")
    with pytest.raises(
        ValueError,
        match=r"is not a functional_nn checkpoint \(it holds a dict with keys \['weight', 'bias'\]\)",
    ):
        checkpoint.load(tmp_path / "state_dict.pt")
    torch.save(
        {"format": checkpoint.FORMAT, "version": 99, "params": {}, "opt_state": None, "meta": {}},
        tmp_path / "v99.pt",
    )
    with pytest.raises(
        ValueError,
        match=r"is a checkpoint of format version 99; this functional_nn reads versions 1, 2",
    ):
        checkpoint.load(tmp_path / "v99.pt")


# (id, fit kwargs, total steps, the step the run is cut at)
RESUMES = [
    ("full-batch-sgd", dict(opt=lambda: optim.sgd(1e-3, momentum=0.9)), 10, 3),
    ("minibatch-adam-mid-epoch", dict(opt=lambda: optim.adam(1e-2), batch_size=6), 10, 5),
    ("minibatch-adam-epoch-end", dict(opt=lambda: optim.adam(1e-2), batch_size=6), 10, 8),
    (
        "ordered-sgd-val",
        dict(opt=lambda: optim.sgd(1e-3), batch_size=7, shuffle=False, eval_every=2),
        9,
        4,
    ),
]


@pytest.mark.parametrize(
    "kwargs, total, cut", [r[1:] for r in RESUMES], ids=[r[0] for r in RESUMES]
)
def test_a_fit_resumed_from_a_checkpoint_equals_one_never_interrupted(
    kwargs, total, cut, tmp_path, device
):
    params, x, y = problem(device)
    _, xv, yv = problem(device, n=7)
    kwargs = dict(kwargs, model=NET, seed=5, val=(xv, yv))
    make_opt = kwargs.pop("opt")
    whole = fnn.fit(params, x, y, make_opt(), steps=total, **kwargs)
    first = fnn.fit(params, x, y, make_opt(), steps=cut, **kwargs)
    checkpoint.save(tmp_path / "ck.pt", first.params, first.opt_state, steps=first.steps)
    c = checkpoint.load(tmp_path / "ck.pt")
    rest = fnn.fit(
        c.params,
        x,
        y,
        make_opt(),
        steps=total - cut,
        opt_state=c.opt_state,
        start_step=c.meta["steps"],
        **kwargs,
    )
    rtol = 0.0 if device.type == "cpu" else 1e-12  # bitwise is promised on CPU
    assert rest.steps == whole.steps == total
    state_tensors = lambda r: [t for t in tree_leaves(r.opt_state) if isinstance(t, torch.Tensor)]
    assert_trees_close(
        (rest.params, state_tensors(rest)), (whole.params, state_tensors(whole)), rtol, "resumed"
    )
    assert_trees_close(torch.cat([first.losses, rest.losses]), whole.losses, rtol, "losses")
    later = [i for i, s in enumerate(whole.val_steps) if s > cut]
    assert rest.val_steps == tuple(whole.val_steps[i] for i in later)
    assert_trees_close(rest.val_losses, whole.val_losses[later], rtol, "val losses")


# --- what save refuses: exactly what load would refuse, named by its path, the old file kept ---


class Opaque:
    """A plain class: no checkpoint can hold it unless torch's own allowlist admits it."""

    def __init__(self, value=1):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Opaque) and other.value == self.value


class UnregisteredState(NamedTuple):
    count: torch.Tensor


@attrs.frozen
class UnregisteredAttrs:
    count: torch.Tensor


@checkpoint.register
class UserState(NamedTuple):
    """A user's NamedTuple state, registered through the public API."""

    step: torch.Tensor
    trace: dict


@checkpoint.register
@attrs.frozen
class UserAttrsState:
    """A user's attrs state, registered through the public API."""

    count: torch.Tensor
    inner: UserState


@checkpoint.register
@attrs.frozen
class PrivateFieldsState:
    """attrs takes the field `_count` as `count` in __init__: rebuilding it must use that name."""

    _count: torch.Tensor
    trace: torch.Tensor


@attrs.frozen
class DerivedFieldState:
    """A field __init__ does not take: no pytree could rebuild this class from its fields."""

    count: torch.Tensor
    total: torch.Tensor = attrs.field(init=False, default=torch.zeros(()))


W = torch.arange(6.0).reshape(2, 3)

# (id, params, opt_state, meta, the path the message names, the fix it suggests)
REFUSED = [
    (
        "numpy-scalar-in-meta",
        [{"w": W}],
        None,
        dict(lr=np.float64(0.1)),
        r"meta\.lr is np\.float64\(0\.1\)",
        r"a\.item\(\)",
    ),
    (
        "numpy-array-in-params",
        [{"weight": np.zeros((2, 3))}],
        None,
        {},
        r"params\.0\.weight is array\(",
        r"torch\.from_numpy\(a\)",
    ),
    (
        "lambda-in-meta",
        {"w": W},
        None,
        dict(schedule=lambda s: 0.1),
        r"meta\.schedule is <function <lambda>",
        "plain Python values",
    ),
    (
        "object-in-state",
        {"w": W},
        (W, {"x": Opaque()}),
        {},
        r"opt_state\.1\.x is <tests\.test_checkpoint\.Opaque",
        "plain Python values",
    ),
    (
        "unregistered-class",
        {"w": W},
        UnregisteredState(W),
        {},
        r"opt_state is tests\.test_checkpoint\.UnregisteredState, a class load cannot read back until it is registered",
        r"checkpoint\.register\(UnregisteredState\)",
    ),
    (
        "unregistered-attrs",
        [{"w": W}],
        None,
        dict(best=[UnregisteredAttrs(W)]),
        r"meta\.best\.0 is tests\.test_checkpoint\.UnregisteredAttrs, a class",
        r"checkpoint\.register\(UnregisteredAttrs\)",
    ),
]


@pytest.mark.parametrize(
    "params, opt_state, meta, where, fix", [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED]
)
def test_save_refuses_what_load_could_not_read_and_keeps_the_old_file(
    params, opt_state, meta, where, fix, tmp_path
):
    path = tmp_path / "ck.pt"
    checkpoint.save(path, {"w": W}, steps=1)
    before = path.read_bytes()
    with pytest.raises(TypeError, match=rf"^save: {where}.*{fix}.*Nothing was written"):
        checkpoint.save(path, params, opt_state, **meta)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["ck.pt"]
    assert checkpoint.load(path).meta == {"steps": 1}


def test_save_accepts_exactly_what_load_accepts(tmp_path):
    """The check is load's own reader: a class torch's allowlist admits is saved, and refused when not."""
    path = tmp_path / "ck.pt"
    with torch.serialization.safe_globals([Opaque]):
        checkpoint.save(path, {"w": W}, tag=Opaque(3))
        assert checkpoint.load(path).meta == {"tag": Opaque(3)}
    with pytest.raises(TypeError, match=r"meta\.tag is <tests\.test_checkpoint\.Opaque"):
        checkpoint.save(path, {"w": W}, tag=Opaque(4))
    with pytest.raises(ValueError, match="a safe \\(weights_only\\) load can read"):
        checkpoint.load(
            path
        )  # the file saved under the allowlist is refused without it, as save was


def test_registered_user_states_round_trip_and_are_pytrees(tmp_path):
    nt = UserState(torch.tensor(3), {"mu": W.clone()})
    state = (nt, UserAttrsState(torch.tensor([1, 2]), UserState(torch.tensor(5.0), {})))
    assert len(tree_leaves(state)) == 4  # registered: pytree nodes, their tensors are the leaves
    checkpoint.save(tmp_path / "ck.pt", {"w": W}, state)
    got = checkpoint.load(tmp_path / "ck.pt").opt_state
    assert (
        type(got[0]) is UserState
        and type(got[1]) is UserAttrsState
        and type(got[1].inner) is UserState
    )
    assert_trees_close(got, state, 0.0)
    plain = torch.load(
        tmp_path / "ck.pt", weights_only=True
    )  # torch's own safe load takes them too
    assert type(plain["opt_state"][1]) is UserAttrsState


def test_a_registered_attrs_state_with_private_fields_is_a_pytree_and_round_trips(tmp_path):
    state = PrivateFieldsState(torch.tensor([1.0, 2.0]), torch.tensor(5))
    assert checkpoint.register(PrivateFieldsState) is PrivateFieldsState  # a second time: harmless
    doubled = tree_map(lambda t: 2 * t, state)
    assert type(doubled) is PrivateFieldsState
    assert torch.equal(doubled._count, torch.tensor([2.0, 4.0])) and torch.equal(
        doubled.trace, torch.tensor(10)
    )
    checkpoint.save(tmp_path / "ck.pt", {"w": W}, state)
    got = checkpoint.load(tmp_path / "ck.pt").opt_state
    assert type(got) is PrivateFieldsState
    assert torch.equal(got._count, state._count) and torch.equal(got.trace, state.trace)


def test_register_refuses_what_it_cannot_register(tmp_path):
    class Local(NamedTuple):
        x: torch.Tensor

    with pytest.raises(TypeError, match=r"defined inside a function.*define it at module level"):
        checkpoint.register(Local)
    with pytest.raises(
        TypeError, match=r"takes a NamedTuple or an attrs class; got tests\.test_checkpoint\.Opaque"
    ):
        checkpoint.register(Opaque)
    with pytest.raises(TypeError, match=r"register takes a class; got 3"):
        checkpoint.register(3)
    with pytest.raises(
        TypeError,
        match=r"DerivedFieldState, whose fields \['total'\] are not arguments of its __init__",
    ):
        checkpoint.register(DerivedFieldState)
    with pytest.raises(
        TypeError, match=r"opt_state is tests\.test_checkpoint\.DerivedFieldState, a class"
    ):
        checkpoint.save(
            tmp_path / "ck.pt", {"w": W}, DerivedFieldState(W)
        )  # so it stays unregistered


# --- checksums ---


def tensor_record(path):
    """(offset, length) of the one tensor data record in a torch zip file."""
    with zipfile.ZipFile(path) as z:
        [info] = [
            i
            for i in z.infolist()
            if "/data/" in i.filename and i.filename.split("/")[-1].isdigit()
        ]
    with open(path, "rb") as f:  # the data starts after the local header, whose extra field pads it
        f.seek(info.header_offset)
        header = f.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def test_a_flipped_bit_in_a_tensor_is_a_checksum_error(tmp_path):
    path = tmp_path / "ck.pt"
    w = torch.linspace(-1, 1, 64, dtype=torch.float64)
    checkpoint.save(path, {"layer": {"w": w}}, steps=3)
    offset, size = tensor_record(path)
    assert size == w.numel() * 8
    data = bytearray(path.read_bytes())
    data[offset + size // 2] ^= 0x10
    path.write_bytes(bytes(data))
    silently = torch.load(path, weights_only=True)["params"]["layer"]["w"]  # torch checks no CRC
    assert not torch.equal(silently, w) and (silently != w).sum() == 1
    with pytest.raises(
        ValueError, match=r"ck.pt' fails its checksum at params\.layer\.w \(float64\[64\]\)"
    ):
        checkpoint.load(path)


def test_version_1_files_load_without_a_checksum_check(tmp_path):
    payload = {
        "format": checkpoint.FORMAT,
        "version": 1,
        "params": {"w": W},
        "opt_state": None,
        "meta": {"steps": 4},
    }
    torch.save(payload, tmp_path / "v1.pt")
    got = checkpoint.load(tmp_path / "v1.pt")
    assert got.meta == {"steps": 4} and torch.equal(got.params["w"], W)
    torch.save(dict(payload, version=2), tmp_path / "v2-without-sums.pt")
    with pytest.raises(
        ValueError, match=r"fails its checksum check: it holds 1 tensors but records no checksums"
    ):
        checkpoint.load(tmp_path / "v2-without-sums.pt")


# --- durability: fsync order, a save killed mid-write, stale temporary files ---


def test_save_fsyncs_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        os, "fsync", lambda fd: (calls.append(("fsync", os.fstat(fd).st_ino)), real_fsync(fd))
    )
    monkeypatch.setattr(
        os, "replace", lambda a, b: (calls.append(("replace",)), real_replace(a, b))
    )
    checkpoint.save(tmp_path / "ck.pt", {"w": W})
    monkeypatch.undo()
    file_ino, dir_ino = os.stat(tmp_path / "ck.pt").st_ino, os.stat(tmp_path).st_ino
    assert calls == [("fsync", file_ino), ("replace",), ("fsync", dir_ino)]


KILLED_SAVE = """
import os, sys, time, torch
from functional_nn import checkpoint

def stall(fd):  # the whole tensor is written, the rename not yet done: kill here
    print("writing", flush=True)
    time.sleep(600)

os.fsync = stall
checkpoint.save(sys.argv[1], {"w": torch.ones(2_000_000)}, steps=2)
"""


def test_a_save_killed_mid_write_leaves_a_temp_that_the_next_save_removes(tmp_path):
    path = tmp_path / "ck.pt"
    checkpoint.save(path, {"w": W}, steps=1)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_SAVE, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=root,
    )
    try:
        assert child.stdout.readline() == "writing\n"
    finally:
        child.kill()  # SIGKILL: no finally block, no cleanup in the child runs
        child.wait()
        child.stdout.close()
    [stale] = [n for n in os.listdir(tmp_path) if n != "ck.pt"]
    host = checkpoint._host()
    assert stale.startswith(f".ck.pt.{host}-{child.pid}.") and stale.endswith(".fnn-tmp")
    assert os.path.getsize(tmp_path / stale) > 8_000_000  # the new tensor was in it
    assert checkpoint.load(path).meta == {"steps": 1}  # the old checkpoint is whole
    survivors = [
        f".ck.pt.otherhost-{child.pid}.abcd1234.fnn-tmp",  # another machine's save (shared disk)
        f".ck.pt.{host}-{os.getppid()}.abcd1234.fnn-tmp",  # a live process's save
        f".ck.pt.{host}-{os.getpid()}.abcd1234.fnn-tmp",  # this process: maybe another thread's
        f".ck.pt.{host}-{child.pid}.abcd1234.tmp",  # not our suffix
        f"ck.pt.{host}-{child.pid}.abcd1234.fnn-tmp",  # not hidden: not our pattern
        "notes.fnn-tmp",
    ]
    for name in survivors:
        (tmp_path / name).write_bytes(b"keep me")
    checkpoint.save(tmp_path / "other.pt", {"w": W}, steps=3)  # any save in the directory cleans
    assert sorted(os.listdir(tmp_path)) == sorted(["ck.pt", "other.pt", *survivors])
    assert all((tmp_path / name).read_bytes() == b"keep me" for name in survivors)


@pytest.mark.filterwarnings(
    "ignore:Validating sparse tensor invariants"
)  # torch 2.14 says it costs O(nnz)
def test_tensors_without_a_byte_buffer_round_trip(tmp_path):
    """Sparse and meta tensors have no plain bytes to hash: their dtype and shape are checked."""
    sparse, meta = torch.eye(3, dtype=torch.float64).to_sparse(), torch.empty(2, 5, device="meta")
    checkpoint.save(tmp_path / "ck.pt", {"sparse": sparse, "meta": meta})
    got = checkpoint.load(tmp_path / "ck.pt").params
    assert (
        torch.equal(got["sparse"].to_dense(), sparse.to_dense())
        and got["sparse"].layout == torch.sparse_coo
    )
    assert got["meta"].is_meta and got["meta"].shape == (2, 5)


def test_save_into_a_missing_directory_names_it(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"save: the directory of '.*nowhere/ck.pt' does not exist"
    ):
        checkpoint.save(tmp_path / "nowhere" / "ck.pt", {"w": W})


def test_loading_onto_meta_reads_shapes_without_a_checksum_error(tmp_path):
    path = tmp_path / "ckpt.pt"
    checkpoint.save(path, {"w": torch.arange(6.0).reshape(2, 3)}, steps=3)
    loaded = checkpoint.load(path, map_location="meta")
    assert loaded.params["w"].is_meta and loaded.params["w"].shape == (2, 3)
    assert loaded.meta == {"steps": 3}
