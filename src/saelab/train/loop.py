"""The one training loop: `fit(dictionary, data, config)`.

Reads batches (from a tensor, an activation store or any iterable), normalises them to unit mean
squared norm, takes Adam steps with warm-up and decay, keeps decoder rows at unit norm, tracks
dead latents, logs metrics as JSON lines, checkpoints, and resumes exactly: a run resumed from
its checkpoint ends with the same weights as one never interrupted. Under torch.distributed
(torchrun) the same loop trains data-parallel: see train/distributed.py.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import torch
from tqdm.auto import tqdm

from saelab.config import to_dict
from saelab.dictionaries._base import Dictionary, StepState
from saelab.errors import ConfigError, DataError, OutputExistsError
from saelab.train import checkpoint as ckpt
from saelab.train.config import TrainConfig
from saelab.train.data import TrainData, as_train_data, check_batch, split_extras
from saelab.train.distributed import Group
from saelab.train.optim import lr_factor, make_optimizer
from saelab.train.step import train_step

log = logging.getLogger(__name__)


class _Run:
    """State of a run that is not in the dictionary: optimiser, counters, scale, files."""

    def __init__(self, dictionary: Dictionary, cfg: TrainConfig, data: TrainData, steps: int,
                 group: Group | None = None):
        self.dictionary, self.cfg, self.data, self.steps = dictionary, cfg, data, steps
        self.group = group or Group()
        self.device = cfg.resolve_device(next(dictionary.parameters()).device)
        dictionary.to(self.device)
        self.optimizer = make_optimizer(dictionary.parameters(), cfg.learning_rate)
        self.loss_fn = _compiled(dictionary.loss) if cfg.compile else dictionary.loss
        self.since_fired = torch.zeros(dictionary.n_latents, dtype=torch.long)
        self.scale = 1.0
        self.target_scale = 1.0  # of the targets (transcoders); the input's otherwise
        self.step = 0
        self.dead_after = cfg.dead_after_tokens or default_dead_window(
            steps * cfg.batch_size * self.group.world)
        self.out = Path(cfg.out) if cfg.out and self.group.main else None  # rank 0 writes
        self.identity = {"train": cfg.run_identity(), "steps": steps,
                         "dictionary": {"architecture": dictionary.architecture,
                                        **to_dict(dictionary.cfg)},
                         "data": data.describe}
        if self.group.active and "ranks" in data.describe:  # shard_store=True: the plan
            self.identity["train"]["shard_store"] = True      # depends on the number of ranks

    @property
    def checkpoint_dir(self) -> Path | None:
        return self.out / "checkpoint" if self.out else None

    def info(self) -> dict:
        return {"step": self.step, "scale": self.scale, "target_scale": self.target_scale,
                "identity": self.identity}

    def dead_mask(self) -> torch.Tensor:
        return (self.since_fired >= self.dead_after).to(self.device)


def default_dead_window(run_vectors: int) -> int:
    """Vectors without firing after which a latent counts as dead, when the config leaves it
    open: a quarter of the run, at most 2,000,000 (Gao et al. 2024 use 10M tokens on runs of
    billions; a fixed window longer than a short run would never let AuxK act)."""
    return max(1, min(2_000_000, run_vectors // 4))


def _compiled(loss):
    """torch.compile of a dictionary's loss, saelab's sparse kernels left eager inside it."""
    from saelab.ops.sparse import keep_eager_under_compile

    keep_eager_under_compile()
    return torch.compile(loss)


def _total_steps(cfg: TrainConfig, data: TrainData, group: Group) -> int:
    if cfg.steps is not None:
        return cfg.steps
    if data.per_epoch is None:
        raise ConfigError("steps: the data is an iterable of unknown length; give steps")
    per_epoch = group.min_int(data.per_epoch)  # ranks reading their own shards may differ
    if per_epoch == 0:
        raise ConfigError(f"batch_size {cfg.batch_size} is larger than the data")
    return max(1, math.ceil(cfg.epochs * per_epoch))


def _prepare_out(run: _Run) -> bool:
    """Resume from a checkpoint of the same run (True), start fresh (False), or refuse. With
    several ranks, rank 0 decides and sends the loop state and optimiser to the others (the
    weights follow in `_sync_start`), so only rank 0 needs to see the run folder."""
    g = run.group
    if not g.active:
        return _open_out(run)
    shared: object = None
    if g.main:
        try:
            resumed = _open_out(run)
            shared = (resumed, run.step, run.scale, run.target_scale, run.since_fired,
                      run.optimizer.state_dict() if resumed else None)
        except Exception as e:  # noqa: BLE001 (every rank raises it, not only rank 0)
            shared = e
    shared = g.broadcast_object(shared)
    if isinstance(shared, Exception):
        raise shared
    resumed, run.step, run.scale, run.target_scale, run.since_fired, opt_state = shared
    if resumed and not g.main:
        run.optimizer.load_state_dict(opt_state)
    return resumed


def _sync_start(run: _Run) -> None:
    """Every rank starts from rank 0's weights and input scale."""
    run.group.broadcast_state(run.dictionary)
    run.scale, run.target_scale = run.group.broadcast_object((run.scale, run.target_scale))


def _open_out(run: _Run) -> bool:
    if run.out is None:
        return False
    info = ckpt.read_info(run.checkpoint_dir)
    if info is not None and info.get("identity") == json.loads(json.dumps(run.identity)):
        run.since_fired = ckpt.load_checkpoint(run.checkpoint_dir, run.dictionary, run.optimizer)
        run.step, run.scale = info["step"], info["scale"]
        run.target_scale = info.get("target_scale", run.scale)
        log.info("resuming %s at step %d of %d", run.out, run.step, run.steps)
        return True
    if run.out.exists() and any(run.out.iterdir()):
        if not run.cfg.overwrite:
            raise OutputExistsError(f"{run.out} already holds a run with other settings (or "
                                    f"other files); pass overwrite=True (--overwrite) to "
                                    f"replace it, or choose another folder")
        shutil.rmtree(run.out)
    run.out.mkdir(parents=True, exist_ok=True)
    return False


def _initialise(run: _Run) -> None:
    """Input scale and data-dependent initialisation, from the data (fresh runs only)."""
    first, _ = split_extras(next(run.data.batches(0)), run.data)
    check_batch(first, run.dictionary.d_in, run.dictionary.d_out, 0, _source(run))
    if run.group.active:  # the whole global batch, the same on every rank (nccl: on the GPU)
        first = run.group.gather_rows(tuple(t.to(run.device) for t in first))
    msn = run.data.mean_sq_norm
    if msn is None:
        msn = float(first[0].float().pow(2).sum(-1).mean())
    if run.cfg.normalize:
        if not msn > 0:
            raise DataError("the data is all zeros: nothing to learn")
        run.scale = run.target_scale = 1.0 / math.sqrt(msn)
        if len(first) > 1:  # a transcoder's target: its own scale (an MLP's output can be
            target_msn = float(first[1].float().pow(2).sum(-1).mean())  # 1000x its input's)
            if not target_msn > 0:
                raise DataError("the targets are all zeros: nothing to learn")
            run.target_scale = 1.0 / math.sqrt(target_msn)
    if run.cfg.init_b_dec:
        # b_dec lives in the target's units (the input's when there is no target)
        run.dictionary.init_from_data(first[-1].to(run.device).float() * run.target_scale)


def _source(run: _Run) -> str:
    """Where batches come from, for error messages (the store and hookpoint when known)."""
    d = run.data.describe
    if d["kind"] == "store":
        return f"hookpoint {d['hookpoint']!r} of store {d['path']}"
    return f"the {d['kind']} data"


def _trim_metrics(run: _Run) -> None:
    """Drop metric lines past the resumed step (they will be logged again)."""
    file = run.out / "metrics.jsonl"
    if file.exists():
        lines = [ln for ln in file.read_text().splitlines()
                 if ln.strip() and json.loads(ln)["step"] < run.step]
        file.write_text("".join(ln + "\n" for ln in lines))


def fit(dictionary: Dictionary, data, config: TrainConfig | None = None) -> Dictionary:
    """Train `dictionary` on `data` (tensor [N, d_in], store folder, or iterable of batches).

    Returns the dictionary, trained, in the units of the raw data. With `config.out`, writes
    checkpoints, metrics.jsonl and the final `sae/` folder there, and resumes a killed run.
    """
    cfg = config or TrainConfig()
    if dictionary.trained_by != "gradient":
        dictionary.fit(b[0] for b in as_train_data(data, dictionary.d_in, cfg).batches(0))
        return dictionary
    torch.manual_seed(cfg.seed)
    group = Group.current()
    needs_gradients = "gradients" in dictionary.needs
    train_data = group.all_or_none(lambda: as_train_data(data, dictionary.d_in, cfg, group,
                                                         gradients=needs_gradients))
    if "labels" in dictionary.needs and not train_data.labelled:
        raise ConfigError(f"{dictionary.architecture}: this dictionary is trained on concept "
                          f"labels; pass saelab.train.data.Labelled(x, labels) (labels "
                          f"[N, n_guided]), or set guide_coeff=0 (or n_guided=0) to train it "
                          f"without them")
    if needs_gradients and "grads" not in train_data.extras:
        raise ConfigError(_missing_gradients(dictionary, train_data))
    run = _Run(dictionary, cfg, train_data, _total_steps(cfg, train_data, group), group)
    if not _prepare_out(run):
        _initialise(run)
    _sync_start(run)
    if run.out:
        _trim_metrics(run)
    _loop(run)
    return _finish(run)


def _missing_gradients(dictionary: Dictionary, data: TrainData) -> str:
    """The error for a gradient-guided dictionary given rows without loss gradients."""
    where = (f"store {data.describe['path']} has no gradient hookpoint "
             f"'{data.describe['hookpoint']}.grad'; capture it with saelab.store."
             f"capture_to_store(..., gradients=True), or pass"
             if data.describe["kind"] == "store" else "pass")
    return (f"{dictionary.architecture}: this dictionary selects its latents with the gradient of "
            f"the model's loss with respect to each row; {where} saelab.train.WithGradients(x, "
            f"grads) (grads [N, d_in], e.g. from saelab.capture.gradients."
            f"activation_gradients), or set beta=0 to train it as plain TopK")


def _loop(run: _Run) -> None:
    cfg, sae = run.cfg, run.dictionary
    sae.train()
    base_lr = cfg.learning_rate
    warmup = min(cfg.warmup_steps, run.steps // 10)
    metrics_file = open(run.out / "metrics.jsonl", "a") if run.out else None
    bar = tqdm(total=run.steps, initial=run.step, desc=f"train {sae.architecture}",
               disable=not cfg.progress or not run.group.main, unit="step")
    batches = run.data.batches(run.step)
    try:
        while run.step < run.steps:
            batch = next(batches, None)
            if batch is None:
                log.warning("data ran out at step %d of %d", run.step, run.steps)
                break
            rows, _ = split_extras(batch, run.data)
            check_batch(rows, sae.d_in, sae.d_out, run.step, _source(run))
            for group in run.optimizer.param_groups:
                group["lr"] = base_lr * lr_factor(run.step, run.steps, warmup, cfg.decay_start)
            loss = _one_step(run, batch)
            run.step += 1
            bar.update(1)
            if run.step % cfg.log_every == 0 or run.step == run.steps:
                row = _log_row(run, loss, batch[0].shape[0])
                bar.set_postfix(fvu=f"{row.get('fvu', float('nan')):.3f}",
                                l0=f"{row.get('l0', float('nan')):.1f}",
                                dead=f"{row['dead_fraction']:.3f}")
                if metrics_file:
                    metrics_file.write(json.dumps(row) + "\n")
                    metrics_file.flush()
            if run.out and (run.step % cfg.checkpoint_every == 0 or run.step == run.steps):
                ckpt.save_checkpoint(run.checkpoint_dir, sae, run.optimizer, run.since_fired,
                                     run.info())
    finally:
        bar.close()
        if metrics_file:
            metrics_file.close()


def _one_step(run: _Run, batch):
    batch, extras = split_extras(batch, run.data)
    x = batch[0].to(run.device).float() * run.scale
    target = batch[1].to(run.device).float() * run.target_scale if len(batch) > 1 else None
    state = StepState(run.step, run.steps, run.dead_mask())
    for name, t in extras.items():  # labels, grads (the grads unscaled: g-SAE is scale-free)
        state.extra[name] = t.to(run.device).float()
    loss = train_step(run.dictionary, run.optimizer, x, state, target, run.cfg.autocast_dtype,
                      run.group, run.loss_fn, run.cfg.grad_clip)
    active, finite = run.group.reduce_step(loss.active, loss.total)
    if not finite:
        raise DataError(f"the loss became {loss.total.item()} at step {run.step}"
                        + (" on one of the ranks" if run.group.active else "")
                        + "; lower the learning rate (lr) or check the data"
                        + (f" (last checkpoint in {run.checkpoint_dir})" if run.out else ""))
    run.since_fired += x.shape[0] * run.group.world
    run.since_fired[active.cpu()] = 0
    return loss


def _log_row(run: _Run, loss, batch_rows: int) -> dict:
    g = getattr(run, "group", None) or Group()
    values = {"loss": loss.total.item(), **{k: float(v.detach()) for k, v in loss.terms.items()},
              **loss.metrics}
    row = {"step": run.step, "lr": run.optimizer.param_groups[0]["lr"],
           "tokens": run.step * batch_rows * g.world,
           "dead_fraction": float((run.since_fired >= run.dead_after).float().mean())}
    row.update(g.mean_floats(values))  # averaged over the ranks
    return row


def _finish(run: _Run) -> Dictionary:
    """Fold the input scale into the weights, record provenance, save `out/sae`."""
    sae = run.dictionary
    sae.eval()
    if run.cfg.normalize and (run.scale, run.target_scale) != (1.0, 1.0):
        sae.fold_scales(run.scale, run.target_scale)
    sae.provenance.update({"train": to_dict(run.cfg), "steps": run.step,
                           "vectors_seen": run.step * run.cfg.batch_size,
                           "input_scale": run.scale, "target_scale": run.target_scale,
                           **{f"data_{k}": v for k, v in run.data.describe.items()}})
    if run.group.active:
        sae.provenance["ranks"] = run.group.world
    if run.data.describe["kind"] == "store":
        sae.provenance.setdefault("model", run.data.describe["model"])
        sae.provenance.setdefault("hookpoint", run.data.describe["hookpoint"])
    if run.out:
        sae.save(run.out / "sae")
    run.group.barrier()  # the saved folder exists when any rank returns
    return sae
