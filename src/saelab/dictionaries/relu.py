"""ReLU SAE with an L1 penalty (Bricken et al. 2023, "Towards Monosemanticity"; the
decoder-norm-weighted form from Anthropic's "Circuits Updates, April 2024").

Codes are ReLU(W_enc (x - b_dec) + b_enc); sparsity comes from an L1 penalty instead of a hard
k. Two forms:
- `l1_form="plain"`: L1 of the codes, with the decoder rows held at unit norm (2023 recipe);
- `l1_form="decoder_norm"`: L1 of code x decoder-row norm, decoder rows left free (2024 recipe).
The L1 coefficient is warmed up linearly over the first `l1_warmup` fraction of training.
AuxK (Gao et al. 2024) is available for dead latents (`auxk_coeff`, off by default: neither L1
recipe has it). Its codes are the dead latents' signed pre-activations: a ReLU latent is dead
because its pre-activation is negative on every input, where a ReLU on the AuxK codes would give
it no gradient. On SmolLM2-135M layer 15 (L1 0.22, auxk_coeff 1/32, 191 steps, 2026-12-01)
15.7% of the latents ended dead with that ReLU, 11.0% without (16.1% with no AuxK), FVU 0.431
at L0 34.8 and 0.429 at L0 35.9.

Initialisation (a choice; the papers give only outlines): W_enc = W_dec transposed. In the
decoder-norm form both have rows of norm 0.1 (the 2024 recipe); in the plain form the decoder
rows are unit and the encoder is scaled by min(1, 2 d_in / n_latents)
(`dense_encoder_scale`), so the first reconstruction is the input's size rather than
n_latents / (2 d_in) times it. On 512 planted directions in 64 dimensions (1,024 latents, 3,000
steps of 1,024, lambda 0.2) the unscaled plain form recovered 57% of them, the scaled one 99%.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from saelab.config import check, option
from saelab.dictionaries._base import (
    AuxKConfig,
    Dictionary,
    Loss,
    StepState,
    auxk_coeff_option,
    dense_encoder_scale,
    fvu,
    squared_error,
    unit_rows,
)
from saelab.dictionaries._formats import SaeLensMapping
from saelab.dictionaries._registry import register
from saelab.errors import FormatError
from saelab.ops.auxk import add_auxk
from saelab.ops.listed import decode_above, encode_above, fired_latents

L1_FORMS = ("plain", "decoder_norm")


@dataclass
class ReLUConfig(AuxKConfig):
    l1_coeff: float = option(0.05, "Weight of the L1 sparsity penalty (inputs are normalised to "
                                   "unit mean squared norm during training).")
    l1_form: Literal["plain", "decoder_norm"] = option(
        "decoder_norm", "'plain' (unit-norm decoder) or 'decoder_norm' (L1 weighted by decoder-row "
                        "norms).")
    l1_warmup: float = option(0.05, "Fraction of training over which the L1 weight ramps up.")
    auxk_coeff: float = auxk_coeff_option(0.0, "; the L1 recipes have none")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.l1_coeff >= 0, "l1_coeff", f"must be >= 0, got {self.l1_coeff}")
        check(self.l1_form in L1_FORMS, "l1_form",
              f"must be one of {', '.join(L1_FORMS)}, got {self.l1_form!r}")
        check(0 <= self.l1_warmup <= 1, "l1_warmup", f"must be in [0, 1], got {self.l1_warmup}")


def relu_activation_only(cfg: dict, fields: dict) -> None:
    """SAELens' "standard" SAE may have another activation; saelab's is ReLU."""
    if cfg.get("activation_fn", "relu") not in ("relu", None):
        raise FormatError(f"standard SAE with activation {cfg['activation_fn']!r}; saelab reads "
                          "the ReLU one")


@register("relu")
class ReLU(Dictionary):
    """ReLU/L1 SAE. Weights: W_enc [n_latents, d_in], b_enc, W_dec [n_latents, d_out], b_dec."""

    Config = ReLUConfig
    scales_with_input = ("b_enc", "b_dec")
    formats = {"saelens": SaeLensMapping(architecture="standard",
                                         read_fields=relu_activation_only)}

    def __init__(self, cfg: ReLUConfig):
        super().__init__(cfg)
        W = unit_rows(cfg.n_latents, cfg.d_out)
        W_enc = W.clone() if cfg.d_in == cfg.d_out else unit_rows(cfg.n_latents, cfg.d_in)
        if cfg.l1_form == "decoder_norm":
            W = W * 0.1  # small decoder rows, as the 2024 recipe initialises them
            W_enc = W_enc * 0.1
        else:  # unit decoder rows: scale the encoder so the first reconstruction is x's size
            W_enc = W_enc * dense_encoder_scale(cfg.d_in, cfg.n_latents)
        self.W_dec = nn.Parameter(W)
        self.W_enc = nn.Parameter(W_enc)
        self.b_enc = nn.Parameter(torch.zeros(cfg.n_latents))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_out))

    @property
    def unit_norm_decoder(self) -> bool:  # type: ignore[override]
        return self.cfg.l1_form == "plain"

    def encode(self, x: Tensor) -> Tensor:
        xc = x - self.b_dec if self.d_in == self.d_out else x
        return torch.relu(torch.addmm(self.b_enc, xc, self.W_enc.t()))

    def loss(self, x: Tensor, state: StepState, target: Tensor | None = None) -> Loss:
        target = x if target is None else target
        # the positive pre-activations, as lists once training has made them sparse
        above = encode_above(self.centered(x), self.W_enc, self.b_enc, 0.0)
        codes = above.values.relu()
        x_hat = decode_above(codes, above, self.W_dec) + self.b_dec
        mse = squared_error(x_hat, target).mean()
        if self.cfg.l1_form == "decoder_norm":
            l1 = (codes * above.at(self.W_dec.norm(dim=1))).sum(-1).mean()
        else:
            l1 = codes.sum(-1).mean()
        warm = self.cfg.l1_warmup * state.total_steps
        ramp = min(1.0, (state.step + 1) / warm) if warm > 0 else 1.0
        terms = {"mse": mse, "l1": l1}
        total = add_auxk(terms, mse + ramp * self.cfg.l1_coeff * l1, self.cfg, state.dead_mask,
                         self.centered(x), target, x_hat, self.W_enc, self.b_enc, self.W_dec,
                         codes="signed")
        fired = codes > 0
        metrics = {"fvu": fvu(x_hat.detach(), target).item(),
                   "l0": fired.sum(-1).float().mean().item(), "l1_weight": ramp * self.cfg.l1_coeff}
        return Loss(total, terms, metrics, fired_latents(fired, above, self.n_latents))
