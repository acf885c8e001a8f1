"""Mutual Choice SAE (Ayonrinde 2024, "Adaptive Sparse Allocation with Mutual Choice & Feature
Choice Sparse Autoencoders", arXiv 2411.02124). There is no public code: this file follows the
paper's text.

The paper frames sparsity as allocating a budget of (input, latent) matches over a batch. A TopK
SAE gives each input exactly k; Mutual Choice spends the same total, k x B for a batch of B, on
the k x B largest ReLU'd pre-activations anywhere in the batch, so hard inputs get more latents
and easy ones fewer (the same selection as BatchTopK, Bussmann et al. 2024, found
independently). Relative to TopK: the per-input constraint is dropped, only the batch total is
kept; and dead or under-used latents are trained by aux_zipf_loss (saelab.ops.zipf) instead of
AuxK.

Where this file had to choose:
- Budget: exactly k x B pairs whenever the batch has that many positive pre-activations; a
  ReLU code cannot spend the rest on non-positive ones, so a batch with fewer positive entries
  spends fewer (never more).
- Inference: like BatchTopK, a single threshold theta learned during training (running average
  of each batch's smallest kept activation, warm start then decay `threshold_decay`); in eval
  mode a latent fires when its pre-activation exceeds theta, so a row's codes do not depend on
  the rest of its batch. Before any training batch, eval mode still uses the batch selection.
- The auxiliary loss is a field: "zipf" (default, the paper's aux_zipf_loss in saelab's reading,
  saelab.ops.zipf, with a running usage estimate kept as buffers), "auxk" (TopK's AuxK on the
  trainer's dead mask, with TopK's coefficient 1/32 and d_in // 2 latents: the revival to give
  it when comparing with a TopK SAE that has AuxK) or "none".
- Encoder on x - b_dec, tied initialisation, unit-norm decoder rows, sparse training (only the
  selected entries get a gradient), as for TopK.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from torch import Tensor

from saelab.config import option
from saelab.dictionaries._base import (
    Dictionary,
    DictionaryConfig,
    Loss,
    StepState,
    check_k,
)
from saelab.dictionaries._allocation import allocated_loss, check_aux_fields
from saelab.dictionaries._registry import register
from saelab.ops.allocation import batch_topk_chosen, update_running
from saelab.ops.jumprelu import jumprelu
from saelab.ops.listed import list_rows
from saelab.ops.zipf import register_usage_buffers

@dataclass
class MutualChoiceConfig(DictionaryConfig):
    k: int = option(32, "Mean active latents per input: each batch spends a budget of k x "
                        "batch (input, latent) pairs.")
    threshold_decay: float = option(0.9, "Decay of the running average of the smallest kept "
                                         "activation that becomes the inference threshold.")
    aux: Literal["zipf", "auxk", "none"] = option(
        "zipf", "Auxiliary loss for dead / under-used latents: zipf, auxk or none.")
    aux_coeff: float = option(1 / 32, "Weight of the auxiliary loss (0 disables it).")
    aux_k: int | None = option(None, "Latents per input in the auxiliary loss; default d_in // 2.")
    zipf_exponent: float = option(1.0, "Exponent alpha of the Zipf law usage is pulled towards.")
    usage_decay: float = option(0.99, "Decay of the running per-latent usage estimate (zipf).")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_k(self)
        check_aux_fields(self)


@register("mutual_choice")
class MutualChoice(Dictionary):
    """Mutual Choice SAE. Weights: W_enc [n_latents, d_in], b_enc [n_latents], W_dec [n_latents,
    d_out], b_dec [d_out]; buffers: threshold [] and threshold_batches [] (inference threshold),
    usage [n_latents], usage_batches [], usage_step [] (aux_zipf_loss)."""

    Config = MutualChoiceConfig
    scales_with_input = ("b_enc", "b_dec", "threshold")

    def __init__(self, cfg: MutualChoiceConfig):
        super().__init__(cfg)
        self.init_tied_weights()
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("threshold_batches", torch.zeros((), dtype=torch.long))
        register_usage_buffers(self, cfg.n_latents)

    def choose(self, pre: Tensor) -> Tensor:
        """Flat indices (increasing) of the pairs the batch's budget buys."""
        return batch_topk_chosen(pre, self.cfg.k)

    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_activations(x)
        if not self.training and int(self.threshold_batches) > 0:
            return jumprelu(pre, self.threshold.expand(self.n_latents))
        values, indices, _ = list_rows(pre, self.choose(pre))
        return values.new_zeros(pre.shape).scatter_add_(1, indices, values)

    def loss(self, x: Tensor, state: StepState, target: Tensor | None = None) -> Loss:
        def update(values: Tensor, indices: Tensor, fired: Tensor) -> None:
            update_running(self.threshold, self.threshold_batches, values[fired].min(),
                           self.cfg.threshold_decay)

        out = allocated_loss(self, x, state, target, partial(batch_topk_chosen, k=self.cfg.k),
                             update)
        out.metrics["threshold"] = float(self.threshold)
        return out
