"""Turning what the user passes to `fit` (a tensor, a store folder, an iterable of batches) into
one kind of training data: batches from any position, batches per epoch, and the input scale."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

import torch
from torch import Tensor

from saelab.errors import ConfigError, DataError
from saelab.store import ActivationStore, ShuffledBatches, is_store, tensor_batches
from saelab.store.reader import acts_name

Batch = tuple[Tensor, ...]


class TrainData(NamedTuple):
    """Training data, whatever its origin."""

    batches: Callable[[int], Iterator[Batch]]
    """Batches from a global batch index on (deterministic)."""
    per_epoch: int | None
    """Batches in one pass, if known."""
    mean_sq_norm: float | None
    """Mean squared norm of the inputs, if known without reading batches."""
    describe: dict
    """Provenance (kind, rows, path, hookpoint, ...)."""
    extras: tuple[str, ...] = ()
    """Names of the per-row tensors that end each batch, after the rows: "labels" (see
    `Labelled`), "grads" (see `WithGradients`). The loop passes them to the loss as
    `StepState.extra[name]`."""

    @property
    def labelled(self) -> bool:
        """Whether each batch carries per-row labels."""
        return "labels" in self.extras


@dataclass(frozen=True)
class Labelled:
    """Rows with per-row concept labels, for dictionaries trained with supervision (`guided`):
    `fit(sae, Labelled(x, labels))`. `x` is a tensor [N, d_in] or an (x, target) tuple, `labels` a
    tensor [N, n_concepts] with values in [0, 1]. The loop passes each batch's labels to the loss
    as `StepState.extra["labels"]`."""

    x: Tensor | tuple[Tensor, ...]
    labels: Tensor


@dataclass(frozen=True)
class WithGradients:
    """Rows with the gradient of the model's loss with respect to each row, for gradient-guided
    dictionaries (`gsae_gradient`): `fit(sae, WithGradients(x, grads))`. `x` is a tensor
    [N, d_in], `grads` d(loss)/d(x) [N, d_in] (e.g. from saelab.capture.gradients). The loop
    passes each batch's gradients to the loss as `StepState.extra["grads"]`."""

    x: Tensor | tuple[Tensor, ...]
    grads: Tensor


def split_extras(batch: Batch, data: TrainData) -> tuple[Batch, dict[str, Tensor]]:
    """(rows, {name: tensor}) of a batch: the named per-row tensors are its last ones."""
    n = len(data.extras)
    if not n:
        return batch, {}
    return batch[:-n], dict(zip(data.extras, batch[-n:]))


def _as_rows(batch) -> Batch:
    return (batch,) if isinstance(batch, Tensor) else tuple(batch)


def check_batch(batch: Batch, d_in: int, d_out: int, step: int, where: str) -> None:
    """Shape and finiteness checks with a message naming the step and the source."""
    x = batch[0]
    if x.ndim != 2 or x.shape[1] != d_in:
        raise DataError(f"batch at step {step} from {where} has shape {tuple(x.shape)}; the "
                        f"dictionary expects [batch, d_in={d_in}]")
    if len(batch) > 1 and (batch[1].ndim != 2 or batch[1].shape[1] != d_out):
        raise DataError(f"target batch at step {step} from {where} has shape "
                        f"{tuple(batch[1].shape)}; expected [batch, d_out={d_out}]")
    for t in batch:
        if not torch.isfinite(t).all():
            raise DataError(f"non-finite activations (NaN or inf) in the batch at step {step} "
                            f"from {where}; clean or re-capture the data")


def store_keys(store: ActivationStore, key: str, cfg, gradients: bool) -> list[str]:
    """Store hookpoints read per batch: the input, the target (transcoders), and with
    `gradients` the input's loss gradients `<key>.grad` where the store holds them."""
    from saelab.capture.gradients import gradient_key

    keys = [key]
    if cfg.target_hookpoint:
        keys.append(store.hookpoint(cfg.target_hookpoint))
    if gradients and gradient_key(key) in store.hookpoints:
        keys.append(gradient_key(key))
    return keys


def from_store(store: ActivationStore, d_in: int, cfg, gradients: bool = False) -> TrainData:
    key = store.hookpoint(cfg.hookpoint)
    if store.d(key) != d_in:
        raise DataError(f"store {store.path} has d={store.d(key)} at {key!r}, but the dictionary "
                        f"has d_in={d_in}; create the dictionary with d_in={store.d(key)}")
    keys = store_keys(store, key, cfg, gradients)
    shuffled = store.shuffled_hookpoints(keys, cfg.batch_size, cfg.seed, cfg.buffer_rows)
    describe = {"kind": "store", "path": str(store.path), "model": store.model,
                "hookpoint": key, "rows": store.n_rows,
                "exclusion": store.manifest.get("exclusion")}
    if cfg.target_hookpoint:
        describe["target_hookpoint"] = cfg.target_hookpoint
    extras = ("grads",) if len(keys) > 1 + bool(cfg.target_hookpoint) else ()
    if extras:
        describe["gradient_hookpoint"] = keys[-1]
    return TrainData(shuffled.iterate, shuffled.batches_per_epoch(),
                     store.mean_squared_norm(key), describe, extras)


def from_store_shards(store: ActivationStore, d_in: int, cfg, group,
                      gradients: bool = False) -> TrainData:
    """Data parallelism over a store: rank r reads only shards r, r + world, ... and draws batches
    of batch_size / world rows from them (the global batch is the union over the ranks)."""
    data = from_store(store, d_in, cfg, gradients)  # checks, provenance, whole-store statistics
    shards = store.manifest["shards"]
    mine = list(range(group.rank, len(shards), group.world))
    local = cfg.batch_size // group.world
    sizes = [shards[i]["rows"] for i in mine]
    if sum(sizes) < local:
        raise ConfigError(f"store {store.path} has {len(shards)} shards; rank {group.rank} of "
                          f"{group.world} gets {sum(sizes)} rows, fewer than its batch of {local}; "
                          f"pass shard_store=False (--no-shard-store) so that every rank reads "
                          f"every shard and keeps its slice of each batch")
    names = [acts_name(k) for k in store_keys(store, data.describe["hookpoint"], cfg,
                                              bool(data.extras))]
    shuffled = ShuffledBatches(sizes, lambda j: tuple(store.read_shard(mine[j], names)), local,
                               cfg.buffer_rows, cfg.seed)
    describe = {**data.describe, "ranks": group.world, "shard_store": True}
    return TrainData(shuffled.iterate, shuffled.batches_per_epoch(), data.mean_sq_norm, describe,
                     data.extras)


def sharded(data: TrainData, group) -> TrainData:
    """Data parallelism by slicing: every rank walks the same stream of global batches and keeps
    its slice of each (the global batch is that of one process)."""
    def batches(start: int) -> Iterator[Batch]:
        return (group.shard(b) for b in data.batches(start))

    return data._replace(batches=batches)


def from_tensor(rows: Batch, d_in: int, cfg) -> TrainData:
    x = rows[0]
    if x.ndim != 2 or x.shape[1] != d_in:
        raise DataError(f"data has shape {tuple(x.shape)}; the dictionary expects "
                        f"[N, d_in={d_in}]")
    if x.shape[0] < cfg.batch_size:
        raise ConfigError(f"batch_size {cfg.batch_size} is larger than the {x.shape[0]} rows of "
                          f"data; lower batch_size")
    sample = x[:1 << 16].float()
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).any(1).nonzero()[0].item()
        raise DataError(f"data holds non-finite values (NaN or inf), first in row {bad}")
    shuffled = tensor_batches(rows, cfg.batch_size, cfg.seed)
    describe = {"kind": "tensor", "rows": int(x.shape[0]),
                "checksum": [float(sample.sum()), float(sample.pow(2).sum())]}
    return TrainData(shuffled.iterate, shuffled.batches_per_epoch(),
                     float(sample.pow(2).sum(-1).mean()), describe)


def from_labelled(data: Labelled, d_in: int, cfg) -> TrainData:
    rows = _as_rows(data.x)
    labels = data.labels
    if not isinstance(labels, Tensor) or labels.ndim != 2 or labels.shape[0] != rows[0].shape[0]:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise DataError(f"labels have shape {shape}; expected [N={rows[0].shape[0]}, "
                        f"n_concepts], one row of labels per row of data")
    labels = labels.float()
    if not torch.isfinite(labels).all() or labels.min() < 0 or labels.max() > 1:
        raise DataError("labels must be finite values in [0, 1] (1: the concept is present)")
    data_ = from_tensor((*rows, labels), d_in, cfg)
    return data_._replace(extras=("labels",),
                          describe={**data_.describe, "labels": int(labels.shape[1])})


def from_with_gradients(data: WithGradients, d_in: int, cfg) -> TrainData:
    rows = _as_rows(data.x)
    grads = data.grads
    if not isinstance(grads, Tensor) or grads.shape != rows[0].shape:
        shape = tuple(grads.shape) if isinstance(grads, Tensor) else type(grads).__name__
        raise DataError(f"grads have shape {shape}; expected {tuple(rows[0].shape)}, one "
                        f"gradient d(loss)/d(x) per row of data")
    if not torch.isfinite(grads).all():
        raise DataError("grads hold non-finite values (NaN or inf); re-capture them")
    data_ = from_tensor((*rows, grads.float()), d_in, cfg)
    return data_._replace(extras=("grads",), describe={**data_.describe, "gradients": True})


def from_iterable(data: Iterable) -> TrainData:
    def batches(start: int) -> Iterator[Batch]:
        return (_as_rows(b) for b in itertools.islice(iter(data), start, None))

    per_epoch = len(data) if hasattr(data, "__len__") else None
    return TrainData(batches, per_epoch, None, {"kind": "iterable"})


def _store(data) -> ActivationStore:
    if isinstance(data, ActivationStore):
        return data
    if not is_store(data):
        raise DataError(f"{data} is not an activation store (no manifest.json); capture one "
                        f"with `saelab capture`")
    return ActivationStore(data)


def as_train_data(data, d_in: int, cfg, group=None, gradients: bool = False) -> TrainData:
    """Dispatch on the kind of `data`; with a data-parallel `group` (train/distributed.py), the
    batches are this rank's share of each global batch. With `gradients`, a store's loss
    gradients (`<hookpoint>.grad`, where it has them) are read along with the rows."""
    if getattr(cfg, "order", "shuffle") == "sequential":
        return sequential_train_data(data, d_in, cfg, group, gradients)
    if group is not None and group.active:
        if cfg.batch_size % group.world:
            raise ConfigError(f"batch_size {cfg.batch_size} is not a multiple of the "
                              f"{group.world} ranks")
        if cfg.shard_store and isinstance(data, (str, Path, ActivationStore)):
            return from_store_shards(_store(data), d_in, cfg, group, gradients)
        return sharded(as_train_data(data, d_in, cfg, gradients=gradients), group)
    if isinstance(data, (str, Path, ActivationStore)):
        return from_store(_store(data), d_in, cfg, gradients)
    if isinstance(data, Labelled):
        return from_labelled(data, d_in, cfg)
    if isinstance(data, WithGradients):
        return from_with_gradients(data, d_in, cfg)
    if isinstance(data, Tensor) or (isinstance(data, tuple) and data
                                    and all(isinstance(t, Tensor) for t in data)):
        return from_tensor(_as_rows(data), d_in, cfg)
    if isinstance(data, Iterable):
        return from_iterable(data)
    raise DataError(f"cannot train on a {type(data).__name__}: pass a tensor [N, d_in], an "
                    f"activation store folder, or an iterable of batches")


# --- FAST: whole sequences in store order (TrainConfig.order == "sequential") ------------------

def sequence_spans(ctx: Tensor, batch_size: int) -> list[tuple[int, int]]:
    """Row ranges [a, b) of the batches of a sequential pass over rows whose context ids are
    `ctx` (store order): each batch holds whole contexts, consecutive in the store, as many as fit
    in `batch_size` rows; a context longer than `batch_size` is split into consecutive pieces, each
    a batch of its own. Rows of one context are never spread over non-adjacent batches."""
    n = int(ctx.shape[0])
    if n == 0:
        return []
    cuts = (ctx[1:] != ctx[:-1]).nonzero().flatten().add(1).tolist()
    starts, ends = [0, *cuts], [*cuts, n]
    spans: list[tuple[int, int]] = []
    a = b = 0  # the batch being filled: rows [a, b)
    for s, e in zip(starts, ends):
        if e - s > batch_size:  # a long context: close the batch, then one batch per piece
            if b > a:
                spans.append((a, b))
            spans.extend((p, min(p + batch_size, e)) for p in range(s, e, batch_size))
            a = b = e
        elif e - a > batch_size:  # it does not fit: close the batch, start one with it
            spans.append((a, b))
            a, b = s, e
        else:
            b = e
    if b > a:
        spans.append((a, b))
    return spans


class SequentialBatches:
    """An endless, deterministic stream of batches over a store read in store order, whole
    contexts per batch (FAST, Li et al. 2025): no row-level shuffle, so a batch holds complete
    sequences with their rows in position order, and the next batch continues where it stopped.
    Batches hold at most `batch_size` rows (fewer where the next context does not fit). Each
    epoch repeats the same order. Memory: the shards a batch touches (one, or two at a seam)."""

    def __init__(self, store: ActivationStore, names: list[str], batch_size: int):
        self.store = store
        self.names = names
        ctx = store.row_index()["ctx"]
        self.spans = sequence_spans(ctx, batch_size)
        sizes = [s["rows"] for s in store.manifest["shards"]]
        self.offsets = torch.tensor([0, *itertools.accumulate(sizes)])
        self._cache: tuple[int, Batch] | None = None

    def batches_per_epoch(self) -> int:
        return len(self.spans)

    def _shard(self, i: int) -> Batch:
        if self._cache is None or self._cache[0] != i:
            self._cache = None  # drop the previous shard before reading the next
            self._cache = (i, tuple(self.store.read_shard(i, self.names)))
        return self._cache[1]

    def rows(self, a: int, b: int) -> Batch:
        """Rows [a, b) of the store (in store order)."""
        first = int(torch.searchsorted(self.offsets, a, right=True)) - 1
        parts: list[Batch] = []
        i = first
        while a < b:
            lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
            take = min(b, hi)
            parts.append(tuple(t[a - lo:take - lo] for t in self._shard(i)))
            a, i = take, i + 1
        if len(parts) == 1:
            return tuple(t.clone() for t in parts[0])
        return tuple(torch.cat(ts) for ts in zip(*parts))

    def iterate(self, start: int = 0) -> Iterator[Batch]:
        """Batches from global batch index `start` on (earlier ones are not read)."""
        n = len(self.spans)
        i = start
        while True:
            yield self.rows(*self.spans[i % n])
            i += 1


def sequential_train_data(data, d_in: int, cfg, group=None, gradients: bool = False) -> TrainData:
    """TrainData for `order="sequential"`: whole contexts of a store, in store order."""
    if group is not None and group.active:
        raise ConfigError("order='sequential' (FAST) reads the store in order in one process; "
                          "it does not run data parallel under torchrun: use order='shuffle'")
    if isinstance(data, (str, Path, ActivationStore)):
        store = _store(data)
        base = from_store(store, d_in, cfg, gradients)  # checks and provenance, no rows read
        keys = store_keys(store, base.describe["hookpoint"], cfg, bool(base.extras))
        seq = SequentialBatches(store, [acts_name(k) for k in keys], cfg.batch_size)
        describe = {**base.describe, "order": "sequential",
                    "batches_per_epoch": seq.batches_per_epoch()}
        return base._replace(batches=seq.iterate, per_epoch=seq.batches_per_epoch(),
                             describe=describe)
    if isinstance(data, Iterable) and not isinstance(data, (Tensor, tuple)):
        return from_iterable(data)  # batches are used as given, in the iterable's own order
    raise ConfigError(f"order='sequential' (FAST) needs an activation store, whose rows carry "
                      f"their context and position; a {type(data).__name__} has no sequence "
                      f"boundaries: pass the store folder, or use order='shuffle'")
