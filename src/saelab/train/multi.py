"""Many dictionaries from one pass over the data: `fit_many({hookpoint: dictionaries}, source)`.

One model forward (or one read of a multi-hookpoint store) yields a batch holding the same token
positions at every hookpoint; each batch is fed to every dictionary. Each dictionary keeps its
own optimiser, learning-rate schedule, input scale, dead-latent counters and random-number
stream, and takes its step with the single training step of `saelab.fit` (train/step.py through
the loop's `_one_step`), so a dictionary trained here ends with the same weights as one trained
alone by `saelab.fit` on the same batches.

Sources:
- `LiveSource(model, tokens)`: activations captured on the fly (saelab.store.stream_batches), one
  forward per `batch_contexts` contexts, stopped after the deepest hookpoint; one pass.
- an activation store (folder or ActivationStore) holding the hookpoints: each shard group is
  read once for all of them.
- `{hookpoint: tensor [N, d]}` with row-aligned tensors, in memory.
- any iterable of `{hookpoint: tensor [B, d]}` batches.

No checkpoints are written here (a live stream cannot be resumed mid-pass); with `config.out`,
each dictionary gets its folder `out/<hookpoint>[-i]/` with metrics.jsonl and the final sae/.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from saelab.dictionaries._base import Dictionary
from saelab.errors import ConfigError, DataError, OutputExistsError
from saelab.train.config import TrainConfig
from saelab.train.data import TrainData, check_batch
from saelab.train.loop import _finish, _log_row, _one_step, _Run
from saelab.train.optim import lr_factor

log = logging.getLogger(__name__)


@dataclass
class LiveSource:
    """Activations captured from a model while training (no disk)."""

    model: nn.Module
    """The model whose hookpoints are read."""
    tokens: Tensor
    """Contexts [N, T] of token ids, read once in order."""
    model_name: str = "model"
    """Name recorded in each dictionary's provenance."""
    batch_contexts: int = 8
    """Contexts per model forward."""
    buffer_rows: int = 1 << 16
    """Rows held in the shuffling buffer."""
    special_ids: list[int] | None = None
    """Token ids left out (BOS, EOS, separators)."""
    norm_factor: float | None = 5.0
    """Rows whose norm exceeds this multiple of the median norm are left out (None: keep all)."""


@dataclass
class _Source:
    """What the members need from the shared source."""

    keys: list[str]
    batches: Callable[[], Iterator[tuple[Tensor, ...]]]
    per_epoch: int | None
    mean_sq_norm: dict[str, float | None]
    describe: dict[str, dict]


def fit_many(targets: Mapping[str, Dictionary | Sequence], source,
             config: TrainConfig | None = None) -> dict:
    """Train every dictionary of `targets` from one pass over `source` (see the module doc).

    `targets` maps a hookpoint to a dictionary or a list of them; an entry may be a
    `(dictionary, TrainConfig)` pair to give that dictionary its own lr, warm-up, decay, seed of
    its sampling, dead-latent window or out folder (batch_size and steps are shared, and the data
    order follows `config.seed`). Returns `targets`' shape with the trained dictionaries (also
    trained in place), in the units of the raw data.
    """
    cfg = config or TrainConfig()
    entries = _entries(targets, cfg)
    src = _source(source, list(dict.fromkeys(key for key, _, _ in entries)), cfg)
    steps = _total_steps(cfg, src)
    members = [_member(key, sae, mcfg, src, steps) for key, sae, mcfg in entries]
    batches = src.batches()
    first = next(batches, None)
    if first is None:
        raise DataError("the source yielded no batch")
    for run in members:
        _initialise(run, first[src.keys.index(run.key)])
    _loop(members, src, _chain(first, batches), steps, cfg)
    for run in members:
        _finish(run)
    out: dict = {}
    for key, value in targets.items():
        out[key] = value if isinstance(value, Dictionary) else [
            v[0] if isinstance(v, tuple) else v for v in value]
    return out


def _entries(targets, cfg: TrainConfig) -> list[tuple[str, Dictionary, TrainConfig]]:
    if not targets:
        raise ConfigError("fit_many: no dictionaries given")
    entries = []
    for key, value in targets.items():
        items = [value] if isinstance(value, (Dictionary, tuple)) else list(value)
        for j, item in enumerate(items):
            sae, mcfg = item if isinstance(item, tuple) else (item, cfg)
            if mcfg is cfg and cfg.out:
                mcfg = replace(cfg, out=str(member_out(cfg.out, key,
                                                       j if len(items) > 1 else None)))
            if not isinstance(sae, Dictionary):
                raise ConfigError(f"fit_many: {key!r} holds a {type(sae).__name__}, not a "
                                  f"dictionary")
            if sae.trained_by != "gradient":
                raise ConfigError(f"fit_many: {sae.architecture} is not trained by gradient; "
                                  f"fit it with saelab.fit")
            if mcfg.batch_size != cfg.batch_size or mcfg.steps != cfg.steps:
                raise ConfigError("fit_many: batch_size and steps are shared by every "
                                  "dictionary; set them in the shared config only")
            if mcfg.target_hookpoint:
                raise ConfigError("fit_many: transcoders (target_hookpoint) are not supported; "
                                  "train them with saelab.fit")
            entries.append((key, sae, mcfg))
    return entries


def _source(source, keys: list[str], cfg: TrainConfig) -> _Source:
    from saelab.store import ActivationStore, is_store, stream_batches, tensor_batches

    if isinstance(source, (str, Path)):
        if not is_store(source):
            raise DataError(f"{source} is not an activation store (no manifest.json)")
        source = ActivationStore(source)
    if isinstance(source, LiveSource):
        from saelab.capture import resolve

        for key in keys:
            found = [hp.key for hp in resolve(source.model, [key])]
            if found != [key]:
                raise ConfigError(f"fit_many: hookpoint {key!r} must name one hookpoint of the "
                                  f"model exactly (it resolves to {', '.join(found)})")
        order = [hp.key for hp in resolve(source.model, keys)]

        def live() -> Iterator[tuple[Tensor, ...]]:
            for b in stream_batches(source.model, source.tokens, order, cfg.batch_size,
                                    buffer_rows=source.buffer_rows,
                                    batch_contexts=source.batch_contexts,
                                    special_ids=source.special_ids,
                                    norm_factor=source.norm_factor, seed=cfg.seed):
                yield tuple(b[order.index(k)] for k in keys)

        describe = {k: {"kind": "live", "model": source.model_name, "hookpoint": k,
                        "contexts": int(source.tokens.shape[0]),
                        "context_len": int(source.tokens.shape[1])} for k in keys}
        return _Source(keys, live, None, dict.fromkeys(keys), describe)
    if isinstance(source, ActivationStore):
        shuffled = source.shuffled_hookpoints(keys, cfg.batch_size, cfg.seed, cfg.buffer_rows)
        describe = {k: {"kind": "store", "path": str(source.path), "model": source.model,
                        "hookpoint": k, "rows": source.n_rows,
                        "exclusion": source.manifest.get("exclusion")} for k in keys}
        return _Source(keys, shuffled.iterate, shuffled.batches_per_epoch(),
                       {k: source.mean_squared_norm(k) for k in keys}, describe)
    if isinstance(source, Mapping):
        missing = [k for k in keys if k not in source]
        if missing:
            raise DataError(f"fit_many: the data has no rows for {', '.join(missing)}")
        rows = tuple(source[k] for k in keys)
        if len({t.shape[0] for t in rows}) != 1:
            raise DataError("fit_many: the tensors of the hookpoints must be row-aligned (same "
                            "number of rows)")
        shuffled = tensor_batches(rows, cfg.batch_size, cfg.seed)
        msn = {k: float(t[:1 << 16].float().pow(2).sum(-1).mean()) for k, t in zip(keys, rows)}
        describe = {k: {"kind": "tensor", "hookpoint": k, "rows": int(rows[0].shape[0])}
                    for k in keys}
        return _Source(keys, shuffled.iterate, shuffled.batches_per_epoch(), msn, describe)
    if isinstance(source, Iterable):
        def batches() -> Iterator[tuple[Tensor, ...]]:
            for b in source:
                yield tuple(b[k] for k in keys)

        per_epoch = len(source) if hasattr(source, "__len__") else None
        return _Source(keys, batches, per_epoch, dict.fromkeys(keys),
                       {k: {"kind": "iterable", "hookpoint": k} for k in keys})
    raise DataError(f"fit_many cannot read a {type(source).__name__}: pass a LiveSource, a "
                    f"store folder, {{hookpoint: tensor}} or an iterable of such batches")


def _total_steps(cfg: TrainConfig, src: _Source) -> int:
    if cfg.steps is not None:
        return cfg.steps
    if src.per_epoch is None:
        raise ConfigError("steps: the number of batches of this source is not known in advance "
                          "(a live stream or an iterable); give steps")
    return max(1, math.ceil(cfg.epochs * src.per_epoch))


def _member(key: str, sae: Dictionary, mcfg: TrainConfig, src: _Source, steps: int) -> _Run:
    data = TrainData(None, src.per_epoch, src.mean_sq_norm[key], src.describe[key])
    run = _Run(sae, mcfg, data, steps)
    run.key = key
    run.source = f"hookpoint {key!r} of the {src.describe[key]['kind']} source"
    torch.manual_seed(mcfg.seed)  # as saelab.fit does; each member then keeps its own stream
    run.rng = _rng_state(run.device)
    if run.out is not None:
        if run.out.exists() and any(run.out.iterdir()):
            if not mcfg.overwrite:
                raise OutputExistsError(f"{run.out} is not empty; pass overwrite=True or "
                                        f"choose another folder")
            shutil.rmtree(run.out)
        run.out.mkdir(parents=True, exist_ok=True)
    sae.provenance.setdefault("hookpoint", key)
    if "model" in src.describe[key]:
        sae.provenance.setdefault("model", src.describe[key]["model"])
    return run


def _rng_state(device: torch.device) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _initialise(run: _Run, x: Tensor) -> None:
    """Input scale and decoder-bias initialisation, as saelab.fit does on a fresh run."""
    sae = run.dictionary
    check_batch((x,), sae.d_in, sae.d_out, 0, run.source)
    msn = run.data.mean_sq_norm
    if msn is None:
        msn = float(x.float().pow(2).sum(-1).mean())
    if run.cfg.normalize:
        if not msn > 0:
            raise DataError(f"{run.source}: the data is all zeros: nothing to learn")
        run.scale = run.target_scale = 1.0 / math.sqrt(msn)
    if run.cfg.init_b_dec:
        _set_rng(run.rng, run.device)
        sae.init_from_data(x.to(run.device).float() * run.scale)
        run.rng = _rng_state(run.device)
    sae.train()


def _chain(first, rest: Iterator) -> Iterator:
    yield first
    yield from rest


def _loop(members: list[_Run], src: _Source, batches: Iterator, steps: int,
          cfg: TrainConfig) -> None:
    """Each batch once, to every member: lr schedule, then the loop's own step."""
    bar = tqdm(total=steps, desc=f"train {len(members)} dictionaries", unit="step",
               disable=not cfg.progress)
    with contextlib.ExitStack() as files:
        for run in members:
            run.metrics = (files.enter_context(open(run.out / "metrics.jsonl", "w"))
                           if run.out else None)
        for step in range(steps):
            batch = next(batches, None)
            if batch is None:
                log.warning("data ran out at step %d of %d", step, steps)
                break
            moved: dict = {}
            for run in members:
                i = src.keys.index(run.key)
                x = moved.get((i, run.device))
                if x is None:
                    x = moved[(i, run.device)] = batch[i].to(run.device)
                check_batch((x,), run.dictionary.d_in, run.dictionary.d_out, step, run.source)
                warmup = min(run.cfg.warmup_steps, steps // 10)
                for group in run.optimizer.param_groups:
                    group["lr"] = run.cfg.learning_rate * lr_factor(step, steps, warmup,
                                                                     run.cfg.decay_start)
                _set_rng(run.rng, run.device)
                loss = _one_step(run, (x,))
                run.rng = _rng_state(run.device)
                run.step += 1
                if run.metrics and (run.step % run.cfg.log_every == 0 or run.step == steps):
                    row = _log_row(run, loss, x.shape[0])
                    run.metrics.write(json.dumps({"hookpoint": run.key, **row}) + "\n")
            bar.update(1)
        bar.close()


def member_out(out: str | Path, key: str, index: int | None) -> Path:
    """Folder of one dictionary under a shared `out`: the hookpoint, made a safe name."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in key)
    return Path(out) / (safe if index is None else f"{safe}-{index}")
