"""The start and the end of a `Run`: resume from its checkpoint or start fresh in its folder,
the input scale and data-dependent initialisation, the same start on every rank, and the final
dictionary (scale folded into the weights, provenance, saved in `out/sae`)."""

from __future__ import annotations

import json
import logging
import math

import torch
from torch import Tensor

from saelab._paths import recover_swap
from saelab.config import to_dict
from saelab.dictionaries import Dictionary
from saelab.errors import DataError
from saelab.store.sources import Batch, check_batch
from saelab.train import checkpoint as ckpt
from saelab.train.folder import prepare
from saelab.train.run import Run

log = logging.getLogger(__name__)


def open_folder(run: Run) -> bool:
    """Resume from a checkpoint of the same run (True), start fresh (False), or refuse. With
    several ranks, rank 0 decides and sends the loop state and optimiser to the others (the
    weights follow in `sync_start`), so only rank 0 needs to see the run folder."""
    g = run.group
    if not g.active:
        return _open_folder(run)
    shared: object = None
    if g.main:
        try:
            resumed = _open_folder(run)
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


def _open_folder(run: Run) -> bool:
    if run.out is None:
        return False
    for folder in (run.checkpoint_dir, run.out / "sae"):
        if recover_swap(folder):
            log.warning("%s: a kill in the middle of replacing it left the previous version "
                        "aside; that version is intact and restored", folder)
    info = ckpt.read_info(run.checkpoint_dir)
    if info is not None and info.get("identity") == json.loads(json.dumps(run.identity)):
        run.since_fired = ckpt.load_checkpoint(run.checkpoint_dir, run.dictionary, run.optimizer,
                                               run.rng)
        run.step, run.scale = info["step"], info["scale"]
        run.target_scale = info.get("target_scale", run.scale)
        log.info("resuming %s at step %d of %d", run.out, run.step, run.steps)
        return True
    prepare(run.out, run.identity, run.cfg.overwrite)
    return False


def initialise(run: Run, first: Batch) -> None:
    """Input scale and data-dependent initialisation from the first batch (fresh runs only)."""
    sae = run.dictionary
    x, target, _ = run.feed.split(first)
    check_batch(x, target, sae.d_in, sae.d_out, 0, run.feed.where)
    rows = (x,) if target is None else (x, target)
    if run.group.active:  # the whole global batch, the same on every rank (nccl: on the GPU)
        rows = run.group.gather_rows(tuple(t.to(run.device) for t in rows))
    first_msn = mean_squared_norm(rows[0], "data", run.feed.where)  # refuses overflowing rows
    msn = first_msn if run.feed.mean_sq_norm is None else run.feed.mean_sq_norm
    if run.cfg.normalize:
        if not msn > 0 or not math.isfinite(msn):
            raise DataError(f"{run.feed.where}: the mean squared norm of the data is {msn}: "
                            f"{'nothing to learn' if msn == 0 else 'it cannot be normalised'}")
        run.scale = run.target_scale = 1.0 / math.sqrt(msn)
        if len(rows) > 1:  # a transcoder's target: its own scale (an MLP's output can be
            target_msn = mean_squared_norm(rows[1], "targets", run.feed.where)  # 1000x x's)
            if not target_msn > 0:
                raise DataError(f"{run.feed.where}: the targets are all zeros: nothing to learn")
            run.target_scale = 1.0 / math.sqrt(target_msn)
    if run.cfg.init_b_dec:
        with run.rng.active():  # b_dec lives in the target's units (the input's without one)
            sae.init_from_data(rows[-1].to(run.device).float() * run.target_scale)


def mean_squared_norm(rows: Tensor, what: str, where: str) -> float:
    """The mean squared row norm of `rows` [B, d] in float32; an activation too large for it
    (|value| above about 1.8e19, whose square overflows) is refused, naming its row."""
    sq = rows.float().pow(2).sum(-1)
    overflow = (~torch.isfinite(sq)).nonzero()
    if len(overflow):
        r = int(overflow[0])
        raise DataError(f"{where}: row {r} of the first batch of {what} holds a value of "
                        f"{float(rows[r].abs().max()):.3g}, too large to train on (its square "
                        f"overflows float32); clean the data or leave such rows out")
    return float(sq.mean())


def sync_start(run: Run) -> None:
    """Every rank starts from rank 0's weights and input scale."""
    run.group.broadcast_state(run.dictionary)
    run.scale, run.target_scale = run.group.broadcast_object((run.scale, run.target_scale))


def record_provenance(dictionary: Dictionary, describe: dict, facts: dict) -> None:
    """Record in `dictionary.provenance` how it was trained (`facts`) and on what data
    (`describe`, a feed's description: each entry as data_NAME, and the model, its Hub id and the
    hookpoint under their own names unless already known)."""
    dictionary.provenance.update({**facts, **{f"data_{k}": v for k, v in describe.items()}})
    for name in ("model", "model_hub_id", "hookpoint"):
        if describe.get(name) is not None:
            dictionary.provenance.setdefault(name, describe[name])


def finish(run: Run) -> Dictionary:
    """Fold the input scale into the weights, record provenance, save `out/sae`."""
    sae = run.dictionary
    sae.eval()
    if run.cfg.normalize and (run.scale, run.target_scale) != (1.0, 1.0):
        sae.fold_scales(run.scale, run.target_scale)
    record_provenance(sae, run.feed.describe, {
        "train": to_dict(run.cfg), "steps": run.step,
        "vectors_seen": run.step * run.cfg.batch_size, "input_scale": run.scale,
        "target_scale": run.target_scale})
    if run.group.active:
        sae.provenance["ranks"] = run.group.world
    if run.out:
        sae.save(run.out / "sae")
    run.group.barrier()  # the saved folder exists when any rank returns
    return sae
