"""BatchTopK SAE (Bussmann, Leask and Nanda 2024, "BatchTopK Sparse Autoencoders").

Where a TopK SAE keeps the k largest pre-activations of each row, BatchTopK keeps the k x B
largest ReLU'd pre-activations of the whole batch of B rows (flattened), so rows get as many
latents as they need while the batch's total is exactly k x B (when that many are positive).
Because that selection depends on the other rows, the dictionary also learns a single inference
threshold theta during training; at inference a latent is active when its pre-activation exceeds
theta, a JumpReLU with one threshold for every latent, which is per row. `to_inference()`
returns that JumpReLU as a `jumprelu` dictionary. Dead latents are revived by AuxK, as for TopK.

Modes: in training mode (`.train()`, which is how saelab.fit runs it) `encode` and `loss` use
the batch selection; in eval mode (`.eval()`; saelab.fit returns the dictionary in eval mode)
`encode` applies theta. `loss` always trains with the batch selection and updates theta only in
training mode. Before any training step theta is 0 and eval-mode codes are the plain ReLU.

Where this file had to choose:
- theta: the paper estimates it as the average, over batches, of the smallest positive
  activation kept in each batch. Here it is a running average with a warm start: after n batches
  the weight of the newest batch is max(1 - threshold_decay, 1 / n), so the first
  1 / (1 - threshold_decay) batches (10 by default) are averaged equally and later ones form an
  exponential moving average that forgets the early, untrained batches. The memory is short on
  purpose: a batch's smallest kept activation varies by only a few percent from batch to batch
  (the cutoff of k x B values out of B x n), but it drifts as long as the weights train, and an
  average that remembers 100 batches lags behind it (SmolLM2 layer 15, k 32, 240 steps: with
  decay 0.99 the final theta was 9% high and inference kept 28.4 latents per row instead of 32).
  theta is a registered buffer (`threshold`, in input units, folded with the input scale), with
  the count of batches seen (`threshold_batches`), so both are saved and a resumed run continues
  the same average.
- Eval-mode codes compare with exp(log theta), the very float the JumpReLU from `to_inference()`
  stores its threshold as (log_threshold), so the two give identical codes; it differs from
  theta by at most a rounding step.
- The encoder reads x - b_dec and is initialised tied to the decoder, as in the TopK SAE.
- Training is sparse like TopK's: the dense encoder product is made once without autograd, the
  selection is stored as per-row lists padded to the longest row (`saelab.ops.listed`; padding
  has value 0 and gets no gradient), and the backward touches only the selected latents. The
  selection avoids a top-k over all B x n entries (see `saelab.ops.allocation.batch_pool`).

Figures (2 shared CPU cores, so times are loose): on SmolLM2 layer-15 residuals (4,608 latents,
k 32, 240 steps of 4,096 rows) held-out FVU is 0.21. On bench/recovery.py's planted set (512
directions in 64 dimensions, ~5 active, 1,024 latents, k 5, 10,000 steps of 1,024 at lr 8e-3)
it recovers 99.0% of the directions when a latent counts as dead after 200,000 quiet vectors,
but 81.4% with a window of 2.5M: with the batch-wide selection, the latents left for the rarest
directions only get there through AuxK, so the dead window sets how soon they are put to work.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

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
from saelab.dictionaries._formats import PLAIN, SaeLensMapping, inference_form, whole_k
from saelab.dictionaries._registry import register
from saelab.dictionaries.jumprelu import JumpReLU
from saelab.ops import sparse_decode
from saelab.ops.allocation import batch_topk_chosen, update_running
from saelab.ops.auxk import add_auxk
from saelab.ops.jumprelu import jumprelu
from saelab.ops.listed import Listed, list_rows, listed_encode


@dataclass
class BatchTopKConfig(AuxKConfig):
    k: int = option(32, "Mean active latents per input: each batch keeps its k x batch largest.")
    threshold_decay: float = option(0.9, "Decay of the running average of the smallest kept "
                                         "activation that becomes the inference threshold.")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_k(self)
        check(0 <= self.threshold_decay < 1, "threshold_decay",
              f"must be in [0, 1), got {self.threshold_decay}")


def batch_topk(pre: Tensor, k: int) -> Listed:
    """The k x B largest positive entries of pre [B, n] (flattened), as per-row lists [B, m]
    (m the largest count of any row; padding has value 0)."""
    return list_rows(pre, batch_topk_chosen(pre, k))


def threshold_from_saelens(cfg: dict, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """SAELens' `topk_threshold` [] as theta, counted as one batch when it was learned (> 0)."""
    state["threshold"] = state["threshold"].to(state["W_dec"].dtype)
    state["threshold_batches"] = torch.tensor(1 if float(state["threshold"]) > 0 else 0)
    return {}


@register("batchtopk")
class BatchTopK(Dictionary):
    """BatchTopK SAE with AuxK and a learned inference threshold. Weights: W_enc [n_latents,
    d_in], b_enc [n_latents], W_dec [n_latents, d_out], b_dec [d_out]; buffers: threshold []
    (theta) and threshold_batches [] (batches averaged into it)."""

    Config = BatchTopKConfig
    scales_with_input = ("b_enc", "b_dec", "threshold")
    formats = {"saelens": SaeLensMapping(
        architecture="batchtopk", tensors={**PLAIN, "topk_threshold": "threshold"},
        fields={"k": "k"}, read_fields=whole_k, read=threshold_from_saelens,
        written_as=inference_form)}
    """Read from SAELens' training-time BatchTopK; written as its inference form, a JumpReLU."""

    def __init__(self, cfg: BatchTopKConfig):
        super().__init__(cfg)
        self.init_tied_weights()
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("threshold_batches", torch.zeros((), dtype=torch.long))

    def inference_threshold(self) -> Tensor:
        """theta as the JumpReLU of `to_inference()` stores it: exp(log theta), [n_latents]."""
        return self.threshold.log().expand(self.n_latents).contiguous().exp()

    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_activations(x)
        if self.training:
            values, indices, _ = batch_topk(pre, self.cfg.k)
            # scatter_add, not scatter: the padding (index 0, value 0) must not overwrite latent 0
            return values.new_zeros(pre.shape).scatter_add_(1, indices, values)
        return jumprelu(pre, self.inference_threshold())

    @torch.no_grad()
    def update_threshold(self, values: Tensor) -> None:
        """Fold this batch's smallest kept activation into the running average theta."""
        kept = values[values > 0]
        if kept.numel() == 0:
            return
        update_running(self.threshold, self.threshold_batches, kept.min(), self.cfg.threshold_decay)

    def loss(self, x: Tensor, state: StepState, target: Tensor | None = None) -> Loss:
        target = x if target is None else target
        xc = self.centered(x)
        values, indices, _ = listed_encode(xc, self.W_enc, self.b_enc,
                                           partial(batch_topk_chosen, k=self.cfg.k))
        if self.training:
            self.update_threshold(values.detach())
        x_hat = sparse_decode(values, indices, self.W_dec) + self.b_dec
        mse = squared_error(x_hat, target).mean()
        terms = {"mse": mse}
        total = mse
        total = add_auxk(terms, total, self.cfg, state.dead_mask, xc, target, x_hat, self.W_enc,
                         self.b_enc, self.W_dec)
        fired = values.detach() > 0
        active = torch.zeros(self.n_latents, dtype=torch.bool, device=x.device)
        active[indices[fired]] = True
        metrics = {"fvu": fvu(x_hat.detach(), target).item(),
                   "l0": fired.sum(-1).float().mean().item(),
                   "threshold": float(self.threshold)}
        return Loss(total, terms, metrics, active)

    @torch.no_grad()
    def to_inference(self) -> JumpReLU:
        """The same dictionary as a `jumprelu` whose every latent's threshold is theta; its
        codes equal this dictionary's eval-mode codes."""
        cfg = JumpReLU.Config(d_in=self.d_in, n_latents=self.n_latents, d_out=self.d_out)
        with torch.random.fork_rng(devices=[]):  # its random init is overwritten anyway
            out = JumpReLU(cfg).to(self.W_dec)
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(out, name).copy_(getattr(self, name))
        out.log_threshold.copy_(self.threshold.log().expand(self.n_latents))
        out.provenance = {**self.provenance, "converted_from": "batchtopk",
                          "batchtopk_k": self.cfg.k}
        return out.eval()
