"""Running a function on several gloo ranks of this machine, for the torch.distributed tests."""

from __future__ import annotations

import os
import socket
import time

import pytest
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(worker, args: tuple, world: int, seconds: float = 240) -> None:
    """`worker(rank, *args)` in `world` spawned processes (one thread each); fails the test,
    killing them, when they have not all finished within `seconds` (a collective hung)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ctx = mp.start_processes(worker, args=args, nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + seconds
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the {world} ranks did not finish in {seconds:.0f} s (a collective "
                        f"hung?)")
