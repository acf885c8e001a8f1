"""The one training loop: `fit(dictionary, data, config)` and `fit_many(targets, source, config)`.

Both call `train(members, data, config)`: `fit` with one member, `fit_many` with many. The loop
reads each batch once (from a tensor, an activation store, a live model or any iterable, see
saelab.store.sources) and feeds it to every member (a `Run`, train/run.py). Each member keeps
its own optimiser, schedule, input scale, dead-latent counters and random stream, so a
dictionary trained beside others ends with the same weights as one trained alone on the same
batches. Inputs are normalised to unit mean squared norm, Adam steps with warm-up and decay,
decoder rows kept at unit norm, metrics logged (train/logs.py), checkpoints written, and a
killed run resumes exactly from its checkpoint. Under torch.distributed (torchrun) the same
loop trains data-parallel: see train/distributed.py.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from tqdm.auto import tqdm

from saelab.config import to_dict
from saelab.dictionaries import Dictionary, Rows
from saelab.errors import ConfigError, DataError
from saelab.store import ActivationStore, Source, Want, open_source
from saelab.store.sources import Batch
from saelab.train.config import TrainConfig
from saelab.train.folder import check_not_an_input, locked, prepare
from saelab.train.group import Group
from saelab.train.lifecycle import finish, initialise, open_folder, record_provenance, sync_start
from saelab.train.logs import Logs, check_log_to
from saelab.train.members import Member, members_of, shaped_like
from saelab.train.run import Run

log = logging.getLogger(__name__)


def fit(dictionary: Dictionary, data, config: TrainConfig | None = None) -> Dictionary:
    """Train `dictionary` on `data`: a tensor [N, d_in], an (x, target) tuple, `Labelled`,
    `WithGradients`, a store folder, or an iterable of batches.

    Returns the dictionary, trained in place, in the units of the raw data. With `config.out`,
    writes checkpoints, metrics.jsonl and the final `sae/` folder there, and resumes a killed
    run. A dictionary not trained by gradient (`trained_by == "fit"`) is fitted by its own
    `fit` on the batches."""
    cfg = config or TrainConfig()
    if dictionary.trained_by == "model":
        raise ConfigError(f"{dictionary.architecture} is read from a model's weights, not "
                          f"trained: build it from the model (see its documentation) and "
                          f"evaluate or save it directly")
    if dictionary.trained_by != "gradient":
        return fit_by_itself(dictionary, data, cfg)
    (trained,) = train([Member(cfg.hookpoint, dictionary, cfg)], data, cfg)
    return trained


def fit_by_itself(dictionary: Dictionary, data, cfg: TrainConfig) -> Dictionary:
    """A dictionary with its own `fit` (`trained_by == "fit"`) reads `cfg.steps` batches, or
    `cfg.epochs` passes over data of known length, or an iterable to its end. With `cfg.out`,
    the folder is locked and prepared as for a gradient run and the result saved in `out/sae`
    (no checkpoints: a killed fit starts again)."""
    source = open_source(data, [want_of(Member(cfg.hookpoint, dictionary, cfg))], cfg)
    feed = source.feeds[0]
    if "labels" in dictionary.needs and "labels" not in feed.extras:
        raise ConfigError(f"{dictionary.architecture} is fitted to concept labels; pass "
                          f"saelab.train.Labelled(x, labels)")
    batches = source.batches(0)  # epochs repeat without end: bounded here
    if cfg.steps is not None or source.per_epoch is not None:
        batches = itertools.islice(batches, total_steps(cfg, source, Group()))
    out = Path(cfg.out) if cfg.out else None
    inputs = [str(getattr(data, "path", data))] if isinstance(data, (str, Path, ActivationStore)) \
        else []
    with contextlib.ExitStack() as held:
        if out is not None:
            check_not_an_input(out, inputs)
            held.enter_context(locked(out))
            prepare(out, {"fit": {"architecture": dictionary.architecture,
                                  **to_dict(dictionary.cfg)}, "data": feed.describe},
                    cfg.overwrite)
        seen = [0]

        def counted(batch):
            rows = rows_of(feed, batch)
            seen[0] += rows.x.shape[0]
            return rows

        dictionary.fit(counted(b) for b in batches)
        record_provenance(dictionary, feed.describe, {
            "train": to_dict(cfg), "vectors_read": seen[0]})
        if out is not None:
            dictionary.save(out / "sae")
    return dictionary


def rows_of(feed, batch: Batch) -> Rows:
    """One batch as the `Rows` a dictionary's own `fit` reads."""
    x, target, extras = feed.split(batch)
    return Rows(x, target, extras.get("labels"))


def fit_many(targets: Mapping[str, Dictionary | tuple | Sequence], source,
             config: TrainConfig | None = None) -> dict:
    """Train every dictionary of `targets` from one pass over `source`.

    `targets` maps a hookpoint to a dictionary, a `(dictionary, TrainConfig)` pair, or a list of
    them. A pair's config gives that dictionary its own lr, warm-up, decay, seed of its random
    stream, dead-latent window, precision, target hookpoint (transcoders) or out folder; the
    data settings (batch_size, steps, epochs, order, buffer_rows, shard_store) are shared and the
    data order follows `config.seed`. `source`: a `LiveSource(model, tokens)`, a store folder or
    ActivationStore, `{hookpoint: tensor [N, d]}`, or an iterable of `{hookpoint: tensor}`.

    Returns `targets`' shape holding the trained dictionaries (a pair comes back as its
    dictionary), trained in place, in the units of the raw data. With `config.out`, each is saved
    in `run_folder(config.out, hookpoint, i)` (i where several share a hookpoint) with
    metrics.jsonl, checkpoints and the final `sae/`; a pair whose config sets another `out` is
    saved there."""
    cfg = config or TrainConfig()
    return shaped_like(targets, train(members_of(targets, cfg), source, cfg))


def want_of(member: Member) -> Want:
    """What a member reads from the data."""
    sae = member.dictionary
    return Want(member.hookpoint, sae.d_in, sae.d_out, member.cfg.target_hookpoint,
                "gradients" in sae.needs)


class Started(NamedTuple):
    """Every member ready for its first step."""

    runs: list[Run]
    """One per member, in order."""
    batches: Iterator[Batch]
    """The batches from `start` on."""
    start: int
    """The step they all start at (0, or the step of their checkpoints)."""
    steps: int
    """Steps of the whole run."""


def start_runs(members: list[Member], data, cfg: TrainConfig, group: Group) -> Started:
    """Open the data, then each member's run: resumed from its checkpoint, or fresh with its
    input scale and data-dependent initialisation from batch 0; every rank starts alike."""
    wants = [want_of(m) for m in members]
    source = group.all_or_none(lambda: open_source(data, wants, cfg, group))
    steps = total_steps(cfg, source, group)
    runs = [Run.start(m, feed, steps, group) for m, feed in zip(members, source.feeds)]
    for run in runs:
        check_needs(run)
    start = resume_or_start(runs)
    batches = source.batches(start)
    if start == 0:
        first = next(batches, None)
        if first is None:
            raise DataError("the data yielded no batch")
        for run in runs:
            initialise(run, first)
        batches = itertools.chain([first], batches)
    for run in runs:
        sync_start(run)
        run.dictionary.train()
    return Started(runs, batches, start, steps)


def train(members: list[Member], data, cfg: TrainConfig) -> list[Dictionary]:
    """Train `members` with every run folder locked against a second run (rank 0 holds the
    locks), none of them overlapping the store read; returns the trained dictionaries."""
    group = Group.current()
    inputs = [str(getattr(data, "path", data))] if isinstance(data, (str, Path, ActivationStore)) \
        else []
    for m in members:  # a missing logging package is refused before any folder is made
        check_log_to(m.cfg.log_to, m.cfg.out)
    with contextlib.ExitStack() as held:
        if group.main:
            for out in dict.fromkeys(Path(m.cfg.out) for m in members if m.cfg.out):
                check_not_an_input(out, inputs)  # before the lock file is written beside it
                held.enter_context(locked(out))
        return run_loop(members, data, cfg, group)


def run_loop(members: list[Member], data, cfg: TrainConfig, group: Group) -> list[Dictionary]:
    """The loop: each batch to every member, logging and checkpointing; returns the trained
    dictionaries."""
    runs, batches, start, steps = start_runs(members, data, cfg, group)
    logs = [Logs(r.cfg.log_to, r.out, r.key or r.dictionary.architecture, r.identity,
                 group.main, start or None) for r in runs]
    name = runs[0].dictionary.architecture if len(runs) == 1 else f"{len(runs)} dictionaries"
    bar = tqdm(total=steps, initial=start, desc=f"train {name}", unit="step",
               disable=not cfg.progress or not group.main)
    try:
        for step in range(start, steps):
            batch = next(batches, None)
            if batch is None:
                log.warning("data ran out at step %d of %d", step, steps)
                break
            on_device: dict = {}  # the batch moved once per device, whatever the members
            for run, logged in zip(runs, logs):
                here = on_device.setdefault(run.device, tuple(t.to(run.device) for t in batch))
                loss = run.take_step(here)
                if run.step % run.cfg.log_every == 0 or run.step == steps:
                    row = run.log_row(loss, here[0].shape[0])
                    logged.write(row)
                    if run is runs[0]:
                        bar.set_postfix(fvu=f"{row.get('fvu', math.nan):.3f}",
                                        l0=f"{row.get('l0', math.nan):.1f}",
                                        dead=f"{row['dead_fraction']:.3f}")
                if run.out and (run.step % run.cfg.checkpoint_every == 0 or run.step == steps):
                    run.save_checkpoint()
            bar.update(1)
    finally:
        bar.close()
        for logged in logs:
            logged.close()
    return [finish(run) for run in runs]


def total_steps(cfg: TrainConfig, source: Source, group: Group) -> int:
    """`cfg.steps`, or `cfg.epochs` passes over the data (the fewest batches of any rank)."""
    if cfg.steps is not None:
        return cfg.steps
    if source.per_epoch is None:
        raise ConfigError("steps: the number of batches of this data is not known in advance "
                          "(a live stream or an iterable without a length); give steps")
    per_epoch = group.min_int(source.per_epoch)  # ranks reading their own shards may differ
    if per_epoch == 0:
        raise ConfigError(f"batch_size {cfg.batch_size} is larger than the data")
    return max(1, math.ceil(cfg.epochs * per_epoch))


def resume_or_start(runs: list[Run]) -> int:
    """Open every member's folder; the step they all resume at (0: all start fresh)."""
    resumed = [run.step if open_folder(run) else None for run in runs]
    if len(set(resumed)) > 1:
        raise ConfigError(f"the run folders hold checkpoints of different steps "
                          f"({', '.join(f'{r.out}: {s}' for r, s in zip(runs, resumed))}); "
                          f"dictionaries trained together resume together: pass "
                          f"overwrite=True to start them all again, or train them apart")
    return resumed[0] or 0


def check_needs(run: Run) -> None:
    """A dictionary that needs labels or gradients gets data that has them."""
    sae, feed = run.dictionary, run.feed
    if "labels" in sae.needs and "labels" not in feed.extras:
        raise ConfigError(f"{sae.architecture}: this dictionary is trained on concept labels; "
                          f"pass saelab.train.Labelled(x, labels) (labels [N, n_guided]), or "
                          f"set guide_coeff=0 (or n_guided=0) to train it without them")
    if "gradients" in sae.needs and "grads" not in feed.extras:
        where = (f"store {feed.describe['path']} has no gradient hookpoint "
                 f"'{feed.describe['hookpoint']}.grad'; capture it with saelab.store."
                 f"capture_to_store(..., gradients=True), or pass"
                 if feed.describe["kind"] == "store" else "pass")
        raise ConfigError(f"{sae.architecture}: this dictionary selects its latents with the "
                          f"gradient of the model's loss with respect to each row; {where} "
                          f"saelab.train.WithGradients(x, grads) (grads [N, d_in], e.g. from "
                          f"saelab.capture.gradients.activation_gradients), or set beta=0 to "
                          f"train it as plain TopK")
