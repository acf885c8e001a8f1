"""One activation store written by several processes (capture under `torchrun`).

When a torch.distributed process group is initialised, `capture_to_store` splits the contexts
into one contiguous span per rank (rank r takes contexts [n r / W, n (r + 1) / W)). Rank 0 alone
prepares the folder, writes the manifest and fixes the exclusion rule from the first global
batch, so that every rank drops rows by the same norm limit as a one-process capture would.
Each rank then writes its own shards (`rR-NNNNN.safetensors`) and its own progress file
(`progress-rR.json`, the shards it finished: what a rerun resumes from). When every rank is done,
rank 0 merges the progress files into the one manifest, in rank order (so rows keep the order of
the contexts), and removes them. A store written this way reads like any other.

A failure on one rank (bad input, NaN activations, a foreign folder) is raised on every rank with
the same message, instead of leaving the others waiting at a collective.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from saelab import errors
from saelab._paths import write_json
from saelab.errors import FormatError

PROGRESS_FILE = re.compile(r"progress-r\d+\.json")
"""Name of a rank's progress file while a multi-process capture runs."""


def current() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def span(n: int, rank: int, world: int) -> tuple[int, int]:
    """The contexts [lo, hi) that `rank` of `world` captures out of `n`."""
    return n * rank // world, n * (rank + 1) // world


def shard_prefix(rank: int) -> str:
    """What a rank's shard names start with."""
    return f"r{rank}-"


def progress_path(out: Path, rank: int) -> Path:
    return out / f"progress-r{rank}.json"


def together(fn: Callable[[], object], world: int, only_rank0: bool = False):
    """Run `fn` (on rank 0 only, with `only_rank0`), then agree: if it raised on any rank,
    raise the first failure's error on every rank; returns what `fn` returned here."""
    rank = current()[0]
    result, failure = None, None
    try:
        if not only_rank0 or rank == 0:
            result = fn()
    except Exception as e:  # noqa: BLE001 - re-raised below on every rank
        failure = e
    if world == 1:
        if failure is not None:
            raise failure
        return result
    mine = None if failure is None else (type(failure).__name__, str(failure))
    gathered: list = [None] * world
    dist.all_gather_object(gathered, mine)
    first = next(((r, g) for r, g in enumerate(gathered) if g is not None), None)
    if first is None:
        return result
    if failure is not None and first[0] == rank:
        raise failure
    rank_, (kind, message) = first
    cls = getattr(errors, kind, None)
    cls = cls if isinstance(cls, type) and issubclass(cls, Exception) else errors.DataError
    raise cls(f"rank {rank_} of the capture failed: {message}")


def new_progress(manifest: dict, lo: int, hi: int, rank: int) -> dict:
    """A rank's state before its first shard."""
    return {"rank": rank, "span": [lo, hi], "contexts_done": lo, "shards": [], "stats": {},
            "excluded_rows": 0, "d": {}, "exclusion": manifest["exclusion"]}


def read_progress(out: Path, manifest: dict, lo: int, hi: int, rank: int) -> dict:
    """The state a rank resumes from: its progress file, or a fresh one. A progress file of
    another split (another world size) is refused."""
    path = progress_path(out, rank)
    if not path.is_file():
        return new_progress(manifest, lo, hi, rank)
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FormatError(f"{path} is not a readable progress file ({e}); capture again with "
                          f"--overwrite") from None
    if state.get("span") != [lo, hi]:
        raise FormatError(f"{path} is for contexts {state.get('span')}, this rank captures "
                          f"[{lo}, {hi}): the store was started with another number of "
                          f"processes; rerun with that number, or with --overwrite")
    state["exclusion"] = manifest["exclusion"]
    return state


def save_progress(out: Path, state: dict) -> None:
    write_json(progress_path(out, state["rank"]), state)


def merge(out: Path, manifest: dict, world: int, n_contexts: int) -> dict:
    """Rank 0, after every rank finished: the progress files folded into the manifest (shards in
    rank order, statistics summed), written; the progress files removed."""
    states = [json.loads(progress_path(out, r).read_text()) for r in range(world)]
    manifest = {**manifest, "shards": [s for st in states for s in st["shards"]],
                "excluded_rows": sum(st["excluded_rows"] for st in states),
                "d": {k: v for st in states for k, v in st["d"].items()},
                "stats": _summed([st["stats"] for st in states]),
                "contexts_done": n_contexts, "complete": True}
    write_json(out / "manifest.json", manifest)
    for r in range(world):
        progress_path(out, r).unlink()
    return manifest


def _summed(stats: list[dict]) -> dict:
    total: dict = {}
    for part in stats:
        for key, s in part.items():
            t = total.setdefault(key, {"count": 0, "sum_sq_norm": 0.0,
                                       "sum": [0.0] * len(s["sum"])})
            t["count"] += s["count"]
            t["sum_sq_norm"] += s["sum_sq_norm"]
            t["sum"] = (torch.tensor(t["sum"], dtype=torch.float64)
                        + torch.tensor(s["sum"], dtype=torch.float64)).tolist()
    return total
