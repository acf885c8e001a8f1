"""Gated SAE (Rajamanoharan, Conmy, Smith, Lieberum, Varma, Kramár, Shah and Nanda 2024,
"Improving Dictionary Learning with Gated Sparse Autoencoders").

Relative to a TopK SAE: instead of a hard k, a gate path decides which latents fire (trained with
an L1 penalty and an auxiliary reconstruction), and a magnitude path, sharing the gate's weights
up to a per-latent rescaling, sets how large they are, so the sparsity penalty never shrinks the
codes.

    pi_gate = W_gate (x - b_dec) + b_gate                       gate pre-activations
    pi_mag  = W_mag (x - b_dec) + b_mag,  W_mag = exp(r_mag) * W_gate   (row-wise rescale)
    f       = 1[pi_gate > 0] * ReLU(pi_mag)                     codes
    x_hat   = f W_dec + b_dec
    loss    = ||x - x_hat||^2 + lambda * ||ReLU(pi_gate) * |W_dec rows| ||_1
              + ||x - (ReLU(pi_gate) W_dec' + b_dec')||^2       (W_dec', b_dec' detached copies)

The Heaviside gate passes no gradient: the gate path learns from the sparsity penalty and the
auxiliary term only, the magnitude path and the decoder from the main reconstruction only (the
decoder also from the auxiliary term with `aux_decoder="trained"`, where W_dec', b_dec' are the
decoder itself).

Names. The gate weights are stored as `W_enc` [n_latents, d_in] (the contract's encoder name;
the paper's W_gate), beside `b_gate`, `r_mag`, `b_mag`, `W_dec` [n_latents, d_out], `b_dec`
(the same names SAELens uses). `W_mag` is a property computed from `W_enc` and `r_mag`.

Choices where the paper leaves room:
- Decoder norm. The paper keeps the decoder rows at unit norm and penalises ReLU(pi_gate) with a
  plain L1: `l1_form="plain"`, the default. `l1_form="decoder_norm"` follows the authors'
  later recommendation (LessWrong comment on the paper, 2024): free decoder norms, the L1 term
  weighted by the decoder-row norms, and those norms detached in the penalty, because the
  decoder is frozen in the auxiliary term too (freezing it in one place only trains worse).
- Auxiliary decoder. The paper reconstructs through a frozen copy of the decoder
  (`aux_decoder="frozen"`, the default); SAELens trains the decoder through that term too
  (`aux_decoder="trained"`). On 512 planted directions in 64 dimensions (1,024 latents, 10,000
  steps of 1,024 on the same batches, 2026-12-01) the frozen copy recovered 93.8% of them at
  lambda 0.15 (FVU 0.102, L0 8.6) and 96.5% at 0.3, the trained decoder 99.4% (FVU 0.108, L0
  8.1) and 98.6%, as SAELens' Gated does on the same batches (99.2% and 99.4%). On SmolLM2-135M
  layer 15 (lambda 0.14, 191 steps) both reach FVU 0.284, the trained one at L0 33.5 against
  36.2 with fewer dead latents (59% against 74%) but a worse spliced next-token loss (3.745
  against 3.661). With no clear winner the default stays the paper's.
- The paper revives dead latents by resampling; here AuxK (Gao et al. 2024) on the gate path
  is available instead (`auxk_coeff`, off by default as the paper has no such loss). Its codes
  are the dead gates' signed pre-activations, not their ReLU: a gate closed on every input gets
  no gradient through a ReLU, which is how Gated loses its latents. On SmolLM2-135M layer 15
  (lambda 0.14, auxk_coeff 1/32, 191 steps, 2026-12-01) 74.0% of the latents ended dead with
  the ReLU and 7.1% without, at about the same FVU (0.288 at L0 35.7 against 0.290 at L0 41.1);
  on the flat planted set of bench/recovery.py (lambda 0.3) the two recover the same (97.5% and
  97.7%, FVU 0.126).
- Initialisation: W_dec random unit rows, W_gate = W_dec transposed (tied at initialisation
  only) times min(1, 2 d_in / n_latents), r_mag, b_gate, b_mag = 0, b_dec = data mean. With
  unit rows, half the gates open at the start and the reconstruction is about
  n_latents / (2 d_in) times the input; training first spent its steps shrinking that and
  ended far from the planted dictionary (512 planted directions in 64 dimensions, 1,024
  latents, lambda 0.5, 1,500 steps: 9% recovered and FVU 0.28 instead of 96% and 0.11). lambda ramps up linearly over the first `l1_warmup` of
  training (the authors' advice after the paper; 0 turns it off).
- Default lambda 0.15 (inputs at unit mean squared norm). On SmolLM2-135M layer-15 residuals,
  4,608 latents, 600 steps of 1,024: lambda 0.15 gives L0 34-39 and FVU 0.23 on held-out rows
  (TopK with k = 32 on the same budget: 0.26), 0.1 gives L0 70-80. Sparse planted data needs
  more: lambda 0.5 gives L0 5.5 on planted(d=64, n_atoms=512, mean_active=5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

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
from saelab.ops import linear
from saelab.ops.listed import decode_above, encode_above, fired_latents
from saelab.ops.auxk import add_auxk

L1_FORMS = ("plain", "decoder_norm")
AUX_DECODERS = ("frozen", "trained")


@dataclass
class GatedConfig(AuxKConfig):
    l1_coeff: float = option(0.15, "Weight lambda of the L1 penalty on ReLU(gate pre-activations) "
                                   "(inputs are normalised to unit mean squared norm).")
    l1_form: Literal["plain", "decoder_norm"] = option(
        "plain", "'plain': unit-norm decoder, plain L1 (the paper); 'decoder_norm': free decoder, "
                 "L1 weighted by decoder-row norms.")
    l1_warmup: float = option(0.05, "Fraction of training over which lambda ramps up from 0.")
    aux_coeff: float = option(1.0, "Weight of the auxiliary reconstruction from ReLU(gate) "
                                   "through the decoder (1 in the paper).")
    aux_decoder: Literal["frozen", "trained"] = option(
        "frozen", "'frozen': the auxiliary reconstruction goes through a detached copy of the "
                  "decoder (the paper); 'trained': the decoder learns from it too (SAELens).")
    auxk_coeff: float = auxk_coeff_option(0.0, "; read through the gate path; the paper "
                                               "resamples instead")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.l1_coeff >= 0, "l1_coeff", f"must be >= 0, got {self.l1_coeff}")
        check(self.l1_form in L1_FORMS, "l1_form",
              f"must be one of {', '.join(L1_FORMS)}, got {self.l1_form!r}")
        check(0 <= self.l1_warmup <= 1, "l1_warmup", f"must be in [0, 1], got {self.l1_warmup}")
        check(self.aux_coeff >= 0, "aux_coeff", f"must be >= 0, got {self.aux_coeff}")
        check(self.aux_decoder in AUX_DECODERS, "aux_decoder",
              f"must be one of {', '.join(AUX_DECODERS)}, got {self.aux_decoder!r}")


class GatePreActivations(NamedTuple):
    """The two encoder paths of a Gated SAE."""

    gate: Tensor
    """pi_gate [B, n_latents]: a latent fires where this is > 0."""
    magnitude: Tensor
    """pi_mag [B, n_latents]: ReLU of this is the code of a firing latent."""


def centre_gate_and_magnitude(state: dict[str, Tensor], shift: Tensor) -> None:
    """Both encoder paths absorb the shift of the gate pre-activations (the magnitude path sees
    it rescaled by exp(r_mag))."""
    state["b_gate"] = state["b_gate"] + shift
    state["b_mag"] = state["b_mag"] + shift * state["r_mag"].exp()


@register("gated")
class Gated(Dictionary):
    """Gated SAE. Weights: W_enc (= W_gate) [n_latents, d_in], b_gate, r_mag, b_mag
    [n_latents], W_dec [n_latents, d_out], b_dec [d_out]."""

    Config = GatedConfig
    scales_with_input = ("b_gate", "b_mag", "b_dec")
    formats = {"saelens": SaeLensMapping(
        architecture="gated", centre=centre_gate_and_magnitude,
        tensors={name: name for name in ("W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec")})}

    def __init__(self, cfg: GatedConfig):
        super().__init__(cfg)
        W = unit_rows(cfg.n_latents, cfg.d_out)
        self.W_dec = nn.Parameter(W)
        # Encoder = decoder transpose, scaled so the first reconstruction is the input's size
        scale = dense_encoder_scale(cfg.d_in, cfg.n_latents)
        self.W_enc = nn.Parameter(scale * (W.clone() if cfg.d_in == cfg.d_out
                                           else unit_rows(cfg.n_latents, cfg.d_in)))
        self.b_gate = nn.Parameter(torch.zeros(cfg.n_latents))
        self.r_mag = nn.Parameter(torch.zeros(cfg.n_latents))
        self.b_mag = nn.Parameter(torch.zeros(cfg.n_latents))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_out))

    @property
    def unit_norm_decoder(self) -> bool:  # type: ignore[override]
        return self.cfg.l1_form == "plain"

    @property
    def W_mag(self) -> Tensor:
        """Magnitude-path weights [n_latents, d_in]: the gate weights rescaled per latent."""
        return self.r_mag.exp()[:, None] * self.W_enc

    def pre_activations(self, x: Tensor) -> GatePreActivations:
        """Gate and magnitude pre-activations [B, n_latents]; one shared product W_gate x."""
        shared = linear(x, self.W_enc)  # [B, n_latents]
        if self.d_in == self.d_out:
            # W (x - b_dec) as W x - W b_dec: b_dec's gradient then costs a vector product,
            # not a second [B, n_latents] x [n_latents, d_in] one
            shared = shared - self.W_enc @ self.b_dec
        return GatePreActivations(shared + self.b_gate,
                                  torch.addcmul(self.b_mag, shared, self.r_mag.exp()))

    @staticmethod
    def _codes(pre: GatePreActivations) -> Tensor:
        return torch.where(pre.gate > 0, pre.magnitude.relu(), 0.0)

    def encode(self, x: Tensor) -> Tensor:
        return self._codes(self.pre_activations(x))

    def loss(self, x: Tensor, state: StepState, target: Tensor | None = None) -> Loss:
        target = x if target is None else target
        xc = self.centered(x)
        # Every term lives where the gate is open (codes, ReLU(gate) in the penalty and the
        # auxiliary task, and their gradients): the gate pre-activations above 0, as lists once
        # training has made them sparse (`encode_above`), the magnitudes from the same product.
        above = encode_above(xc, self.W_enc, self.b_gate, 0.0)
        gate_pre = above.values
        shared = gate_pre - above.at(self.b_gate)  # W_gate (x - b_dec)
        magnitude = torch.addcmul(above.at(self.b_mag), shared, above.at(self.r_mag.exp()))
        codes = torch.where(gate_pre > 0, magnitude.relu(), 0.0)
        x_hat = decode_above(codes, above, self.W_dec) + self.b_dec
        mse = squared_error(x_hat, target).mean()
        gate = gate_pre.relu()
        W_dec, b_dec = self.W_dec, self.b_dec  # as the penalty and the auxiliary term see them
        if self.cfg.aux_decoder == "frozen":
            W_dec, b_dec = W_dec.detach(), b_dec.detach()
        if self.cfg.l1_form == "decoder_norm":
            l1 = (gate * above.at(W_dec.norm(dim=1))).sum(-1)  # norms frozen with the decoder
        else:
            l1 = gate.sum(-1)
        l1 = l1.mean()
        # the auxiliary task: ReLU(gate) alone must reconstruct through the decoder
        aux = squared_error(decode_above(gate, above, W_dec) + b_dec, target).mean()
        warm = self.cfg.l1_warmup * state.total_steps
        ramp = min(1.0, (state.step + 1) / warm) if warm > 0 else 1.0
        terms = {"mse": mse, "l1": l1, "aux": aux}
        total = mse + ramp * self.cfg.l1_coeff * l1 + self.cfg.aux_coeff * aux
        # signed codes: a closed gate (pi_gate < 0 on every input) still gets a gradient
        total = add_auxk(terms, total, self.cfg, state.dead_mask, xc, target, x_hat, self.W_enc,
                         self.b_gate, self.W_dec, codes="signed")
        fired = codes > 0
        metrics = {"fvu": fvu(x_hat.detach(), target).item(),
                   "l0": fired.sum(-1).float().mean().item(),
                   "l0_gate": (gate_pre > 0).sum(-1).float().mean().item(),
                   "l1_weight": ramp * self.cfg.l1_coeff}
        return Loss(total, terms, metrics, fired_latents(fired, above, self.n_latents))
