"""TrainConfig: every setting of a training run (drives the API, the CLI and the saved state)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from saelab.config import check, check_device, option, torch_device

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
ORDERS = ("shuffle", "sequential")
LOG_TO = ("jsonl", "tensorboard", "wandb")
"""Destinations of the training metrics (train/logs.py)."""


@dataclass
class TrainConfig:
    """Settings of one training run."""

    steps: int | None = option(None, "Optimiser steps; default: `epochs` passes over the data.")
    epochs: float = option(1.0, "Passes over the data when `steps` is not given.")
    batch_size: int = option(4096, "Activation vectors per optimiser step.")
    lr: float | None = option(None, "Adam learning rate; default 4e-3 * sqrt(batch_size / 4096) "
                                    "(inputs are normalised, so one rate fits most layers).")
    warmup_steps: int = option(100, "Linear learning-rate warm-up (capped at 10% of the run).")
    decay_start: float = option(0.8, "Fraction of the run after which the rate decays to 0.")
    seed: int = option(0, "Seed of the data order (shuffling) and of each dictionary's random "
                          "stream in training (data-dependent initialisation, sampling in the "
                          "loss). `saelab train` also creates the dictionary with it; in Python "
                          "pass it to saelab.create(..., seed=) for the initial weights.")
    out: str | None = option(None, "Run folder: checkpoints, metrics.jsonl and the final sae/. "
                                   "A folder holding a checkpoint of the same run is resumed.")
    checkpoint_every: int = option(500, "Steps between checkpoints (needs `out`).")
    log_every: int = option(25, "Steps between lines of metrics.jsonl.")
    log_to: list[str] = option(["jsonl"], "Where the metrics go, any of: jsonl (metrics.jsonl "
                                          "in out), tensorboard (event files in out/tensorboard; "
                                          "pip install saelab[tensorboard]), wandb (Weights & "
                                          "Biases; pip install saelab[wandb]).")
    grad_clip: float = option(0.0, "Clip the global gradient norm to this before each step "
                                   "(0: off; SAELens clips at 1).")
    dead_after_tokens: int | None = option(None, "A latent that has not fired for this many "
                                                 "training vectors counts as dead (AuxK revives "
                                                 "it); default a quarter of the run, at most "
                                                 "2,000,000.")
    normalize: bool = option(True, "Scale inputs to unit mean squared norm while training; "
                                   "the scale is folded back into the saved weights.")
    init_b_dec: bool = option(True, "Initialise the decoder bias to the data mean.")
    hookpoint: str | None = option(None, "Hookpoint of the store to train on (default: its only "
                                         "one).")
    target_hookpoint: str | None = option(None, "Hookpoint to reconstruct instead of the input "
                                                "(transcoders).")
    order: Literal["shuffle", "sequential"] = option(
        "shuffle", "Order of rows from a store: shuffle (rows mixed across contexts) or "
                   "sequential (FAST: whole contexts, in store order, packed into batches of at "
                   "most batch_size rows).")
    buffer_rows: int = option(1 << 19, "Rows held in the shuffle buffer when reading a store.")
    device: str | None = option(None, "Device to train on: cpu, cuda, cuda:1, ... or auto (cuda "
                                      "when available); default: the dictionary's device.")
    precision: Literal["fp32", "bf16"] = option(
        "fp32", "fp32, or bf16: bfloat16 autocast of the forward products with float32 master "
                "weights and optimiser (about 2x on GPUs and on CPUs with AVX-512 BF16).")
    compile: bool = option(False, "Compile the loss with torch.compile: the first step takes "
                                  "seconds to a minute longer; the sparse TopK kernels stay "
                                  "eager. The docs' benchmark pages say what it gains per "
                                  "variant.")
    shard_store: bool = option(True, "Under torchrun (data parallel), each rank reads only its "
                                     "share of the store's shards (I/O split over the ranks; "
                                     "not the batches of one process); False: every rank reads "
                                     "the whole stream and keeps its slice of each batch (the "
                                     "weights of one process). A store of too few shards for "
                                     "every rank to fill its batch is read as with False, with a "
                                     "warning.")
    allow_incomplete_store: bool = option(False, "Train on a store whose capture has not "
                                                 "finished (still running or killed); refused "
                                                 "otherwise.")
    progress: bool = option(True, "Show a progress bar.")
    overwrite: bool = option(False, "Replace a different run already in `out`.")

    def __post_init__(self) -> None:
        check(self.steps is None or self.steps > 0, "steps", f"must be > 0, got {self.steps}")
        check(self.epochs > 0, "epochs", f"must be > 0, got {self.epochs}")
        check(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")
        check(self.lr is None or self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        check(0 <= self.decay_start <= 1, "decay_start", f"must be in [0, 1], got "
                                                         f"{self.decay_start}")
        check(self.checkpoint_every > 0, "checkpoint_every", "must be > 0")
        check(self.log_every > 0, "log_every", "must be > 0")
        check(self.grad_clip >= 0, "grad_clip", f"must be >= 0 (0 turns clipping off), got "
                                                f"{self.grad_clip}")
        check(self.dead_after_tokens is None or self.dead_after_tokens > 0, "dead_after_tokens",
              "must be > 0")
        check(self.order in ORDERS, "order",
              f"must be one of {', '.join(ORDERS)}, got {self.order!r}")
        if isinstance(self.log_to, str):
            self.log_to = [self.log_to]
        bad = [k for k in self.log_to if k not in LOG_TO]
        check(not bad, "log_to", f"{', '.join(map(repr, bad))}: each must be one of "
                                 f"{', '.join(LOG_TO)}")
        check(self.precision in PRECISIONS, "precision",
              f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        check_device(self.device)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype of the forward pass, None for plain float32."""
        return PRECISIONS[self.precision]

    def resolve_device(self, dictionary_device: torch.device) -> torch.device:
        """The device to train on (see `device`)."""
        if self.device is None:
            return dictionary_device
        return torch_device(self.device)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else 4e-3 * math.sqrt(self.batch_size / 4096)

    def run_identity(self) -> dict:
        """The fields that define the run (a checkpoint resumes only if these match)."""
        keep = ("steps", "epochs", "batch_size", "lr", "warmup_steps", "decay_start", "seed",
                "dead_after_tokens", "normalize", "init_b_dec", "hookpoint", "target_hookpoint",
                "buffer_rows", "precision")
        identity = {k: getattr(self, k) for k in keep}
        if self.order != "shuffle":  # absent in the default, so older checkpoints still resume
            identity["order"] = self.order
        return identity
