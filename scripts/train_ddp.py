"""The seeds' workload trained data-parallel over P processes, printing steps per second.

    torchrun --nproc_per_node=P scripts/train_ddp.py [--steps 500] [--dtype float32|float64]
        [--check]

The PyTorch tutorial's two-layer ReLU network (N, D_in, H, D_out = 64, 1000, 100, 10, no biases,
standard-normal x, y and weights), summed squared error, Adam at lr 1e-4, full batch: every step,
rank r of P computes the loss and gradient of its share of the 64 rows (functional_nn.distributed:
rows r, r + P, ...) and the shares' gradients are summed in one bucketed all_reduce, so the P
processes follow the one-process trajectory (fit(..., distributed=True)). `--check` also trains one process on rank 0 and prints
the relative distance of the final params from it. Without torchrun the script runs one process.
Backend gloo (CPU). Several machines: see README.md, "Data parallel".
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

if not __package__:  # run as a file: this checkout's functional_nn first, as PYTHONPATH=. does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import functional_nn as fnn
from functional_nn import distributed
from functional_nn._pytree import tree_leaves

N, D_IN, H, D_OUT = 64, 1000, 100, 10
LR = 1e-4


def problem(dtype: torch.dtype):
    """The seeds' x, y and standard-normal weights, from seed 0: the same on every rank."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(N, D_IN, generator=generator, dtype=dtype)
    y = torch.randn(N, D_OUT, generator=generator, dtype=dtype)
    net = fnn.mlp([D_IN, H, D_OUT], bias=False)
    return net, net.init(generator, dtype=dtype), x, y


def train(net, params, x, y, steps: int, parallel: bool = True):
    """`steps` Adam steps on the sse of (x, y), data-parallel over the default group (or alone).

    fit(distributed=True) broadcasts rank 0's params, trains each rank on its share of the rows
    (r, r + P, ...) and sums the gradients in one bucketed all_reduce a step.
    Returns:
        (steps,) the global loss before each update, and the final params.
    """
    r = fnn.fit(
        params, x, y, fnn.adam(lr=LR), model=net, loss=fnn.sse, steps=steps, distributed=parallel
    )
    return r.losses, r.params


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--check", action="store_true", help="compare with one process on rank 0")
    args = parser.parse_args(argv)
    if "RANK" not in os.environ:  # not under torchrun: a group of one
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1")
    dist.init_process_group("gloo")
    rank, world = distributed.rank_and_world()
    net, params, x, y = problem(getattr(torch, args.dtype))
    train(net, params, x, y, 5)  # warm up (allocator, thread pools, gloo's connections)
    dist.barrier()
    start = time.perf_counter()
    losses, final = train(net, params, x, y, args.steps)
    dist.barrier()
    seconds = time.perf_counter() - start
    if rank == 0:
        sizes = "/".join(map(str, distributed.shard_sizes(N, world)))
        print(
            f"P={world}: {args.steps / seconds:.1f} steps/s ({args.steps} steps in {seconds:.2f} s, "
            f"rows per rank {sizes}, {args.dtype}, {torch.get_num_threads()} threads per "
            f"process); loss {losses[0]:.4g} -> {losses[-1]:.4g}"
        )
        if args.check:
            _, alone = train(net, params, x, y, args.steps, parallel=False)
            worst = max(
                float((a - b).abs().max() / (a.abs() + b.abs()).max())
                for a, b in zip(tree_leaves(final), tree_leaves(alone))
            )
            print(f"final params vs one process: max relative distance {worst:.2e}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
