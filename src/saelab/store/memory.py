"""Source adapters for data in memory (tensors, labelled rows, rows with gradients,
`{hookpoint: tensor}`) and for iterables of batches."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import Tensor

from saelab.errors import ConfigError, DataError
from saelab.store.shuffle import tensor_batches
from saelab.store.sources import Batch, Feed, Labelled, Source, Want, WithGradients

SAMPLE = 1 << 16
"""Rows from which the mean squared norm of in-memory data is computed."""


def as_rows(batch) -> Batch:
    """A batch as a tuple of tensors (a tensor is one)."""
    return (batch,) if isinstance(batch, Tensor) else tuple(batch)


def from_rows(rows: Batch, extras: dict[str, Tensor], wants: list[Want], cfg,
              describe: dict | None = None) -> Source:
    """Shuffled batches of in-memory rows: x [N, d_in] or (x, target), then per-row `extras`
    that the loss receives by name. Every dictionary reads the same stream."""
    x = rows[0]
    for w in wants:
        if x.ndim != 2 or x.shape[1] != w.d_in:
            raise DataError(f"data has shape {tuple(x.shape)}; the dictionary expects "
                            f"[N, d_in={w.d_in}]")
    if x.shape[0] < cfg.batch_size:
        raise ConfigError(f"batch_size {cfg.batch_size} is larger than the {x.shape[0]} rows of "
                          f"data; lower batch_size")
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).any(1).nonzero()[0].item()
        raise DataError(f"data holds non-finite values (NaN or inf), first in row {bad}")
    sample = x[:SAMPLE].float()
    shuffled = tensor_batches((*rows, *extras.values()), cfg.batch_size, cfg.seed)
    info = {"kind": "tensor", "rows": int(x.shape[0]),
            "checksum": [float(sample.sum()), float(sample.pow(2).sum())], **(describe or {})}
    names = {name: len(rows) + i for i, name in enumerate(extras)}
    feed = Feed(0, 1 if len(rows) > 1 else None, names, float(sample.pow(2).sum(-1).mean()),
                info)
    return Source(shuffled.iterate, shuffled.batches_per_epoch(), [feed] * len(wants))


def from_labelled(data: Labelled, wants: list[Want], cfg) -> Source:
    rows = as_rows(data.x)
    labels = data.labels
    if not isinstance(labels, Tensor) or labels.ndim != 2 or labels.shape[0] != rows[0].shape[0]:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise DataError(f"labels have shape {shape}; expected [N={rows[0].shape[0]}, "
                        f"n_concepts], one row of labels per row of data")
    labels = labels.float()
    if not torch.isfinite(labels).all() or labels.min() < 0 or labels.max() > 1:
        raise DataError("labels must be finite values in [0, 1] (1: the concept is present)")
    return from_rows(rows, {"labels": labels}, wants, cfg, {"labels": int(labels.shape[1])})


def from_with_gradients(data: WithGradients, wants: list[Want], cfg) -> Source:
    rows = as_rows(data.x)
    grads = data.grads
    if not isinstance(grads, Tensor) or grads.shape != rows[0].shape:
        shape = tuple(grads.shape) if isinstance(grads, Tensor) else type(grads).__name__
        raise DataError(f"grads have shape {shape}; expected {tuple(rows[0].shape)}, one "
                        f"gradient d(loss)/d(x) per row of data")
    if not torch.isfinite(grads).all():
        raise DataError("grads hold non-finite values (NaN or inf); re-capture them")
    return from_rows(rows, {"grads": grads.float()}, wants, cfg, {"gradients": True})


def keyed_columns(wants: list[Want], what: str) -> tuple[list[str], list[tuple[int, int | None]]]:
    """(hookpoints a batch holds, (input, target) index of each dictionary) for keyed data."""
    columns: list[str] = []
    places = []
    for w in wants:
        if w.hookpoint is None:
            raise ConfigError(f"{what} is keyed by hookpoint: name the dictionary's hookpoint "
                              f"(fit_many({{hookpoint: dictionary}}, ...) or "
                              f"TrainConfig.hookpoint)")
        for key in filter(None, (w.hookpoint, w.target)):
            if key not in columns:
                columns.append(key)
        places.append((columns.index(w.hookpoint),
                       columns.index(w.target) if w.target else None))
    return columns, places


def from_mapping(data: Mapping, wants: list[Want], cfg) -> Source:
    """`{hookpoint: tensor [N, d]}` with row-aligned tensors (the same N)."""
    columns, places = keyed_columns(wants, "{hookpoint: tensor} data")
    missing = [k for k in columns if k not in data]
    if missing:
        raise DataError(f"the data has no rows for {', '.join(missing)}; it holds "
                        f"{', '.join(map(str, data))}")
    rows = tuple(data[k] for k in columns)
    n = rows[0].shape[0]
    if any(t.shape[0] != n for t in rows):
        raise DataError("the tensors of the hookpoints must be row-aligned (same number of rows)")
    if n < cfg.batch_size:
        raise ConfigError(f"batch_size {cfg.batch_size} is larger than the {n} rows of data; "
                          f"lower batch_size")
    shuffled = tensor_batches(rows, cfg.batch_size, cfg.seed)
    feeds = []
    for w, (i, t) in zip(wants, places):
        msn = float(rows[i][:SAMPLE].float().pow(2).sum(-1).mean())
        feeds.append(Feed(i, t, {}, msn, {"kind": "tensor", "hookpoint": w.hookpoint,
                                          "rows": int(n)}))
    return Source(shuffled.iterate, shuffled.batches_per_epoch(), feeds)


def from_iterable(data: Iterable, wants: list[Want]) -> Source:
    """Batches as the iterable gives them, in its order: a tensor or (x, target) tuple per batch
    (one dictionary), or a `{hookpoint: tensor}` dict (any number). A resumed run skips the
    batches before its step."""
    positional = len(wants) == 1 and wants[0].hookpoint is None
    columns, places = ([], [(0, 1)]) if positional else keyed_columns(wants, "an iterable of "
                                                                             "dict batches")

    def batches(start: int) -> Iterator[Batch]:
        for b in itertools.islice(iter(data), start, None):
            if isinstance(b, Mapping):
                missing = [k for k in columns if k not in b]
                if missing or not columns:
                    raise DataError(f"a batch of the iterable holds {', '.join(map(str, b))}, "
                                    f"not the hookpoints {', '.join(columns) or '(none named)'}")
                yield tuple(b[k] for k in columns)
            elif len(wants) > 1:
                raise DataError("with several dictionaries, each batch of the iterable must be "
                                "a {hookpoint: tensor} dict")
            else:
                yield as_rows(b)

    per_epoch = len(data) if hasattr(data, "__len__") else None
    feeds = [Feed(i, t, {}, None, {"kind": "iterable", **({"hookpoint": w.hookpoint}
                                                          if w.hookpoint else {})})
             for w, (i, t) in zip(wants, places)]
    return Source(batches, per_epoch, feeds)
