"""Checkpoints: params, optimizer state and metadata in one file that can never run code.

`load` reads with `torch.load(weights_only=True)`: only tensors, plain Python values and the state
classes registered in `_pytree.py` come back; anything else is refused before it is built. `save`
writes to a temporary file in the same directory and renames it over the target (`os.replace` is
atomic on POSIX and Windows), so a crash mid-write leaves the old checkpoint whole.

To resume a fit bitwise, save its result's step count with it and pass it back as start_step:
    save(path, r.params, r.opt_state, steps=r.steps)
    c = load(path)
    fit(c.params, x, y, opt, model=net, opt_state=c.opt_state, start_step=c.meta["steps"], ...)
"""

from __future__ import annotations

import os
import pickle
import tempfile
from typing import Any

import attrs
import torch

from ._pytree import PyTree

FORMAT = "functional_nn.checkpoint"
VERSION = 1


@attrs.frozen
class Checkpoint:
    """What `load` returns.

    Attributes:
        params: the params pytree, as saved.
        opt_state: the optimizer state, as saved (None when none was saved).
        meta: the keyword arguments given to save, e.g. {"steps": 120, "seed": 0}.
    """

    params: PyTree
    opt_state: PyTree
    meta: dict[str, Any]


def save(path: str | os.PathLike, params: PyTree, opt_state: PyTree = None, **meta: Any) -> None:
    """Write params, opt_state and meta to `path`, atomically.

    Args:
        path: the file to write; its directory must exist. An existing file is replaced.
        params, opt_state: pytrees of tensors (tensors keep their dtype and device).
        meta: plain values (numbers, strings, bools, None, and lists, tuples and dicts of them).
    """
    path = os.fspath(path)
    payload = {"format": FORMAT, "version": VERSION, "params": params, "opt_state": opt_state}
    payload["meta"] = meta
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load(path: str | os.PathLike, map_location: Any = None) -> Checkpoint:
    """Read a checkpoint written by `save`, refusing anything but tensors and registered states.

    Args:
        path: the file to read.
        map_location: as torch.load's, e.g. "cpu" to load a CUDA checkpoint without a GPU.
    Returns:
        A Checkpoint (params, opt_state, meta).
    Raises:
        FileNotFoundError: no file at path.
        ValueError: the file is truncated or corrupt, not a functional_nn checkpoint, or holds
            objects that a weights-only load refuses.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path!r}; check the path.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path!r} is not a checkpoint a safe (weights_only) load can read: it holds objects "
            "other than tensors, plain values and registered states, or is no torch file "
            f"({_why(e)})."
        ) from e
    except Exception as e:  # torch.load reports a bad file with many exception types
        raise ValueError(
            f"{path!r} cannot be read as a checkpoint: the file is truncated, corrupt or not a "
            f"torch file ({_why(e)})."
        ) from e
    if not (isinstance(payload, dict) and payload.get("format") == FORMAT):
        kind = type(payload).__name__
        if isinstance(payload, dict):
            kind = f"a dict with keys {list(payload)[:8]}"
        raise ValueError(
            f"{path!r} is not a functional_nn checkpoint (it holds {kind}); write one with "
            "functional_nn.checkpoint.save."
        )
    if payload.get("version") != VERSION:
        raise ValueError(
            f"{path!r} is a checkpoint of format version {payload.get('version')!r}; this "
            f"functional_nn reads version {VERSION}."
        )
    return Checkpoint(payload["params"], payload["opt_state"], payload["meta"])


def _why(error: Exception) -> str:
    """The first sentence of an error, for our message (the whole error stays chained)."""
    text = str(error).strip().splitlines()[0].split(". ")[0][:200] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
