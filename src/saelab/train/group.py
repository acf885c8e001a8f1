"""The ranks that train one dictionary together (`Group`) and the process-group queries
(`rank`, `world_size`, `is_main`, ...): the collectives the training loop calls, each a no-op
without a process group. See distributed.py for what data and layer parallelism do."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn

from saelab.errors import DataError

_local_depth = 0


def is_initialized() -> bool:
    """Whether a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """Rank 0, the one that writes files."""
    return rank() == 0


@contextlib.contextmanager
def local() -> Iterator[None]:
    """Inside this block `saelab.fit` ignores the process group: each rank trains alone."""
    global _local_depth
    _local_depth += 1
    try:
        yield
    finally:
        _local_depth -= 1


class Group:
    """The ranks that train one dictionary together (world 1: every method is a no-op)."""

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world

    @classmethod
    def current(cls) -> Group:
        """All ranks of the default process group, or a one-process group inside `local()`."""
        if _local_depth or not is_initialized():
            return cls()
        return cls(rank(), world_size())

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def __repr__(self) -> str:
        return f"Group(rank={self.rank}, world={self.world})"

    # --- data --------------------------------------------------------------------------
    def shard(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """This rank's contiguous slice of a global batch (rows must divide evenly)."""
        if not self.active:
            return batch
        n = batch[0].shape[0]
        if n % self.world:
            raise DataError(f"a batch of {n} rows cannot be split evenly over {self.world} ranks; "
                            f"use a batch size that is a multiple of the number of ranks")
        per = n // self.world
        return tuple(t[self.rank * per:(self.rank + 1) * per] for t in batch)

    def gather_rows(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """The rows of every rank's batch, concatenated in rank order (the inverse of `shard`)."""
        if not self.active:
            return batch
        out = []
        for t in batch:
            t = t.contiguous()
            parts = [torch.empty_like(t) for _ in range(self.world)]
            dist.all_gather(parts, t)
            out.append(torch.cat(parts))
        return tuple(out)

    # --- weights and gradients ----------------------------------------------------------
    @torch.no_grad()
    def broadcast_state(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank."""
        if not self.active:
            return
        for t in module.state_dict(keep_vars=True).values():
            dist.broadcast(t.data, 0)

    @torch.no_grad()
    def broadcast_buffers(self, module: nn.Module) -> None:
        """Copy rank 0's buffers (statistics a variant updates while training) to every rank."""
        if not self.active:
            return
        for b in module.buffers():
            dist.broadcast(b.data, 0)

    @torch.no_grad()
    def average_gradients(self, params) -> None:
        """Replace each gradient by its mean over the ranks, in one all-reduce. A parameter
        without a gradient on every rank keeps none (as in one process)."""
        if not self.active:
            return
        params = [p for p in params if p.requires_grad]
        if not params:
            return
        grads = []
        for p in params:
            g = p.grad
            if g is None:
                g = torch.zeros_like(p)
            elif g.is_sparse:
                g = g.to_dense()
            grads.append(g.reshape(-1).float())
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32,
                           device=grads[0].device)
        flat = torch.cat(grads + [has])
        dist.all_reduce(flat)
        flat[:-len(params)].div_(self.world)
        offset = 0
        for p, n_has in zip(params, flat[-len(params):].tolist()):
            n = p.numel()
            if n_has == 0:
                p.grad = None
            else:
                g = flat[offset:offset + n].view_as(p).to(p.dtype)
                if p.grad is None or p.grad.is_sparse:
                    p.grad = g.clone()
                else:
                    p.grad.copy_(g)
            offset += n

    # --- small reductions ---------------------------------------------------------------
    def reduce_step(self, active: Tensor, total: Tensor) -> tuple[Tensor, bool]:
        """(latents that fired on any rank, whether the loss is finite on every rank), in one
        all-reduce."""
        finite = bool(torch.isfinite(total.detach()))
        if not self.active:
            return active, finite
        flags = torch.cat([active.reshape(-1).float(),
                           torch.tensor([0.0 if finite else 1.0], device=active.device)])
        dist.all_reduce(flags)
        return flags[:-1] > 0, bool(flags[-1] == 0)

    def mean_floats(self, values: dict[str, float]) -> dict[str, float]:
        """Each value averaged over the ranks (same keys on every rank)."""
        if not self.active or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(t, group=_cpu_group())
        return {k: float(v) / self.world for k, v in zip(keys, t.tolist())}

    def min_int(self, value: int) -> int:
        """The smallest of the ranks' values."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.long)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=_cpu_group())
        return int(t.item())

    def broadcast_object(self, obj):
        """Rank 0's `obj` (any picklable object) on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, 0)
        return box[0]

    def all_or_none(self, fn: Callable[[], object]):
        """`fn()` on every rank; if it raises on any rank, every rank raises (the lowest failing
        rank's error) instead of the others waiting for it forever."""
        if not self.active:
            return fn()
        result, error = None, None
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 (re-raised on every rank)
            error = e
        errors = [None] * self.world
        dist.all_gather_object(errors, error)
        first = next((e for e in errors if e is not None), None)
        if error is not None:
            raise error
        if first is not None:
            raise type(first)(f"on another rank: {first}") if _rebuildable(first) else first
        return result

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def _rebuildable(error: Exception) -> bool:
    try:
        type(error)("x")
        return True
    except Exception:  # noqa: BLE001
        return False


_CPU_GROUP = None


def _cpu_group():
    """A gloo group for small CPU reductions when the default backend is nccl (None: the
    default group does CPU tensors itself)."""
    global _CPU_GROUP
    if dist.get_backend() != "nccl":
        return None
    if _CPU_GROUP is None:
        _CPU_GROUP = dist.new_group(backend="gloo")
    return _CPU_GROUP
