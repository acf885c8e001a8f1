"""torch.distributed support for the one training loop: data parallelism and layer parallelism.

Data parallel (one dictionary, several ranks; what `saelab.fit` does when a process group is
initialised, e.g. under `torchrun`): every rank starts from rank 0's weights, input scale and
data-dependent initialisation (computed from the whole first global batch); each rank trains on
its share of every global batch (a slice of it, or a batch drawn from its own shards of an
activation store, see `TrainConfig.shard_store`); after backward the gradients are averaged over
the ranks, before the decoder-gradient projection and the optimiser step, so that every rank
takes the same step as one process on the global batch would. Dead-latent counters and logged
metrics are reduced over the ranks; buffers a variant updates while training (thresholds) follow
rank 0; only rank 0 writes checkpoints, metrics.jsonl and the final dictionary.

Exactness: for variants whose loss is a mean of per-row terms (topk, relu, jumprelu, gated, ...),
two ranks reach the weights of one process on the same data up to float rounding. Variants whose
loss couples the rows of a batch (batchtopk and matryoshka's top k*B over the batch, AuxK's
residual normalisation, mutual/feature choice allocation, batch thresholds) see only their rank's
rows: they train as well, but not to the same weights as one process.

A store of too few shards for every rank to fill its batch from its own (any store under one
shard, 65,536 rows, on two ranks) is read as with shard_store=False, with a warning.

Layer parallel (several hookpoints): `fit_hookpoints` gives hookpoint i to rank i % world_size;
each rank trains the dictionaries of its hookpoints together, in one pass over the data
(`fit_many`'s members, no collectives inside the loop).

The collectives themselves (`Group`) and the process-group queries are in group.py.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
import torch.distributed as dist
from torch import nn

from saelab.errors import ConfigError
from saelab.train.group import Group, is_initialized, is_main, local, rank, world_size
from saelab.train.loop import fit, train
from saelab.train.members import Member, run_folder

__all__ = ["Group", "fit_hookpoints", "hookpoints_of_rank", "init_from_env", "is_initialized",
           "is_main", "launched_by_torchrun", "local", "rank", "run_folder", "world_size"]

log = logging.getLogger(__name__)


def launched_by_torchrun() -> bool:
    """True when the environment holds a multi-process launch (torchrun sets RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR and MASTER_PORT)."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str | None = None) -> bool:
    """Initialise the default process group from torchrun's environment variables, if any.

    Backend: $SAELAB_DIST_BACKEND, else nccl when training on CUDA (`device` auto or cuda with a
    GPU present; each rank then uses GPU $LOCAL_RANK as its `cuda` device), else gloo. Returns
    whether a process group is initialised (False for a plain single-process run)."""
    if is_initialized():
        return True
    if not launched_by_torchrun():
        return False
    cuda = torch.cuda.is_available() and device is not None and (
        device == "auto" or device.startswith("cuda"))
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    backend = os.environ.get("SAELAB_DIST_BACKEND") or ("nccl" if cuda else "gloo")
    dist.init_process_group(backend)
    log.info("rank %d of %d (%s)", rank(), world_size(), backend)
    return True


# --- layer parallelism ----------------------------------------------------------------------------
def hookpoints_of_rank(hookpoints: Sequence[str], rank_: int | None = None,
                       world: int | None = None) -> list[str]:
    """The hookpoints rank `rank_` trains: every world-th one, starting at its rank."""
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    return list(hookpoints)[rank_::world]


def fit_hookpoints(create: Callable[[str], nn.Module], data, hookpoints: Sequence[str],
                   config) -> dict:
    """Layer parallelism: train one dictionary per hookpoint of a store, the hookpoints shared
    out over the ranks (hookpoint i on rank i % world_size; all of them in turn without a
    process group). `create(hookpoint)` builds a dictionary (called after seeding with
    `config.seed`, so a hookpoint's dictionary does not depend on the rank that trains it).
    A rank's hookpoints are trained together, from one pass over the data (`fit_many`).
    With `config.out`, hookpoint h's run lands in `run_folder(out, h)`. Returns this rank's
    dictionaries."""
    hookpoints = list(hookpoints)
    if len(set(hookpoints)) != len(hookpoints):
        raise ConfigError(f"hookpoints: {hookpoints} names one twice")
    mine = hookpoints_of_rank(hookpoints)
    if not mine:
        log.warning("rank %d has no hookpoint to train (%d hookpoints over %d ranks)",
                    rank(), len(hookpoints), world_size())
    config = replace(config, progress=config.progress and is_main())
    members = []
    for h in mine:
        torch.manual_seed(config.seed)  # for a `create` that draws from the global generator
        cfg = replace(config, hookpoint=h,
                      out=str(run_folder(config.out, h)) if config.out else None)
        members.append(Member(h, create(h), cfg))
    by_gradient = [m for m in members if m.dictionary.trained_by == "gradient"]
    with local():
        trained = dict(zip((m.hookpoint for m in by_gradient),
                           train(by_gradient, data, config) if by_gradient else []))
        for m in members:
            if m.dictionary.trained_by != "gradient":  # each fitted alone, by its own `fit`
                trained[m.hookpoint] = fit(m.dictionary, data, m.cfg)
    if is_initialized():
        dist.barrier()
    return {h: trained[h] for h in mine}
