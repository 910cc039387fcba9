"""Checkpoints: params, optimizer state and metadata in one file that can never run code.

`load` reads with `torch.load(weights_only=True)`: only tensors, plain Python values and registered
state classes come back; anything else is refused before it is built. `save` never writes what
`load` would refuse: it writes a temporary file, reads it back with `load`'s own reading code, and
only then renames it over the target, so a refused save (a numpy scalar or array, a lambda, an
unregistered class: the error names its path, e.g. `meta.lr` or `opt_state.0.count`) and a crash
mid-write both leave the old checkpoint whole. numpy values are refused, not converted, so what
`load` returns is what was given: pass `torch.from_numpy(a)` and `a.item()` instead.

Your own state classes (a NamedTuple or an attrs class) are registered once, where they are defined:
    @functional_nn.checkpoint.register
    class MyState(NamedTuple): ...
which makes the class a pytree node and loadable with `torch.load(weights_only=True)`. The process
that loads must import that module first, so the class is registered there too.

Integrity: the file (format version 2) stores a blake2b checksum of every tensor (its dtype, shape
and, for dense tensors, bytes); `load` verifies them, so a flipped bit is a ValueError, not a
silently different weight (torch's zip reader checks no CRCs). Version 1 files (no checksums) still
load, unverified. A save with a model state (batch-norm running statistics, FitResult.model_state)
writes format version 3, which adds it; one without still writes version 2, so older readers read
it, and refuse a version 3 file with a message naming the version rather than misread it. `save` pays for this with one more read and hash of what it wrote.

Durability (POSIX): the temporary file is fsynced before the rename and the directory after it. A
save killed mid-write (SIGKILL, power loss) leaves its temporary file,
`.<target>.<host>-<pid>.<random>.fnn-tmp`; the next save in that directory removes such files whose
host is this one and whose process is gone, and no other file (not a concurrent save's temp).

To resume a fit bitwise, save its result's step count with it and pass it back as start_step:
    save(path, r.params, r.opt_state, model_state=r.model_state, steps=r.steps)
    c = load(path)
    fit(c.params, x, y, opt, model=net, opt_state=c.opt_state, model_state=c.model_state,
        start_step=c.meta["steps"], ...)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import re
import reprlib
import socket
import tempfile
from collections.abc import Iterator
from typing import Any

import attrs
import torch

from ._pytree import PyTree, register_attrs, register_namedtuple

FORMAT = "functional_nn.checkpoint"
VERSION = 2  # 2: per-tensor checksums
VERSION_WITH_STATE = 3  # 3: and a model state; written only when there is one
READS = (1, 2, 3)  # version 1 files load without a checksum check
_TEMP_SUFFIX = ".fnn-tmp"
_TEMP = re.compile(r"\.(?P<target>.+)\.(?P<host>\w+)-(?P<pid>\d+)\.\w+" + re.escape(_TEMP_SUFFIX))
# What pickling raises for an object it cannot write (a lambda, a local class, a lock).
_UNPICKLABLE = (pickle.PicklingError, AttributeError, TypeError)
_REPR = reprlib.Repr()
_REPR.maxother = 80  # enough for "<function <lambda> at 0x...>"


@attrs.frozen
class Checkpoint:
    """What `load` returns.

    Attributes:
        params: the params pytree, as saved.
        opt_state: the optimizer state, as saved (None when none was saved).
        meta: the keyword arguments given to save, e.g. {"steps": 120, "seed": 0}.
        model_state: the model state, as saved (None when none was saved).
    """

    params: PyTree
    opt_state: PyTree
    meta: dict[str, Any]
    model_state: PyTree = None


def register(cls: type) -> type:
    """Make a user's NamedTuple or attrs state class a pytree node that checkpoints can hold.

    Use as a decorator (below `@attrs.frozen` for attrs classes) on a class defined at module level.
    Afterwards the class is a pytree node (tree_map, fit and vmap see its fields) and
    `torch.load(weights_only=True)`, hence `load`, accepts it.

    Registering a class again is harmless.

    Args:
        cls: a NamedTuple class or an attrs class (every field an argument of its __init__;
            private fields such as `_count`, which __init__ takes as `count`, are fine).
    Returns:
        cls itself.
    Raises:
        TypeError: cls is not such a class, is defined inside a function, or has init=False fields.
    """
    if not isinstance(cls, type):
        raise TypeError(f"register takes a class; got {cls!r} ({type(cls).__name__}).")
    if "<locals>" in cls.__qualname__:
        raise TypeError(
            f"register got {cls.__qualname__}, a class defined inside a function; pickling finds "
            "classes by their import path, so define it at module level."
        )
    if attrs.has(cls):
        return register_attrs(cls)
    if issubclass(cls, tuple) and hasattr(cls, "_fields"):
        return register_namedtuple(cls)
    raise TypeError(
        f"register takes a NamedTuple or an attrs class; got {_name(cls)}. Make the state a "
        "typing.NamedTuple or an @attrs.frozen class."
    )


def save(
    path: str | os.PathLike,
    params: PyTree,
    opt_state: PyTree = None,
    *,
    model_state: PyTree = None,
    **meta: Any,
) -> None:
    """Write params, opt_state and meta to `path`, atomically, or refuse and leave `path` as it was.

    The file is written under a temporary name, read back with `load`'s own code (so what load
    would refuse is refused here) and renamed over `path`. First, temporary files that killed saves
    left in the directory are removed (see the module docstring).

    Args:
        path: the file to write; its directory must exist. An existing file is replaced.
        params, opt_state: pytrees of tensors (tensors keep their dtype and device), of dicts, lists,
            tuples and NamedTuple or attrs classes registered with `register`.
        model_state: a stateful network's state (FitResult.model_state), or None.
        meta: plain values (numbers, strings, bools, None, and lists, tuples and dicts of them).
    Raises:
        TypeError: something `load` could not read back (the message names its path).
        FileNotFoundError: the directory does not exist.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"save: the directory of {path!r} does not exist; create it first.")
    body = {"params": params, "opt_state": opt_state, "meta": meta}
    version = VERSION
    if model_state is not None:
        body, version = {**body, "model_state": model_state}, VERSION_WITH_STATE
    payload = {"format": FORMAT, "version": version, **body, "checksums": _checksums(body)}
    _remove_stale_temps(directory)
    prefix = f".{os.path.basename(path)}.{_host()}-{os.getpid()}."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=_TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                torch.save(payload, f)
            except _UNPICKLABLE as e:
                raise _refusal(body, e) from e
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        try:  # load's own reading code, so save refuses exactly what load would refuse
            _read(tmp, map_location="cpu", mmap=True)
        except _Refused as e:
            raise _refusal(body, e) from e
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    _fsync_directory(directory)  # the rename itself survives a power loss


def load(path: str | os.PathLike, map_location: Any = None) -> Checkpoint:
    """Read a checkpoint written by `save`, refusing anything but tensors and registered states.

    Args:
        path: the file to read.
        map_location: as torch.load's, e.g. "cpu" to load a CUDA checkpoint without a GPU.
    Returns:
        A Checkpoint (params, opt_state, meta, model_state).
    Raises:
        FileNotFoundError: no file at path.
        ValueError: the file is truncated or corrupt, fails its checksum, is not a functional_nn
            checkpoint, or holds objects that a weights-only load refuses.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path!r}; check the path.")
    payload = _read(path, map_location)
    state = payload.get("model_state")
    return Checkpoint(payload["params"], payload["opt_state"], payload["meta"], state)


class _Refused(ValueError):
    """A weights-only load refused an object in the file."""


def _read(path: str, map_location: Any, mmap: bool = False) -> dict:
    """The one reading code, for load and for save's check: a safe load, format, version, checksums."""
    payload = _unpickle(path, map_location, mmap)
    if not (isinstance(payload, dict) and payload.get("format") == FORMAT):
        kind = type(payload).__name__
        if isinstance(payload, dict):
            kind = f"a dict with keys {list(payload)[:8]}"
        raise ValueError(
            f"{path!r} is not a functional_nn checkpoint (it holds {kind}); write one with "
            "functional_nn.checkpoint.save."
        )
    if payload.get("version") not in READS:
        raise ValueError(
            f"{path!r} is a checkpoint of format version {payload.get('version')!r}; this "
            f"functional_nn reads versions {', '.join(map(str, READS))}."
        )
    if payload["version"] >= 2:
        _verify(path, payload)
    return payload


def _unpickle(source: str | io.BytesIO, map_location: Any, mmap: bool = False) -> Any:
    """torch.load with weights_only=True; a refused object is _Refused, a bad file ValueError."""
    try:
        return torch.load(source, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise _Refused(
            f"{source!r} is not a checkpoint a safe (weights_only) load can read: it holds objects "
            "other than tensors, plain values and registered states, or is no torch file "
            f"({_why(e)}). If it holds your own state class, import the module that registers it "
            "(functional_nn.checkpoint.register) before loading."
        ) from e
    except Exception as e:  # torch.load reports a bad file with many exception types
        raise ValueError(
            f"{source!r} cannot be read as a checkpoint: the file is truncated, corrupt or not a "
            f"torch file ({_why(e)})."
        ) from e


def _walk(obj: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every node and leaf of a checkpoint's contents, pre-order, with its path ("params.0.weight")."""
    yield path, obj
    if isinstance(obj, dict):
        children = obj.items()
    elif isinstance(obj, tuple) and hasattr(obj, "_fields"):
        children = zip(obj._fields, obj)
    elif isinstance(obj, (list, tuple)):
        children = enumerate(obj)
    elif attrs.has(type(obj)):
        children = ((f.name, getattr(obj, f.name)) for f in attrs.fields(type(obj)))
    else:
        return
    for key, child in children:
        yield from _walk(child, f"{path}.{key}" if path else str(key))


def _tensors(body: dict) -> list[tuple[str, torch.Tensor]]:
    return [(where, t) for where, t in _walk(body) if isinstance(t, torch.Tensor)]


def _digest(t: torch.Tensor) -> str:
    """blake2b of a tensor's dtype, shape and bytes, wherever it lives.

    Sparse, quantized and meta tensors have no plain byte buffer: only their dtype and shape count.
    """
    h = hashlib.blake2b(f"{t.dtype}{tuple(t.shape)}".encode(), digest_size=32)
    if t.layout == torch.strided and not (t.is_quantized or t.is_meta):
        data = t.detach().resolve_conj().resolve_neg().cpu().contiguous().reshape(-1)
        h.update(data.view(torch.uint8).numpy())
    return h.hexdigest()


def _checksums(body: dict) -> list[str]:
    return [_digest(t) for _, t in _tensors(body)]


def _verify(path: str, payload: dict) -> None:
    keys = ("params", "opt_state", "meta") + (("model_state",) if payload["version"] >= 3 else ())
    tensors = _tensors({k: payload[k] for k in keys})
    sums = payload.get("checksums")
    if not isinstance(sums, list) or len(sums) != len(tensors):
        raise ValueError(
            f"{path!r} fails its checksum check: it holds {len(tensors)} tensors but records "
            f"{len(sums) if isinstance(sums, list) else 'no'} checksums; the file is corrupt, use "
            "another copy."
        )
    for (where, t), want in zip(tensors, sums):
        if t.is_meta:  # loaded with map_location="meta": no bytes to check, by the caller's choice
            continue
        if _digest(t) != want:
            raise ValueError(
                f"{path!r} fails its checksum at {where} ({str(t.dtype).removeprefix('torch.')}"
                f"{list(t.shape)}): the tensor's bytes changed after save wrote them (a disk, copy "
                "or transfer error); use another copy of the checkpoint."
            )


def _refusal(body: dict, error: Exception) -> TypeError:
    """The TypeError for a save that load could not read back, naming the first part at fault."""
    for where, obj in _walk(body):
        if type(obj) in (dict, list, tuple, torch.Tensor):
            continue  # always readable; their contents are walked
        # A node is checked by its class alone, so no tensor is serialised again.
        node = isinstance(obj, (dict, tuple)) or attrs.has(type(obj))
        if not _loadable(type(obj) if node else obj):
            what = _name(type(obj)) if node else f"{_short(obj)} (a {_name(type(obj))})"
            return TypeError(f"save: {where} is {what}, {_hint(type(obj), node)}")
    return TypeError(
        f"save: load could not read this checkpoint back ({_why(error)}); a checkpoint holds only "
        "tensors, plain Python values and classes registered with functional_nn.checkpoint.register."
    )


def _loadable(obj: Any) -> bool:
    """Whether `obj` survives torch.save and load's own weights-only read (in memory)."""
    buffer = io.BytesIO()
    try:
        torch.save(obj, buffer)
    except _UNPICKLABLE:
        return False
    buffer.seek(0)
    try:
        _unpickle(buffer, map_location="cpu")
    except _Refused:
        return False
    return True


def _hint(cls: type, node: bool) -> str:
    """How to fix a refused object of class `cls`."""
    if node and "<locals>" not in cls.__qualname__:
        return (
            "a class load cannot read back until it is registered: decorate it with "
            f"@functional_nn.checkpoint.register (or call functional_nn.checkpoint.register"
            f"({cls.__name__})). Nothing was written."
        )
    if cls.__module__.split(".")[0] == "numpy":
        return (
            "which load cannot read back: pass torch.from_numpy(a) for an array and a.item() for "
            "a scalar. Nothing was written."
        )
    return (
        "which load cannot read back: a checkpoint holds only tensors, plain Python values "
        "(numbers, strings, bools, None, lists, tuples, dicts) and module-level classes registered "
        "with functional_nn.checkpoint.register; store what rebuilds it instead (a name, numbers). "
        "Nothing was written."
    )


def _host() -> str:
    """This machine's name as it appears in temporary file names (letters, digits, underscores)."""
    return re.sub(r"\W", "_", socket.gethostname(), flags=re.ASCII) or "host"


def _remove_stale_temps(directory: str) -> None:
    """Remove the temporary files of saves on this host whose process is gone (killed mid-write)."""
    if os.name != "posix":
        return  # on Windows os.kill(pid, 0) would terminate the process, not probe it
    host, me = _host(), os.getpid()
    with os.scandir(directory) as entries:
        for entry in entries:
            m = _TEMP.fullmatch(entry.name)
            if not (m and m["host"] == host and entry.is_file(follow_symlinks=False)):
                continue
            pid = int(m["pid"])  # our own pid may be a save in another thread: leave it
            if pid != me and not _alive(pid):
                with contextlib.suppress(OSError):  # a concurrent save may remove it first
                    os.unlink(entry.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # another user's process, or no valid pid: leave its file
        return True
    return True


def _fsync_directory(directory: str) -> None:
    if os.name != "posix":
        return  # Windows cannot open a directory; NTFS journals the rename itself
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _short(obj: Any) -> str:
    return " ".join(_REPR.repr(obj).split())  # one line, even for a numpy array


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _why(error: Exception) -> str:
    """The first sentence of an error, for our message (the whole error stays chained)."""
    text = str(error).strip()
    unsupported = re.search(r"Unsupported global: GLOBAL [\w.]+", text)
    if unsupported:  # weights_only's own message buries the one line that says what was refused
        return unsupported.group(0)
    text = text.splitlines()[0].split(". ")[0][:200] if text else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
