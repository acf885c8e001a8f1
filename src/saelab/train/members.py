"""The dictionaries one training run trains together (its members), and where each is saved."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from saelab.dictionaries import Dictionary
from saelab.errors import ConfigError
from saelab.train.config import TrainConfig

SHARED = ("batch_size", "steps", "epochs", "order", "buffer_rows", "shard_store")
"""Settings of the data stream, the same for every member: set them in the shared config."""


class Member(NamedTuple):
    """One dictionary of a run and its settings."""

    hookpoint: str | None
    """Hookpoint it trains on (None: the data's only one)."""
    dictionary: Dictionary
    """The dictionary, trained in place."""
    cfg: TrainConfig
    """Its settings: lr, schedule, seed of its random stream, dead window, out folder, ..."""


def run_folder(out: str | Path, hookpoint: str, index: int | None = None) -> Path:
    """Folder of the run of one dictionary at `hookpoint` under a shared `out`: the hookpoint
    with every character other than letters, digits, '.', '_' and '-' replaced by '_' (no ':'
    or path separators), then `-index` when several dictionaries share the hookpoint."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", hookpoint)
    return Path(out) / (safe if index is None else f"{safe}-{index}")


def members_of(targets: Mapping[str, Dictionary | tuple | Sequence],
               config: TrainConfig) -> list[Member]:
    """The members of `fit_many(targets, source, config)`, each with its out folder resolved: an
    entry `(dictionary, cfg)` keeps `cfg.out` when it sets one other than `config.out`; every
    other member is saved in `run_folder(config.out, hookpoint, i)` (i only where several
    dictionaries share a hookpoint), or nowhere without `config.out`."""
    if not targets:
        raise ConfigError("fit_many: no dictionaries given")
    members = []
    for key, value in targets.items():
        items = [value] if isinstance(value, (Dictionary, tuple)) else list(value)
        for j, item in enumerate(items):
            sae, cfg = item if isinstance(item, tuple) else (item, config)
            if not isinstance(sae, Dictionary) or not isinstance(cfg, TrainConfig):
                raise ConfigError(f"fit_many: {key!r} holds a {type(sae).__name__}; give a "
                                  f"dictionary, a (dictionary, TrainConfig) pair or a list of them")
            if not cfg.out or cfg.out == config.out:
                out = run_folder(config.out, key, j if len(items) > 1 else None) \
                    if config.out else None
                cfg = replace(cfg, out=None if out is None else str(out))
            members.append(Member(key, sae, cfg))
    check_members(members, config)
    return members


def check_members(members: list[Member], config: TrainConfig) -> None:
    """Every member is trained by gradient, shares the data settings, and has its own folder."""
    for m in members:
        if m.dictionary.trained_by != "gradient":
            raise ConfigError(f"{m.dictionary.architecture} is not trained by gradient; fit it "
                              f"alone with saelab.fit")
        differ = [f for f in SHARED if getattr(m.cfg, f) != getattr(config, f)]
        if differ:
            raise ConfigError(f"{', '.join(differ)}: shared by every dictionary trained "
                              f"together (they read one stream of batches); set them in the "
                              f"shared config only")
    outs = [m.cfg.out for m in members if m.cfg.out]
    twice = sorted({o for o in outs if outs.count(o) > 1})
    if twice:
        raise ConfigError(f"several dictionaries would be saved in {', '.join(twice)}; give each "
                          f"its own out")


def shaped_like(targets: Mapping, trained: list[Dictionary]) -> dict:
    """`targets`' shape ({hookpoint: dictionary or list}) holding the trained dictionaries in
    place of the dictionaries and the (dictionary, cfg) pairs."""
    it = iter(trained)
    out: dict = {}
    for key, value in targets.items():
        single = isinstance(value, (Dictionary, tuple))
        out[key] = next(it) if single else [next(it) for _ in value]
    return out
