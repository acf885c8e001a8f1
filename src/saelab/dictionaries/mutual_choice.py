"""Mutual Choice SAE (Ayonrinde 2024, "Adaptive Sparse Allocation with Mutual Choice & Feature
Choice Sparse Autoencoders").

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
- The auxiliary loss is a field: "zipf" (default; aux_zipf_loss with a running usage estimate
  kept as buffers), "auxk" (AuxK on the trainer's dead mask) or "none".
- Encoder on x - b_dec, tied initialisation, unit-norm decoder rows, sparse training (only the
  selected entries get a gradient), as for TopK.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from saelab.config import check, option
from saelab.dictionaries._base import (
    Dictionary,
    DictionaryConfig,
    Loss,
    StepState,
    check_k,
    fvu,
    squared_error,
)
from saelab.dictionaries._registry import register
from saelab.dictionaries.batchtopk import batch_topk_chosen
from saelab.dictionaries.jumprelu import jumprelu, list_rows, listed_encode
from saelab.ops import sparse_decode
from saelab.ops.allocation import update_running
from saelab.ops.auxk import auxk_loss
from saelab.ops.zipf import register_usage_buffers, zipf_aux_term

AUX_CHOICES = ("zipf", "auxk", "none")


def check_aux_fields(cfg) -> None:
    """Validate (and default) the auxiliary-loss fields shared by the allocation SAEs."""
    check(cfg.aux in AUX_CHOICES, "aux", f"must be one of {AUX_CHOICES}, got {cfg.aux!r}")
    check(cfg.aux_coeff >= 0, "aux_coeff", f"must be >= 0, got {cfg.aux_coeff}")
    if cfg.aux_k is None:
        cfg.aux_k = max(1, cfg.d_in // 2)
    check(isinstance(cfg.aux_k, int) and cfg.aux_k > 0, "aux_k",
          f"must be a positive integer, got {cfg.aux_k!r}")
    check(cfg.zipf_exponent > 0, "zipf_exponent", f"must be > 0, got {cfg.zipf_exponent}")
    check(0 <= cfg.usage_decay < 1, "usage_decay", f"must be in [0, 1), got {cfg.usage_decay}")
    check(0 <= cfg.threshold_decay < 1, "threshold_decay",
          f"must be in [0, 1), got {cfg.threshold_decay}")


def auxiliary(dictionary: Dictionary, xc: Tensor, residual: Tensor, active: Tensor,
              state: StepState) -> Tensor | None:
    """The auxiliary term the config asks for (None when there is none this step): aux_zipf_loss
    (updating the usage estimate with the latents in `active`, a 1-D tensor of latent indices,
    one per active pair) or AuxK."""
    cfg = dictionary.cfg
    if cfg.aux == "none" or cfg.aux_coeff == 0:
        return None
    if cfg.aux == "zipf":
        return zipf_aux_term(dictionary, xc, residual, active, state.step,
                             exponent=cfg.zipf_exponent, decay=cfg.usage_decay, k_aux=cfg.aux_k)
    if state.dead_mask is None or not state.dead_mask.any():
        return None
    return auxk_loss(xc, residual, dictionary.W_enc, dictionary.b_enc, dictionary.W_dec,
                     state.dead_mask, cfg.aux_k)

def allocated_loss(dictionary: Dictionary, x: Tensor, state: StepState, target: Tensor | None,
                   choose, update_thresholds) -> Loss:
    """The training loss shared by the allocation variants (Mutual and Feature Choice): encode
    the entries `choose(pre)` picks as per-row lists, fold the fired values into the inference
    thresholds (`update_thresholds(values, indices, fired)`, training mode only), reconstruct,
    and add the configured auxiliary term. Metrics: fvu, l0, l0_max, inputs_without_latents."""
    target = x if target is None else target
    xc = dictionary._centered(x)
    values, indices, valid = listed_encode(xc, dictionary.W_enc, dictionary.b_enc, choose)
    fired = valid & (values.detach() > 0)
    if dictionary.training and bool(fired.any()):
        update_thresholds(values.detach(), indices, fired)
    x_hat = sparse_decode(values, indices, dictionary.W_dec) + dictionary.b_dec
    mse = squared_error(x_hat, target).mean()
    terms, total = {"mse": mse}, mse
    aux = auxiliary(dictionary, xc, target - x_hat.detach(), indices[fired], state)
    if aux is not None:
        terms["aux"] = aux
        total = total + dictionary.cfg.aux_coeff * aux
    active = torch.zeros(dictionary.n_latents, dtype=torch.bool, device=x.device)
    active[indices[fired]] = True
    l0 = fired.sum(-1).float()
    metrics = {"fvu": fvu(x_hat.detach(), target).item(), "l0": l0.mean().item(),
               "l0_max": l0.max().item(), "inputs_without_latents": (l0 == 0).float()
               .mean().item()}
    return Loss(total, terms, metrics, active)



@dataclass
class MutualChoiceConfig(DictionaryConfig):
    k: int = option(32, "Mean active latents per input: each batch spends a budget of k x "
                        "batch (input, latent) pairs.")
    threshold_decay: float = option(0.9, "Decay of the running average of the smallest kept "
                                         "activation that becomes the inference threshold.")
    aux: str = option("zipf", "Auxiliary loss for dead / under-used latents: zipf, auxk or none.")
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
