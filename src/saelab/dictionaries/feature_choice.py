"""Feature Choice SAE (Ayonrinde 2024, "Adaptive Sparse Allocation with Mutual Choice & Feature
Choice Sparse Autoencoders").

Sparsity as an allocation of (input, latent) matches over a batch: where a TopK SAE lets each
input pick its k latents, Feature Choice lets each latent pick its m inputs, the m largest
ReLU'd pre-activations in its column of the batch. Inputs then get as many latents as chose
them (a variable number, possibly none), every latent is used up to its capacity (no latent can
die while it has m positive pre-activations in a batch), and the batch total is at most
n_latents x m. Relative to TopK: the constraint moves from rows (k per input) to columns (m per
latent), and under-used latents are trained by aux_zipf_loss instead of AuxK.

Where this file had to choose:
- Capacity: the latents share the same budget as TopK, sum_i m_i = k x B for a batch of B, so
  `k` is the mean L0 at full use and runs are compared at matched average L0. `capacity`
  "uniform" gives every latent the same m = k B / n_latents (`feature_capacity`: rounded, at
  least 1); "zipf" (default) gives latent i a share proportional to (i + 1)^-zipf_exponent
  (`zipf_capacities`: rounded, each in [1, B], total as close to k B as rounding allows), so
  the dictionary can hold features as frequent as real ones, whose usage is Zipf-like. Uniform
  capacity cannot: on planted data with Zipf frequencies (256 directions, k 4, 512 latents,
  batch 256) each latent may take 2 inputs of 256 while the most frequent direction is in 65%
  of them, and held-out FVU was 0.62 against TopK's 0.28. The ranks are fixed by index (latent
  0 has the largest capacity), which makes the allocation deterministic. A latent with fewer
  positive pre-activations than its capacity picks only those.
- Inference: a threshold per latent learned during training, the running average of the
  smallest activation each latent kept per batch (warm start, then decay `threshold_decay`),
  stored as a buffer in input units; in eval mode a latent fires where its pre-activation
  exceeds its threshold, i.e. about m / B of inputs per latent, as in training. Before any
  training batch eval mode still uses the batch selection.
- Auxiliary loss: "zipf" (default, saelab.ops.zipf.aux_zipf_loss), "auxk" or "none", as for
  Mutual Choice. Encoder on x - b_dec, tied initialisation, unit-norm decoder, sparse training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from saelab.config import check, option
from saelab.dictionaries._base import (
    Dictionary,
    DictionaryConfig,
    Loss,
    StepState,
    check_k,
)
from saelab.dictionaries._allocation import allocated_loss, check_aux_fields
from saelab.dictionaries._registry import register
from saelab.ops.allocation import (
    feature_capacity,
    feature_choice_chosen,
    update_running,
    zipf_capacities,
)
from saelab.ops.jumprelu import jumprelu
from saelab.ops.listed import list_rows
from saelab.ops.zipf import register_usage_buffers


@dataclass
class FeatureChoiceConfig(DictionaryConfig):
    k: int = option(32, "Mean active latents per input at full use: the latents' capacities "
                        "add up to k x batch.")
    capacity: Literal["zipf", "uniform"] = option(
        "zipf", "How the budget is split over latents: zipf (latent i gets a share ~ (i + "
                "1)^-zipf_exponent) or uniform.")
    threshold_decay: float = option(0.9, "Decay of the running average of each latent's smallest "
                                         "kept activation (its inference threshold).")
    aux: Literal["zipf", "auxk", "none"] = option(
        "zipf", "Auxiliary loss for dead / under-used latents: zipf, auxk or none.")
    aux_coeff: float = option(1 / 32, "Weight of the auxiliary loss (0 disables it).")
    aux_k: int | None = option(None, "Latents per input in the auxiliary loss; default d_in // 2.")
    zipf_exponent: float = option(1.0, "Exponent alpha of the Zipf law (capacities and "
                                       "aux_zipf_loss).")
    usage_decay: float = option(0.99, "Decay of the running per-latent usage estimate (zipf).")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_k(self)
        check(self.capacity in ("zipf", "uniform"), "capacity",
              f"must be 'zipf' or 'uniform', got {self.capacity!r}")
        check_aux_fields(self)


@register("feature_choice")
class FeatureChoice(Dictionary):
    """Feature Choice SAE. Weights: W_enc [n_latents, d_in], b_enc [n_latents], W_dec [n_latents,
    d_out], b_dec [d_out]; buffers: threshold [n_latents] and threshold_batches [] (inference
    thresholds), usage [n_latents], usage_batches [], usage_step [] (aux_zipf_loss)."""

    Config = FeatureChoiceConfig
    scales_with_input = ("b_enc", "b_dec", "threshold")

    def __init__(self, cfg: FeatureChoiceConfig):
        super().__init__(cfg)
        self.init_tied_weights()
        self.register_buffer("threshold", torch.zeros(cfg.n_latents))
        self.register_buffer("threshold_batches", torch.zeros((), dtype=torch.long))
        register_usage_buffers(self, cfg.n_latents)

    def capacities(self, batch: int) -> Tensor:
        """m_i [n_latents] (int64): the most inputs latent i may pick in a batch of `batch`."""
        cfg = self.cfg
        if cfg.capacity == "uniform":
            m = feature_capacity(cfg.k, batch, self.n_latents)
            return torch.full((self.n_latents,), m, dtype=torch.long)
        return zipf_capacities(cfg.k, batch, self.n_latents, cfg.zipf_exponent)

    def choose(self, pre: Tensor) -> Tensor:
        """Flat indices (increasing) of each latent's m_i largest positive entries."""
        return feature_choice_chosen(pre, self.capacities(pre.shape[0]))

    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_activations(x)
        if not self.training and int(self.threshold_batches) > 0:
            return jumprelu(pre, self.threshold)
        values, indices, _ = list_rows(pre, self.choose(pre))
        return values.new_zeros(pre.shape).scatter_add_(1, indices, values)

    @torch.no_grad()
    def _update_thresholds(self, values: Tensor, indices: Tensor, fired: Tensor) -> None:
        """Fold each latent's smallest kept activation of this batch into its threshold."""
        smallest = torch.full((self.n_latents,), float("inf"), device=values.device)
        smallest.scatter_reduce_(0, indices[fired], values[fired], reduce="amin")
        kept = torch.isfinite(smallest)
        update_running(self.threshold, self.threshold_batches,
                       torch.where(kept, smallest, self.threshold), self.cfg.threshold_decay,
                       mask=kept if int(self.threshold_batches) > 0 else None)

    def loss(self, x: Tensor, state: StepState, target: Tensor | None = None) -> Loss:
        return allocated_loss(self, x, state, target, self.choose, self._update_thresholds)
