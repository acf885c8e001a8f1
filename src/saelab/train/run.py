"""`Run`: one dictionary being trained, with everything about its training that is not in the
dictionary (optimiser, schedule, counters, input scale, random stream, run folder), and its one
optimiser step. The loop (loop.py) holds one Run per dictionary and feeds each batch to all."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import Tensor

from saelab.config import to_dict
from saelab.dictionaries import Dictionary, Loss, StepState
from saelab.errors import DataError
from saelab.store.sources import Batch, Feed, check_batch
from saelab.train import checkpoint as ckpt
from saelab.train.config import TrainConfig
from saelab.train.group import Group
from saelab.train.members import Member
from saelab.train.optim import lr_factor, make_optimizer
from saelab.train.step import train_step


def default_dead_window(run_vectors: int) -> int:
    """Vectors without firing after which a latent counts as dead, when the config leaves it
    open: a quarter of the run, at most 2,000,000 (Gao et al. 2024 use 10M tokens on runs of
    billions; a fixed window longer than a short run would never let AuxK act)."""
    return max(1, min(2_000_000, run_vectors // 4))


def compiled_loss(loss: Callable[..., Loss]) -> Callable[..., Loss]:
    """torch.compile of a dictionary's loss, saelab's sparse kernels left eager inside it."""
    from saelab.ops.sparse import keep_eager_under_compile

    keep_eager_under_compile()
    return torch.compile(loss)


class RandomStream:
    """A torch random stream of one dictionary's own, seeded by its config: what it draws (in
    its loss, its data-dependent initialisation) does not depend on the dictionaries trained
    beside it, and the caller's global random state is left as it was."""

    def __init__(self, seed: int, device: torch.device):
        self.device = device if device.type == "cuda" else None
        self.cpu = torch.Generator().manual_seed(seed).get_state()
        """State of the CPU generator."""
        self.cuda = (torch.Generator(device).manual_seed(seed).get_state()
                     if self.device is not None else None)
        """State of the generator of its CUDA device (None on other devices)."""

    def _global(self) -> tuple[Tensor, Tensor | None]:
        cuda = torch.cuda.get_rng_state(self.device) if self.device is not None else None
        return torch.get_rng_state(), cuda

    def _set_global(self, cpu: Tensor, cuda: Tensor | None) -> None:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, self.device)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Inside this block torch's global generators draw from this stream."""
        saved = self._global()
        self._set_global(self.cpu, self.cuda)
        try:
            yield
        finally:
            self.cpu, self.cuda = self._global()
            self._set_global(*saved)


@dataclass
class Run:
    """One dictionary being trained and the state of its training (built by `Run.start`)."""

    key: str | None
    """Hookpoint it trains on, as the caller named it (None: the data's only one)."""
    dictionary: Dictionary
    """The dictionary, trained in place on inputs scaled by `scale`."""
    cfg: TrainConfig
    """Its settings."""
    feed: Feed
    """Where its input, target and extra tensors sit in each batch of the source."""
    steps: int
    """Steps of the whole run."""
    group: Group
    """The ranks training it together (one process: world 1)."""
    device: torch.device
    """Where it trains."""
    optimizer: torch.optim.Optimizer
    """Adam over its parameters."""
    loss_fn: Callable[..., Loss]
    """Its loss, or the torch.compile'd loss (`cfg.compile`)."""
    rng: RandomStream
    """Its random stream (seeded by `cfg.seed`)."""
    since_fired: Tensor
    """Long [n_latents] (CPU): training vectors since each latent last fired."""
    dead_after: int
    """Vectors without firing after which a latent counts as dead."""
    identity: dict
    """What defines the run: a checkpoint resumes only a run of the same identity."""
    out: Path | None
    """Run folder (checkpoint, metrics, final sae/); None when nothing is written (no out, or
    not rank 0)."""
    step: int = 0
    """Steps taken so far."""
    scale: float = 1.0
    """Factor applied to its inputs (unit mean squared norm when `cfg.normalize`)."""
    target_scale: float = 1.0
    """Factor applied to its targets (transcoders); equal to `scale` otherwise."""

    @classmethod
    def start(cls, member: Member, feed: Feed, steps: int, group: Group) -> Run:
        """A fresh run of `member` (step 0, unit scales), its dictionary moved to its device."""
        sae, cfg = member.dictionary, member.cfg
        device = cfg.resolve_device(next(sae.parameters()).device)
        sae.to(device)
        identity = {"train": cfg.run_identity(), "steps": steps,
                    "dictionary": {"architecture": sae.architecture, **to_dict(sae.cfg)},
                    "data": feed.describe}
        if group.active and "ranks" in feed.describe:  # shard_store=True: the batches depend
            identity["train"]["shard_store"] = True     # on the number of ranks
        return cls(member.hookpoint, sae, cfg, feed, steps, group, device,
                   make_optimizer(sae.parameters(), cfg.learning_rate),
                   compiled_loss(sae.loss) if cfg.compile else sae.loss,
                   RandomStream(cfg.seed, device),
                   torch.zeros(sae.n_latents, dtype=torch.long),
                   cfg.dead_after_tokens or default_dead_window(
                       steps * cfg.batch_size * group.world),
                   identity, Path(cfg.out) if cfg.out and group.main else None)

    @property
    def checkpoint_dir(self) -> Path | None:
        return self.out / "checkpoint" if self.out else None

    def dead_mask(self) -> Tensor:
        """Bool [n_latents] on its device: the latents dead now."""
        return (self.since_fired >= self.dead_after).to(self.device)

    def take_step(self, batch: Batch) -> Loss:
        """One optimiser step on its part of `batch`: checks, learning rate of this step,
        scaling, the step itself (train/step.py), dead-latent counters."""
        sae, cfg = self.dictionary, self.cfg
        x, target, extras = self.feed.split(batch)
        check_batch(x, target, sae.d_in, sae.d_out, self.step, self.feed.where)
        warmup = min(cfg.warmup_steps, self.steps // 10)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.learning_rate * lr_factor(self.step, self.steps, warmup,
                                                        cfg.decay_start)
        x = x.to(self.device).float() * self.scale
        if target is not None:
            target = target.to(self.device).float() * self.target_scale
        state = StepState(self.step, self.steps, self.dead_mask())
        for name, t in extras.items():  # labels, grads (the grads unscaled: g-SAE is scale-free)
            state.extra[name] = t.to(self.device).float()
        with self.rng.active():
            loss = train_step(sae, self.optimizer, x, state, target, cfg.autocast_dtype,
                              self.group, self.loss_fn, cfg.grad_clip)
        active, finite = self.group.reduce_step(loss.active, loss.total)
        if not finite:
            raise DataError(f"the loss became {loss.total.item()} at step {self.step} of "
                            f"{self.feed.where}" + (" on one of the ranks" if self.group.active
                                                    else "")
                            + "; lower the learning rate (lr) or check the data"
                            + (f" (last checkpoint in {self.checkpoint_dir})" if self.out else ""))
        self.since_fired += x.shape[0] * self.group.world
        self.since_fired[active.cpu()] = 0
        self.step += 1
        return loss

    def log_row(self, loss: Loss, batch_rows: int) -> dict:
        """The metrics of the step just taken (averaged over the ranks)."""
        values = {"loss": loss.total.item(),
                  **{k: float(v.detach()) for k, v in loss.terms.items()}, **loss.metrics}
        row = {"step": self.step, **({"hookpoint": self.key} if self.key else {}),
               "lr": self.optimizer.param_groups[0]["lr"],
               "tokens": self.step * batch_rows * self.group.world,
               "dead_fraction": float((self.since_fired >= self.dead_after).float().mean())}
        row.update(self.group.mean_floats(values))
        return row

    def info(self) -> dict:
        """The loop state a checkpoint records besides the tensors."""
        return {"step": self.step, "scale": self.scale, "target_scale": self.target_scale,
                "identity": self.identity}

    def save_checkpoint(self) -> None:
        ckpt.save_checkpoint(self.checkpoint_dir, self.dictionary, self.optimizer,
                             self.since_fired, self.rng, self.info())
