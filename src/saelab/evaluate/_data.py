"""What `evaluate` was given as data, turned into the activation stream the families read."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

from torch import Tensor

from saelab.errors import ConfigError
from saelab.evaluate._base import Batch
from saelab.interpret.hookpoint import check_hookpoint
from saelab.store import ActivationStore, is_store


class Data(NamedTuple):
    """The activation stream of one evaluation."""

    batches: Callable[[], Iterable[Batch]] | None
    """A fresh iterator over (x, target) batches on each call (an iterable given as data can
    only be read once); None without data."""
    mean: Tensor | None
    """Mean of the target activation [d_out], when the data tells it."""
    hookpoint: str | None
    """Hookpoint the dictionary reads (for a store, the one `check_hookpoint` chose)."""
    target_hookpoint: str | None
    """Hookpoint a transcoder predicts (checked against a store)."""
    describe: dict[str, Any]
    """What the data was, for the report's meta."""
    store: ActivationStore | None = None
    """The activation store the stream reads, when the data was one (for families that read its
    row metadata, e.g. the image of each row); else None."""


def _pair(data: Any) -> bool:
    return isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data)


def _split(x: Tensor, y: Tensor, size: int) -> Callable[[], Iterable[Batch]]:
    return lambda: (Batch(a.float(), b.float()) for a, b in zip(x.split(size), y.split(size)))


def _from_store(store: ActivationStore, dictionary, hookpoint: str | None,
                target: str | None, size: int, allow_mismatch: bool) -> Data:
    key = check_hookpoint(dictionary, store.hookpoints, hookpoint, allow_mismatch)
    target = store.hookpoint(target) if target is not None else None

    def batches() -> Iterable[Batch]:
        xs = (acts for acts, _ in store.iter_rows(key, size))
        ys = (acts for acts, _ in store.iter_rows(target, size)) if target else None
        for x, y in zip(xs, ys) if ys is not None else ((x, x) for x in xs):
            yield Batch(x.float(), y.float())

    describe = {"kind": "store", "path": str(store.path), "model": store.model,
                "rows": store.n_rows}
    return Data(batches, store.mean(target or key), key, target, describe, store)


def prepare(dictionary, data: Any, hookpoint: str | None, target_hookpoint: str | None,
            batch_size: int, allow_hookpoint_mismatch: bool,
            allow_incomplete_store: bool = False) -> Data:
    """The stream of `data` (None, a tensor [N, d_in], (x, y) tensors, a store or its folder, or
    an iterable of tensors or (x, y) pairs), checked against what `dictionary` reads."""
    if data is None:
        return Data(None, None, hookpoint, target_hookpoint, {"kind": "none"})
    if "target" in dictionary.needs and target_hookpoint is None and not _pair(data):
        raise ConfigError(f"{dictionary.architecture} predicts another activation: pass "
                          f"target_hookpoint (a store) or (x, y) tensors to evaluate it")
    if isinstance(data, (str, Path)) and is_store(data):
        data = ActivationStore(data)
    if isinstance(data, ActivationStore):
        data.require_complete(allow_incomplete_store, "evaluation")
        return _from_store(data, dictionary, hookpoint, target_hookpoint, batch_size,
                           allow_hookpoint_mismatch)
    if isinstance(data, Tensor):
        return Data(_split(data, data, batch_size), data.float().mean(0), hookpoint,
                    target_hookpoint, {"kind": "tensor", "rows": int(data.shape[0])})
    if _pair(data):
        return Data(_split(*data, batch_size), data[1].float().mean(0), hookpoint,
                    target_hookpoint, {"kind": "tensors", "rows": int(data[0].shape[0])})
    if isinstance(data, (str, Path)):
        raise ConfigError(f"{data} is not an activation store (no manifest.json); capture one "
                          f"with `saelab capture`")
    if not isinstance(data, Iterable):
        raise ConfigError(f"evaluate cannot read a {type(data).__name__}: pass a tensor, (x, y) "
                          f"tensors, an activation store or an iterable of batches")

    def batches() -> Iterable[Batch]:
        for b in data:
            x, y = (b, b) if isinstance(b, Tensor) else tuple(b)
            yield Batch(x.float(), y.float())

    return Data(batches, None, hookpoint, target_hookpoint, {"kind": "iterable"})
