"""Transcoder (Dunefsky, Chlenski and Nanda 2024, "Transcoders Find Interpretable LLM Feature
Circuits"; the TopK form of Paulo, Shabalin and Belrose 2025, "Transcoders Beat Sparse
Autoencoders for Interpretability").

Relative to a TopK SAE, a transcoder does not reconstruct its input: it predicts a module's output
y [d_out] from that module's input x [d_in] through a sparse bottleneck, y_hat = W_dec^T
TopK(W_enc x + b_enc) + b_dec, trained on (input, output) pairs. Capture both sites of the module
(`saelab capture --hookpoints MODULE:input MODULE`) and train with `target_hookpoint=MODULE`, or
pass `saelab.fit(transcoder, (x, y), config)`.

Choices where the papers leave room:
- Activation: TopK by default (`activation="topk"`, Paulo et al.; no sparsity coefficient to tune,
  AuxK against dead latents); `activation="relu"` is Dunefsky et al.'s ReLU with an L1 penalty on
  the codes (decoder rows held at unit norm in both forms, AuxK off by default for ReLU).
- The encoder reads x itself, never x - b_dec: b_dec is the mean of the output, which lives in
  another space than the input even when d_in == d_out; b_enc absorbs the input's mean.
- Encoder and decoder are initialised independently (random unit rows): tying them, as a TopK SAE
  does, would assume the input and output spaces are the same.
- `loss` without a target is an error, not a fallback to reconstructing x: a transcoder trained
  on its own input would silently be an SAE under another name.
- b_dec starts at the mean of the targets (the trainer passes the target batch to
  `init_from_data`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from saelab.config import check, option
from saelab.dictionaries._base import (
    AuxKConfig,
    Dictionary,
    Loss,
    Output,
    StepState,
    auxk_coeff_option,
    check_k,
    fvu,
    squared_error,
    unit_rows,
)
from saelab.dictionaries._formats import SaeLensMapping, SparsifyMapping
from saelab.dictionaries._registry import register
from saelab.errors import DataError
from saelab.ops import SparseCodes, linear, sparse_decode, to_dense, topk_encode, topk_relu
from saelab.ops.auxk import add_auxk

ACTIVATIONS = ("topk", "relu")

NEEDS_PAIRS = ("a {name} predicts a module's output from its input, so it trains on (input, "
               "output) pairs, and this batch has no target. Capture both sites of the module "
               "(`saelab capture --hookpoints MODULE:input MODULE`) and train with "
               "hookpoint='MODULE:input', target_hookpoint='MODULE' (--target-hookpoint), or "
               "pass saelab.fit({name}, (x, y), config)")


@dataclass
class TranscoderConfig(AuxKConfig):
    activation: Literal["topk", "relu"] = option(
        "topk", "'topk' (k active latents, Paulo et al. 2025) or 'relu' (ReLU with an L1 penalty, "
                "Dunefsky et al. 2024).")
    k: int = option(32, "Active latents per input (activation='topk').")
    l1_coeff: float = option(0.05, "Weight of the L1 penalty on the codes (activation='relu'; "
                                   "inputs are normalised to unit mean squared norm).")
    auxk_coeff: float | None = auxk_coeff_option(None, "; default 1/32 for topk, 0 for relu")
    auxk_k: int | None = option(None, "Latents used by AuxK; default d_out // 2.")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.activation in ACTIVATIONS, "activation",
              f"must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        check_k(self)
        check(self.l1_coeff >= 0, "l1_coeff", f"must be >= 0, got {self.l1_coeff}")

    def default_auxk(self) -> None:
        """AuxK on for TopK codes (1/32), off for ReLU ones; auxk_k = d_out // 2."""
        if self.auxk_coeff is None:
            self.auxk_coeff = 1 / 32 if self.activation == "topk" else 0.0
        if self.auxk_k is None:
            self.auxk_k = max(1, self.d_out // 2)


def unused_k(cfg: dict, fields: dict) -> None:
    """A ReLU transcoder does not use k, but it must be valid: min(32, n_latents)."""
    fields["k"] = min(32, fields["n_latents"])


SAELENS = {"fields": {"d_out": "d_out"}, "fixed": {"activation": "relu"}, "centre": None,
           "read_fields": unused_k}
"""What SAELens' transcoder and skip_transcoder share: ReLU codes, an encoder that reads x."""


@register("transcoder")
class Transcoder(Dictionary):
    """Sparse transcoder. Weights: W_enc [n_latents, d_in], b_enc [n_latents],
    W_dec [n_latents, d_out], b_dec [d_out]."""

    Config = TranscoderConfig
    scales_with_input = ("b_enc", "b_dec")
    formats = {"saelens": SaeLensMapping(architecture="transcoder", **SAELENS),
               "sparsify": SparsifyMapping(transcode=True, fixed={"activation": "topk"})}

    @torch.no_grad()
    def fold_scales(self, input_scale: float, target_scale: float) -> None:
        """Trained on (sx x, sy y): W_enc * sx / sy and b_enc / sy give codes 1/sy of the
        trained ones on x (TopK picks the same latents, ReLU commutes with a positive scale),
        so with b_dec / sy the output is y's. With sx == sy this is `fold_input_scale`."""
        self.W_enc.mul_(input_scale / target_scale)
        self.b_enc.div_(target_scale)
        self.b_dec.div_(target_scale)
    needs: ClassVar[frozenset[str]] = frozenset({"target"})
    """`loss` needs the target (the module's output); `fit` needs (input, output) pairs."""

    def __init__(self, cfg: TranscoderConfig):
        super().__init__(cfg)
        self.W_enc = nn.Parameter(unit_rows(cfg.n_latents, cfg.d_in))
        self.b_enc = nn.Parameter(torch.zeros(cfg.n_latents))
        self.W_dec = nn.Parameter(unit_rows(cfg.n_latents, cfg.d_out))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_out))

    def skip(self, x: Tensor) -> Tensor | None:
        """The dense linear part of the prediction [B, d_out] (None: no skip term)."""
        return None

    def _sparse_codes(self, x: Tensor) -> SparseCodes | Tensor:
        """TopK codes as SparseCodes (fast path), ReLU codes as a dense tensor."""
        if self.cfg.activation == "topk":
            return topk_encode(x, self.W_enc, self.b_enc, self.cfg.k)
        return torch.relu(torch.addmm(self.b_enc, x, self.W_enc.t()))

    def encode(self, x: Tensor) -> Tensor:
        pre = linear(x, self.W_enc, self.b_enc)
        if self.cfg.activation == "topk":
            return to_dense(topk_relu(pre, self.cfg.k), self.n_latents)
        return torch.relu(pre)

    def forward(self, x: Tensor) -> Output:
        codes = self.encode(x)
        y_hat = self.decode(codes)
        skip = self.skip(x)
        return Output(y_hat if skip is None else y_hat + skip, codes)

    def loss(self, x: Tensor, state: StepState, target: Tensor | None = None) -> Loss:
        if target is None:
            raise DataError(NEEDS_PAIRS.format(name=self.architecture))
        codes = self._sparse_codes(x)
        if isinstance(codes, SparseCodes):
            y_hat = sparse_decode(codes.values, codes.indices, self.W_dec) + self.b_dec
            fired = codes.values > 0
            active = torch.bincount(codes.indices.reshape(-1), weights=fired.reshape(-1).float(),
                                    minlength=self.n_latents) > 0
        else:
            y_hat = self.decode(codes)
            fired = codes > 0
            active = fired.any(0)
        skip = self.skip(x)
        if skip is not None:
            y_hat = y_hat + skip
        mse = squared_error(y_hat, target).mean()
        terms = {"mse": mse}
        total = mse
        if not isinstance(codes, SparseCodes) and self.cfg.l1_coeff > 0:
            terms["l1"] = codes.sum(-1).mean()
            total = total + self.cfg.l1_coeff * terms["l1"]
        # the encoder reads x itself (no centring)
        total = add_auxk(terms, total, self.cfg, state.dead_mask, x, target, y_hat, self.W_enc,
                         self.b_enc, self.W_dec)
        metrics = {"fvu": fvu(y_hat.detach(), target).item(),
                   "l0": fired.sum(-1).float().mean().item()}
        return Loss(total, terms, metrics, active)
