"""AbsTopK SAE (Zhu, Khalili and Zhu 2025, "AbsTopK: Rethinking Sparse Autoencoders For
Bidirectional Features").

Deriving SAEs as one unrolled proximal-gradient step of sparse coding, the paper notes that the
ReLU, JumpReLU and TopK activations all come from regularisers that force codes to be
non-negative, so a concept with two opposite poles (male / female) needs two latents. With a
plain L0 constraint the proximal step is hard thresholding: keep the pre-activations largest in
*magnitude*, with their sign. Relative to TopK: selection by |pre| instead of pre, no ReLU, so
codes are signed and one decoder atom is used in both directions.

The authors' form (the default here) follows their training code, `BatchAbsoluteKSAE` in
`src/sae.py` of github.com/xzAscC/sae (the first author's fork of GoXzascc/AbsTopK-SAE), and is
compared there with BatchTopK:
- `selection="batch"`: the k x B entries of largest |pre| over the whole batch of B rows
  (flattened) are kept, signed, so rows get as many latents as they need while the batch spends
  exactly k x B (row, latent) pairs, as BatchTopK does with ReLU'd values;
- no encoder bias (`encoder_bias=False`): pre = (x - b_dec) W_enc^T;
- no ReLU anywhere; dead latents are revived by AuxK on the dead latents' pre-activations of
  largest magnitude, signed (the reference's auxiliary loss, weight 1/32).
The reference trains with k about 0.1 x d_model (51 for Pythia-70M's 512), 16 x d_model latents,
batches of 128 token vectors, Adam lr 3e-4, a latent dead after 5 batches without firing.

saelab's additions, labelled as such:
- `selection="row"`: the k largest |pre| of each row (saelab's earlier form, a per-row TopK by
  magnitude); `encoder_bias=True` adds the trained encoder bias saelab's earlier form had.
- Inference threshold for the batch mode: the reference applies the batch selection at
  evaluation too, so a row's code depends on the other rows. Here, as in saelab's BatchTopK, the
  batch mode learns a running average theta of each training batch's smallest kept |pre|
  (`threshold`, warm start then an exponential moving average with `threshold_decay`); in eval
  mode a latent is active when |pre| > theta, which is per row. Training always uses the batch
  selection.
- AuxK's loss is divided by the residual's variance (saelab's shared `saelab.ops.auxk`), where
  the reference uses the plain mean squared error of the residual.
- Encoder on x - b_dec with tied initialisation and unit-norm decoder rows, as for TopK; training
  is sparse (`listed_encode`: the dense encoder product without autograd, a backward through the
  selected entries only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from saelab.config import check, option
from saelab.dictionaries._base import (
    AuxKConfig,
    Dictionary,
    Loss,
    StepState,
    check_k,
    fvu,
    squared_error,
)
from saelab.dictionaries._registry import register
from saelab.ops import linear, sparse_decode
from saelab.ops.allocation import batch_topk_chosen, update_running
from saelab.ops.auxk import add_auxk
from saelab.ops.listed import listed_encode

SELECTIONS = ("batch", "row")
"""Values of `AbsTopKConfig.selection`."""


@dataclass
class AbsTopKConfig(AuxKConfig):
    k: int = option(32, "Active latents per input (largest |pre-activation|, signed); in batch "
                        "selection the mean, each batch keeping its k x batch largest.")
    selection: Literal["batch", "row"] = option(
        "batch", "batch: the k x B largest |pre| over the batch (the authors' form); row: the k "
                 "largest of each row (saelab's earlier form).")
    encoder_bias: bool = option(False, "Add a trained encoder bias (saelab's earlier form; the "
                                       "authors' encoder has none).")
    threshold_decay: float = option(0.9, "Batch selection: decay of the running average of the "
                                         "smallest kept |pre| that becomes the inference "
                                         "threshold (saelab's, as for BatchTopK).")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_k(self)
        check(self.selection in SELECTIONS, "selection",
              f"must be one of {', '.join(SELECTIONS)}, got {self.selection!r}")
        check(isinstance(self.encoder_bias, bool), "encoder_bias",
              f"must be true or false, got {self.encoder_bias!r}")
        check(isinstance(self.threshold_decay, (int, float)) and 0 <= self.threshold_decay < 1,
              "threshold_decay", f"must be in [0, 1), got {self.threshold_decay!r}")


def abs_topk_chosen(pre: Tensor, k: int) -> Tensor:
    """Flat indices (increasing) of the k entries of largest magnitude in each row of pre
    [B, n]."""
    b, n = pre.shape
    idx = pre.abs().topk(k, dim=-1, sorted=False).indices  # [B, k]
    flat = idx + torch.arange(b, device=pre.device)[:, None] * n  # [B, k] flat indices
    return torch.sort(flat.reshape(-1)).values


def batch_abs_topk_chosen(pre: Tensor, k: int) -> Tensor:
    """Flat indices (increasing) of the k x B entries of largest magnitude of pre [B, n]
    (flattened), ties at the cutoff kept in row-major order; entries exactly 0 are never kept."""
    return batch_topk_chosen(pre.abs(), k)


@register("abstopk")
class AbsTopK(Dictionary):
    """AbsTopK SAE with signed AuxK. Weights: W_enc [n_latents, d_in], W_dec [n_latents, d_out],
    b_dec [d_out], b_enc [n_latents] only with encoder_bias; buffers: threshold [] (inference
    |pre| cutoff of the batch selection) and threshold_batches [] (batches averaged into it)."""

    Config = AbsTopKConfig

    def __init__(self, cfg: AbsTopKConfig):
        super().__init__(cfg)
        self.init_tied_weights()
        if not cfg.encoder_bias:
            del self.b_enc
            self.register_parameter("b_enc", None)  # pre = (x - b_dec) W_enc^T, no bias
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("threshold_batches", torch.zeros((), dtype=torch.long))
        self.scales_with_input = (("b_enc",) if cfg.encoder_bias else ()) + ("b_dec",
                                                                              "threshold")

    def pre_activations(self, x: Tensor) -> Tensor:
        return linear(self.centered(x), self.W_enc, self.b_enc)

    def chosen(self, pre: Tensor) -> Tensor:
        """Training-time selection: flat indices (increasing) of the kept entries of pre."""
        if self.cfg.selection == "batch":
            return batch_abs_topk_chosen(pre, self.cfg.k)
        return abs_topk_chosen(pre, self.cfg.k)

    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_activations(x)
        if self.cfg.selection == "batch" and not self.training:
            return torch.where(pre.abs() > self.threshold, pre, torch.zeros_like(pre))
        keep = torch.zeros(pre.numel(), dtype=torch.bool, device=pre.device)
        keep[self.chosen(pre)] = True
        return torch.where(keep.view_as(pre), pre, torch.zeros_like(pre))

    @torch.no_grad()
    def update_threshold(self, values: Tensor) -> None:
        """Fold this batch's smallest kept |value| into the running average theta."""
        kept = values[values != 0].abs()
        if kept.numel() == 0:
            return
        update_running(self.threshold, self.threshold_batches, kept.min(), self.cfg.threshold_decay)

    def loss(self, x: Tensor, state: StepState, target: Tensor | None = None) -> Loss:
        target = x if target is None else target
        xc = self.centered(x)
        values, indices, _ = listed_encode(xc, self.W_enc, self.b_enc, self.chosen)
        if self.training and self.cfg.selection == "batch":
            self.update_threshold(values.detach())
        x_hat = sparse_decode(values, indices, self.W_dec) + self.b_dec
        mse = squared_error(x_hat, target).mean()
        terms = {"mse": mse}
        # signed AuxK: the dead latents' largest pre-activations in magnitude, with their sign
        total = add_auxk(terms, mse, self.cfg, state.dead_mask, xc, target, x_hat, self.W_enc,
                         self.b_enc, self.W_dec, codes="magnitude")
        fired = values.detach() != 0
        active = torch.zeros(self.n_latents, dtype=torch.bool, device=x.device)
        active[indices[fired]] = True
        metrics = {"fvu": fvu(x_hat.detach(), target).item(),
                   "l0": fired.sum(-1).float().mean().item(),
                   "negative_fraction": (values.detach()[fired] < 0).float().mean().item(),
                   "threshold": float(self.threshold)}
        return Loss(total, terms, metrics, active)
