"""`open_source`: one adapter per kind of training data, each returning a `Source` (sources.py).

Stores, and the data parallelism over them, are here; tensors in memory and iterables are in
memory.py; the FAST sequential order is in sequential.py."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from torch import Tensor

from saelab.errors import ConfigError, DataError
from saelab.store import memory
from saelab.store.reader import ActivationStore, acts_name, is_store
from saelab.store.sequential import SequentialBatches
from saelab.store.shuffle import ShuffledBatches
from saelab.store.sources import Batch, Feed, Labelled, LiveSource, Source, Want, WithGradients

log = logging.getLogger(__name__)


def open_source(data, wants: list[Want], cfg, group=None) -> Source:
    """The `Source` of `data` for dictionaries wanting `wants` (see sources.py). `cfg` (a
    TrainConfig) gives batch_size, seed (of the data order), buffer_rows, order and
    shard_store; with a data-parallel `group` (saelab.train.distributed.Group), each batch is
    this rank's share of the global batch."""
    world = group.world if group is not None else 1
    if world > 1 and cfg.order == "sequential":
        raise ConfigError("order='sequential' (FAST) reads the store in order in one process; "
                          "it does not run data parallel under torchrun: use order='shuffle'")
    if world > 1 and cfg.batch_size % world:
        raise ConfigError(f"batch_size {cfg.batch_size} is not a multiple of the {world} ranks")
    if isinstance(data, (str, Path, ActivationStore)):
        store = as_store(data)
        store.require_complete(getattr(cfg, "allow_incomplete_store", False), "training")
        return from_store(store, wants, cfg, group)
    if cfg.order == "sequential" and not _plain_iterable(data):
        raise ConfigError(f"order='sequential' (FAST) needs an activation store, whose rows "
                          f"carry their context and position; a {type(data).__name__} has no "
                          f"sequence boundaries: pass the store folder, or use order='shuffle'")
    source = _in_memory_or_streamed(data, wants, cfg)
    return sharded(source, group) if world > 1 else source


def _plain_iterable(data) -> bool:
    return isinstance(data, Iterable) and not isinstance(data, (Tensor, tuple, Mapping))


def _in_memory_or_streamed(data, wants: list[Want], cfg) -> Source:
    if isinstance(data, Labelled):
        return memory.from_labelled(data, wants, cfg)
    if isinstance(data, WithGradients):
        return memory.from_with_gradients(data, wants, cfg)
    if isinstance(data, Tensor) or (isinstance(data, tuple) and data
                                    and all(isinstance(t, Tensor) for t in data)):
        return memory.from_rows(memory.as_rows(data), {}, wants, cfg)
    if isinstance(data, Mapping):
        return memory.from_mapping(data, wants, cfg)
    if isinstance(data, LiveSource):
        return from_live(data, wants, cfg)
    if isinstance(data, Iterable):
        return memory.from_iterable(data, wants)
    raise DataError(f"cannot train on a {type(data).__name__}: pass a tensor [N, d_in], an "
                    f"activation store folder, {{hookpoint: tensor}}, a LiveSource, or an "
                    f"iterable of batches")


def as_store(data) -> ActivationStore:
    """`data` as an ActivationStore (a folder is opened), or a DataError saying what it is."""
    if isinstance(data, ActivationStore):
        return data
    if not is_store(data):
        raise DataError(f"{data} is not an activation store (no manifest.json); capture one "
                        f"with `saelab capture`")
    return ActivationStore(data)


def _column(columns: list[str], key: str) -> int:
    """Index of `key` among the hookpoints a batch holds, added at the end when new."""
    if key not in columns:
        columns.append(key)
    return columns.index(key)


def store_feed(store: ActivationStore, want: Want, columns: list[str]) -> Feed:
    """One dictionary's feed from a store: its input, its target, its gradients where the store
    holds them (`<hookpoint>.grad`)."""
    from saelab.capture.gradients import gradient_key

    key = store.hookpoint(want.hookpoint)
    if store.d(key) != want.d_in:
        raise DataError(f"store {store.path} has d={store.d(key)} at {key!r}, but the dictionary "
                        f"has d_in={want.d_in}; create the dictionary with d_in={store.d(key)}")
    describe = {"kind": "store", "path": str(store.path), "model": store.model,
                "model_hub_id": store.manifest.get("model_hub_id"), "hookpoint": key,
                "rows": store.n_rows, "exclusion": store.manifest.get("exclusion")}
    feed = Feed(_column(columns, key), None, {}, store.mean_squared_norm(key), describe)
    if want.target:
        feed = feed._replace(target=_column(columns, store.hookpoint(want.target)))
        describe["target_hookpoint"] = want.target
    if want.gradients and gradient_key(key) in store.hookpoints:
        feed.extras["grads"] = _column(columns, gradient_key(key))
        describe["gradient_hookpoint"] = gradient_key(key)
    return feed


def from_store(store: ActivationStore, wants: list[Want], cfg, group=None) -> Source:
    """Every hookpoint the dictionaries read, from one pass over the shards: shuffled (by
    default), in store order (`order="sequential"`), or under data parallelism either each rank
    reading its own shards (`shard_store`) or every rank reading the stream and keeping its
    slice of each batch."""
    columns: list[str] = []
    feeds = [store_feed(store, w, columns) for w in wants]
    names = [acts_name(k) for k in columns]
    if cfg.order == "sequential":
        seq = SequentialBatches(store, names, cfg.batch_size)
        for f in feeds:
            f.describe.update(order="sequential", batches_per_epoch=seq.batches_per_epoch())
        return Source(seq.iterate, seq.batches_per_epoch(), feeds)
    world = group.world if group is not None else 1
    if world > 1 and cfg.shard_store:
        plan = shard_plan([s["rows"] for s in store.manifest["shards"]], world,
                          cfg.batch_size // world)
        if plan is not None:
            return _own_shards(store, names, feeds, plan[group.rank], cfg, group)
        log.warning("store %s has %d shards, too few for each of %d ranks to fill its batch of "
                    "%d rows from its own shards; every rank reads the whole stream and keeps "
                    "its slice of each batch (shard_store=False)", store.path,
                    len(store.manifest["shards"]), world, cfg.batch_size // world)
    shuffled = store.shuffled_hookpoints(columns, cfg.batch_size, cfg.seed, cfg.buffer_rows)
    source = Source(shuffled.iterate, shuffled.batches_per_epoch(), feeds)
    return sharded(source, group) if world > 1 else source


def shard_plan(shard_rows: list[int], world: int, local_batch: int) -> list[list[int]] | None:
    """The shards each rank reads when ranks read their own (rank r: shards r, r + world, ...),
    or None when a rank would get fewer rows than its batch of `local_batch` (a store of fewer
    shards than ranks, e.g. any store under one shard)."""
    plan = [list(range(r, len(shard_rows), world)) for r in range(world)]
    if any(sum(shard_rows[i] for i in mine) < local_batch for mine in plan):
        return None
    return plan


def _own_shards(store: ActivationStore, names: list[str], feeds: list[Feed], mine: list[int],
                cfg, group) -> Source:
    """This rank's batches of batch_size / world rows, drawn from its own shards only (the
    global batch is the union over the ranks)."""
    sizes = [store.manifest["shards"][i]["rows"] for i in mine]
    shuffled = ShuffledBatches(sizes, lambda j: tuple(store.read_shard(mine[j], names)),
                               cfg.batch_size // group.world, cfg.buffer_rows, cfg.seed)
    for f in feeds:
        f.describe.update(ranks=group.world, shard_store=True)
    return Source(shuffled.iterate, shuffled.batches_per_epoch(), feeds)


def sharded(source: Source, group) -> Source:
    """Data parallelism by slicing: every rank walks the same stream of global batches and keeps
    its slice of each (the global batch is that of one process)."""
    def batches(start: int) -> Iterator[Batch]:
        return (group.shard(b) for b in source.batches(start))

    return source._replace(batches=batches)


def from_live(live: LiveSource, wants: list[Want], cfg) -> Source:
    """Activations captured on the fly at every hookpoint the dictionaries read, one forward per
    `batch_contexts` contexts (saelab.store.stream_batches); one pass, so steps must be given."""
    from saelab.capture import resolve
    from saelab.store.stream import stream_batches

    columns: list[str] = []
    feeds = []
    for w in wants:
        for key in filter(None, (w.hookpoint, w.target)):
            found = [hp.key for hp in resolve(live.model, [key])]
            if found != [key]:
                raise ConfigError(f"hookpoint {key!r} must name one hookpoint of the model "
                                  f"exactly (it resolves to {', '.join(found) or 'nothing'})")
        if w.hookpoint is None:
            raise ConfigError("a LiveSource needs the hookpoint of each dictionary: "
                              "fit_many({hookpoint: dictionary}, live)")
        describe = {"kind": "live", "model": live.model_name, "hookpoint": w.hookpoint,
                    "contexts": int(live.tokens.shape[0]),
                    "context_len": int(live.tokens.shape[1])}
        target = _column(columns, w.target) if w.target else None
        feeds.append(Feed(_column(columns, w.hookpoint), target, {}, None, describe))
    order = [hp.key for hp in resolve(live.model, columns)]  # the model's order

    def batches(start: int) -> Iterator[Batch]:
        stream = stream_batches(live.model, live.tokens, order, cfg.batch_size,
                                buffer_rows=live.buffer_rows, batch_contexts=live.batch_contexts,
                                special_ids=live.special_ids, norm_factor=live.norm_factor,
                                seed=cfg.seed)
        rows = (tuple(b[order.index(k)] for k in columns) for b in stream)
        return itertools.islice(rows, start, None)

    return Source(batches, None, feeds)
