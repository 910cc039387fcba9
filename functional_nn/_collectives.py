"""The private half of functional_nn.distributed: buckets, checksums, and collectives that fail clearly.

Buckets: the tensors of a pytree packed into a few flat buffers, so one collective moves many.

A bucket holds tensors of one dtype and one device (a collective moves one buffer of one kind), in
tree order, up to a size cap: torch's DistributedDataParallel packs gradients the same way, with a
25 MB cap by default (its `bucket_cap_mb`), so that a small model needs one collective a step and a
large one can start sending the first bucket while the next is packed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

DEFAULT_CAP_MB = 25.0  # DistributedDataParallel's default bucket_cap_mb


def plan(tensors: Sequence[Tensor | None], cap_bytes: int) -> list[list[int]]:
    """Group the positions of `tensors` into buckets: one dtype and device each, in order, capped.

    A bucket is closed when the next tensor of its kind would take it past `cap_bytes`; a tensor
    larger than the cap gets a bucket of its own. Positions holding None are left out.

    Args:
        tensors: the leaves, in tree order (None for a leaf that is not a tensor).
        cap_bytes: the most bytes a bucket of several tensors holds (> 0).
    Returns:
        The buckets, each a list of positions into `tensors`, in the order their first tensor comes.
    """
    if not cap_bytes > 0:
        raise ValueError(f"bucket_cap_mb must be > 0, got {cap_bytes / 2**20!r} MB.")
    buckets: list[list[int]] = []
    open_bucket: dict[tuple, tuple[int, int]] = {}  # kind -> (bucket index, bytes so far)
    for i, t in enumerate(tensors):
        if t is None:
            continue
        kind, size = (t.dtype, t.device), t.numel() * t.element_size()
        index, filled = open_bucket.get(kind, (-1, 0))
        if index < 0 or filled + size > cap_bytes:
            buckets.append([])
            index, filled = len(buckets) - 1, 0
        buckets[index].append(i)
        open_bucket[kind] = (index, filled + size)
    return buckets


def pack(tensors: Sequence[Tensor]) -> Tensor:
    """One new flat buffer holding `tensors` one after another (never a view of any of them).

    Args:
        tensors: of one dtype and device, any shapes.
    Returns:
        (sum of numels,) a fresh tensor.
    """
    if len(tensors) == 1:  # cat of one tensor would copy too, but reshape alone may return a view
        return tensors[0].reshape(-1).clone()
    return torch.cat([t.reshape(-1) for t in tensors])


def unpack(flat: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Views of `flat` with the shapes of `like`, the inverse of `pack`."""
    pieces = torch.split(flat, [t.numel() for t in like])
    return [p.view(t.shape) for p, t in zip(pieces, like)]


def checksum(t: Tensor) -> Tensor:
    """(2,) int64: the sum and the position-weighted sum of a tensor's bytes, read as int32 words."""
    data = t.detach().resolve_conj().resolve_neg().contiguous().reshape(-1).view(torch.uint8)
    words = data.view(torch.int32) if data.numel() % 4 == 0 else data
    words = words.to(torch.int64)
    position = torch.arange(words.numel(), device=words.device) % 8191 + 1
    return torch.stack([words.sum(), (words * position).sum()])


def small_device(group) -> torch.device:
    """Where the small tensors of flags and checksums live: nccl moves only CUDA tensors."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def collective(what: str, group, run):
    """run(), with a failure turned into a RuntimeError that says which rank saw it, and why."""
    try:
        return run()
    except RuntimeError as e:  # DistBackendError is one; gloo reports a lost peer as a plain one
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RuntimeError(
            f"functional_nn.distributed: {what} failed on rank {rank} of {world}: another rank "
            "has failed or exited (its own traceback says why), or did not reach this collective "
            f"within the process group's timeout. The backend said: {first}"
        ) from e
