"""Group Bias Adaptation, GBA (Chen, Sheen, Xiong, Wang and Yang 2025, "Taming Polysemanticity in
LLMs: Provable Feature Recovery via Sparse Autoencoders", arXiv 2506.14002).

An SAE trained on reconstruction alone, with no sparsity penalty and no TopK: sparsity comes from
the encoder biases, which are not trained by gradient but adapted so that each latent fires about
as often as a target activation frequency (TAF). The latents are split into groups, each with its
own TAF (geometric from `max_freq` down to `min_freq`), so that frequent and rare features both
find latents whose firing rate matches theirs; the paper's "neuron resonance" observation is that
a latent learns a monosemantic feature when its frequency matches the feature's. With one group
this is the paper's bias adaptation, for which it proves recovery of every planted feature on
data drawn from its sparse-mixture model. Relative to TopK: no fixed number of active latents per
input; each latent's firing rate is controlled instead, and k never has to be chosen.

The model: latent m has a unit-norm atom w_m (tied encoder and decoder by default), a bias b_m
and a trained output scale a_m; x_hat = sum_m a_m phi(w_m . (x - b_dec) + b_m) w_m + b_dec.
The codes `encode` returns are a_m phi(...), so `decode` is the plain codes W_dec + b_dec.

The bias update (a no-grad step inside `loss`): during a window of `update_every` training steps
each latent records how many rows it fired on and its peak projection r_m = max over the window's
rows of w_m . (x - b_dec) (the bias left out). At the first call of the next window:
- a latent that fired more often than its group's TAF: b_m <- max(b_m - lower_rate r_m, min_bias);
- a latent that never fired in the window: b_m <- min(b_m + raise_rate r_m, 0);
- every other latent keeps its bias.
Biases stay in [min_bias, 0] = [-1, 0], the range of a unit atom's projection of inputs of unit
mean squared norm (saelab's trainer normalises inputs to that by default; the bound is in those
units, and is folded with the input scale when the dictionary is saved).

Source of the defaults. The authors' code (github.com/FFishy-git/TamingSAE_GBA) could not be read
from this machine; the defaults follow the paper's method section as issue 15 of this project
reports it from a reading of that code: the output scale a_m, updates every ~50 steps from a
buffer with rate 0.01 x the peak pre-activation, biases kept in [-1, 0], at least 10 groups with
TAFs geometric from 0.5 to 1e-3..1e-4, a JumpReLU activation in the LLM runs. Hence:
n_groups 10, max_freq 0.5, min_freq 1e-4, update_every 50, lower_rate = raise_rate = 0.01,
min_bias -1, output_scale on. The activation defaults to the ReLU of the paper's theory;
`activation="jumprelu"` is the LLM runs' form as reported (phi(z + b) = z where z + b > 0, else
0: the bias is a threshold and does not shrink the code).

Where this file had to choose (the paper's text gives the rule's shape, not every detail):
- the buffer is the window's rows, kept as running statistics (fire counts, peak projection)
  rather than stored; its size is update_every x batch rows (make the window longer for TAFs
  below 1 / (update_every x batch));
- "rarely active" is "not once in the window"; r_m is the peak projection without the bias
  (with the bias included, a silent latent's peak is negative and the raise would lower it);
- TAFs over `n_groups` contiguous, equal blocks of latents (group g holds [g n / G, (g+1) n / G));
- the encoder reads x - b_dec; W_dec (W_enc untied), a and b_dec are trained by the optimiser on
  the squared error alone; decoder rows are unit norm (the trainer's default); biases start at 0;
- windows are keyed on the training step (StepState.step), so several loss calls within one
  step update the biases at most once; updates happen only in training mode.

Measured (bench/claims_gba.py, docs/benchmarks/claims.md): on planted data with unit mean
squared norm, single projections reach 2, so with the defaults the [-1, 0] range binds on both
sides: firing latents sit at the floor and fire far above their targets, and latents whose
projections are all negative stay silent (the raise is a fraction of a peak that is below 0).
After 12,000 steps of 512 the held-out L0 was 103 for a planted L0 of 4.

saelab's earlier form, kept as options: `output_scale=False` (no a_m: the tied unit rows have no
magnitude freedom), and its former constants (n_groups 3, max_freq 0.01, min_freq 0.001,
update_every 1, lower_rate 0.05, raise_rate 0.2, min_bias -inf), which step every batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from saelab.config import check, option
from saelab.dictionaries._base import (
    Dictionary,
    DictionaryConfig,
    Loss,
    StepState,
    fvu,
    squared_error,
)
from saelab.dictionaries._registry import register
from saelab.ops import linear

ACTIVATIONS = ("relu", "jumprelu")
"""Values of `GBAConfig.activation`."""


@dataclass
class GBAConfig(DictionaryConfig):
    n_groups: int = option(10, "Number of latent groups, each with its own target frequency.")
    max_freq: float = option(0.5, "Target activation frequency of the first group.")
    min_freq: float = option(1e-4, "Target activation frequency of the last group.")
    update_every: int = option(50, "Training steps per bias-adaptation window (the buffer).")
    lower_rate: float = option(0.01, "Step that lowers a too-frequent latent's bias, as a "
                                     "fraction of its peak projection in the window.")
    raise_rate: float = option(0.01, "Step that raises a never-firing latent's bias, as a "
                                     "fraction of its peak projection in the window.")
    min_bias: float = option(-1.0, "Lower bound of the biases (the upper bound is 0); in units "
                                   "of inputs with unit mean squared norm.")
    output_scale: bool = option(True, "Train a per-latent output scale a_m (the paper's; off: "
                                      "saelab's earlier form).")
    activation: Literal["relu", "jumprelu"] = option(
        "relu", "relu: phi(z + b) = relu(z + b); jumprelu: z where z + b > 0 (the bias as a "
                "threshold, reported for the paper's LLM runs).")
    tied: bool = option(True, "Encoder rows are the decoder rows (one weight matrix).")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(isinstance(self.n_groups, int) and not isinstance(self.n_groups, bool)
              and 1 <= self.n_groups <= self.n_latents, "n_groups",
              f"must be an integer in [1, n_latents={self.n_latents}], got {self.n_groups!r}")
        check(isinstance(self.max_freq, (int, float)) and 0 < self.max_freq <= 1, "max_freq",
              f"must be in (0, 1], got {self.max_freq!r}")
        check(isinstance(self.min_freq, (int, float)) and 0 < self.min_freq <= self.max_freq,
              "min_freq", f"must be in (0, max_freq={self.max_freq}], got {self.min_freq!r}")
        check(isinstance(self.update_every, int) and self.update_every >= 1, "update_every",
              f"must be a positive integer, got {self.update_every!r}")
        for name in ("lower_rate", "raise_rate"):
            value = getattr(self, name)
            check(isinstance(value, (int, float)) and 0 < value <= 1, name,
                  f"must be in (0, 1], got {value!r}")
        check(isinstance(self.min_bias, (int, float)) and self.min_bias < 0, "min_bias",
              f"must be negative (or -inf), got {self.min_bias!r}")
        check(isinstance(self.output_scale, bool), "output_scale",
              f"must be true or false, got {self.output_scale!r}")
        check(self.activation in ACTIVATIONS, "activation",
              f"must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        check(isinstance(self.tied, bool), "tied", f"must be true or false, got {self.tied!r}")
        check(not self.tied or self.d_out == self.d_in, "tied",
              f"needs d_out == d_in (got {self.d_out} and {self.d_in}); use tied=False")


@register("gba")
class GBA(Dictionary):
    """SAE with group bias adaptation. Weights: W_dec [n_latents, d_out] (also the encoder when
    tied), W_enc [n_latents, d_in] (untied only), b_dec [d_out], scale [n_latents] (a_m, with
    output_scale); buffers: b_enc [n_latents] (adapted, not trained), min_bias [] (its lower
    bound, in input units), and the window's statistics window_fires [n_latents], window_peak
    [n_latents], window_rows [], window_step []."""

    Config = GBAConfig
    scales_with_input = ("b_enc", "b_dec", "window_peak", "min_bias")

    def __init__(self, cfg: GBAConfig):
        super().__init__(cfg)
        self.init_tied_weights()
        if cfg.tied:
            del self.W_enc  # encoder_weight() is W_dec
        b_enc = self.b_enc.detach().clone()
        del self.b_enc  # the encoder bias is adapted, not trained: a buffer
        self.register_buffer("b_enc", b_enc)
        if cfg.output_scale:
            self.scale = nn.Parameter(torch.ones(cfg.n_latents))
        self.register_buffer("min_bias", torch.tensor(float(cfg.min_bias)))
        self.register_buffer("window_fires", torch.zeros(cfg.n_latents, dtype=torch.long))
        self.register_buffer("window_peak", torch.full((cfg.n_latents,), -math.inf))
        self.register_buffer("window_rows", torch.zeros((), dtype=torch.long))
        self.register_buffer("window_step", torch.full((), -1, dtype=torch.long))

    def groups(self) -> Tensor:
        """Group index of each latent [n_latents] (contiguous, equal blocks)."""
        n, g = self.n_latents, self.cfg.n_groups
        return torch.arange(n) * g // n

    def group_targets(self) -> Tensor:
        """Target activation frequency of each group [n_groups], geometric from max_freq to
        min_freq."""
        g = self.cfg.n_groups
        if g == 1:
            return torch.tensor([float(self.cfg.max_freq)])
        ratio = torch.arange(g, dtype=torch.float64) / (g - 1)
        return (self.cfg.max_freq * (self.cfg.min_freq / self.cfg.max_freq) ** ratio).float()

    def targets(self) -> Tensor:
        """Target activation frequency of each latent [n_latents]."""
        return self.group_targets()[self.groups()]

    def encoder_weight(self) -> Tensor:
        """The encoder's rows [n_latents, d_in]: W_dec when tied, else W_enc."""
        return self.W_dec if self.cfg.tied else self.W_enc

    def projections(self, x: Tensor) -> Tensor:
        """Projections w_m . (x - b_dec), without the bias [B, n_latents]."""
        return linear(self.centered(x), self.encoder_weight())

    def pre_activations(self, x: Tensor) -> Tensor:
        """Encoder pre-activations [B, n_latents] (projection + bias)."""
        return self.projections(x) + self.b_enc

    def activate(self, z: Tensor) -> Tensor:
        """Codes a_m phi(z + b_m) [B, n_latents] from projections z [B, n_latents]."""
        pre = z + self.b_enc
        act = pre.relu() if self.cfg.activation == "relu" else z * (pre > 0)
        return act * self.scale if self.cfg.output_scale else act

    def encode(self, x: Tensor) -> Tensor:
        return self.activate(self.projections(x))

    @torch.no_grad()
    def adapt_biases(self) -> None:
        """Apply the bias-adaptation rule to the statistics of the window that just ended, then
        start a new window."""
        rows = int(self.window_rows)
        if rows > 0:
            freq = self.window_fires.float() / rows
            peak = self.window_peak.nan_to_num(neginf=0.0).clamp_min(0)
            too_often = freq > self.targets().to(freq.device)
            never = self.window_fires == 0
            step = torch.where(too_often, -self.cfg.lower_rate * peak, torch.zeros_like(peak))
            step = torch.where(never, self.cfg.raise_rate * peak, step)
            self.b_enc.add_(step).clamp_(min=float(self.min_bias), max=0)
        self.window_fires.zero_()
        self.window_peak.fill_(-math.inf)
        self.window_rows.zero_()

    @torch.no_grad()
    def start_step(self, step: int) -> None:
        """At the first call of a step that starts a window, adapt the biases."""
        if step != int(self.window_step):
            if step % self.cfg.update_every == 0:
                self.adapt_biases()
            self.window_step.fill_(step)

    @torch.no_grad()
    def record(self, z: Tensor) -> None:
        """Add a batch's firing counts and peak projections (z [B, n_latents]) to the window."""
        self.window_fires += (z + self.b_enc > 0).sum(0)
        torch.maximum(self.window_peak, z.max(0).values, out=self.window_peak)
        self.window_rows += z.shape[0]

    def loss(self, x: Tensor, state: StepState, target: Tensor | None = None) -> Loss:
        target = x if target is None else target
        if self.training:
            self.start_step(state.step)
        z = self.projections(x)
        if self.training:
            self.record(z.detach())
        codes = self.activate(z)
        x_hat = codes @ self.W_dec + self.b_dec
        mse = squared_error(x_hat, target).mean()
        fired = (z.detach() + self.b_enc) > 0
        metrics = {"fvu": fvu(x_hat.detach(), target).item(),
                   "l0": fired.sum(-1).float().mean().item(),
                   "mean_bias": float(self.b_enc.mean())}
        return Loss(mse, {"mse": mse}, metrics, fired.any(0))
