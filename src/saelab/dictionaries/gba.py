"""Group Bias Adaptation, GBA (Chen, Sheen, Xiong, Wang and Yang 2025, "Taming Polysemanticity in
LLMs: Provable Feature Recovery via Sparse Autoencoders").

A ReLU SAE trained on reconstruction alone, with no sparsity penalty and no TopK: sparsity comes
from the encoder biases, which are not trained by gradient but adapted so that each latent fires
about as often as a target activation frequency (TAF). The latents are split into groups, each
with its own TAF (geometrically spaced from `max_freq` down to `min_freq`), so that frequent and
rare features both find latents whose firing rate matches theirs; the paper's "neuron resonance"
observation is that a latent learns a monosemantic feature when its frequency matches the
feature's. With one group this is the paper's bias adaptation, for which it proves recovery of
every planted feature on data drawn from its sparse-mixture model. Relative to TopK: no fixed
number of active latents per input; each latent's firing rate is controlled instead.

The update (a no-grad step inside `loss`, like BatchTopK's running threshold): over a window of
`update_every` training steps, each latent records how many rows it fired on and its largest
pre-activation r. At the first call of the next window:
- a latent that fired more often than its group's TAF lowers its bias by `lower_rate * r`
  (r > 0 then; r sets the step in the latent's own units);
- a latent that never fired raises its bias by `raise_rate * (-r)`, a fraction of the gap
  between its largest pre-activation and zero (so it will fire on the rows closest to it);
- every other latent (fired at least once, no more than its TAF) keeps its bias.
Biases are kept <= 0.

Where this file had to choose (the paper's text gives the rule's shape, not every constant):
- the band: a latent is left alone between "fired at least once in the window" and its TAF; the
  paper's "rarely active" threshold is taken as "not once in the window" (a window of
  update_every x batch rows; make the window longer for very small TAFs);
- the step sizes are proportional to the latent's largest pre-activation (lowering) or to its
  gap to firing (raising), with rates `lower_rate` and `raise_rate`;
- TAFs are geometric between max_freq and min_freq over `n_groups` contiguous, equal blocks of
  latents (group g holds latents [g n / G, (g + 1) n / G));
- the encoder reads x - b_dec; W_enc, W_dec and b_dec are trained by the optimiser on the squared
  error alone; decoder rows are unit norm (the trainer's default); the encoder starts tied to it;
- windows are keyed on the training step (StepState.step), so several loss calls within one
  step (e.g. an evaluation before and after it) update the biases at most once; updates happen
  only in training mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

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


@dataclass
class GBAConfig(DictionaryConfig):
    n_groups: int = option(3, "Number of latent groups, each with its own target frequency.")
    max_freq: float = option(0.01, "Target activation frequency of the first group.")
    min_freq: float = option(0.001, "Target activation frequency of the last group.")
    update_every: int = option(1, "Training steps per bias-adaptation window.")
    lower_rate: float = option(0.05, "Step that lowers a too-frequent latent's bias, as a "
                                     "fraction of its largest pre-activation.")
    raise_rate: float = option(0.2, "Step that raises a never-firing latent's bias, as a "
                                    "fraction of its gap to firing.")
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
        check(isinstance(self.tied, bool), "tied", f"must be true or false, got {self.tied!r}")
        check(not self.tied or self.d_out == self.d_in, "tied",
              f"needs d_out == d_in (got {self.d_out} and {self.d_in}); use tied=False")


@register("gba")
class GBA(Dictionary):
    """ReLU SAE with group bias adaptation. Weights: W_dec [n_latents, d_out] (also the encoder
    when tied), W_enc [n_latents, d_in] (untied only), b_dec [d_out]; buffers: b_enc [n_latents] (adapted, not trained), and the window's
    statistics window_fires [n_latents], window_max [n_latents], window_rows [], window_step []."""

    Config = GBAConfig
    scales_with_input = ("b_enc", "b_dec", "window_max")

    def __init__(self, cfg: GBAConfig):
        super().__init__(cfg)
        self.init_tied_weights()
        if cfg.tied:
            del self.W_enc  # encoder_weight() is W_dec
        b_enc = self.b_enc.detach().clone()
        del self.b_enc  # the encoder bias is adapted, not trained: a buffer
        self.register_buffer("b_enc", b_enc)
        self.register_buffer("window_fires", torch.zeros(cfg.n_latents, dtype=torch.long))
        self.register_buffer("window_max", torch.full((cfg.n_latents,), -math.inf))
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

    def pre_activations(self, x: Tensor) -> Tensor:
        """Encoder pre-activations [B, n_latents]."""
        return linear(self.centered(x), self.encoder_weight(), self.b_enc)

    def encode(self, x: Tensor) -> Tensor:
        return self.pre_activations(x).relu()

    @torch.no_grad()
    def adapt_biases(self) -> None:
        """Apply the bias-adaptation rule to the statistics of the window that just ended, then
        start a new window."""
        rows = int(self.window_rows)
        if rows > 0:
            freq = self.window_fires.float() / rows
            top = self.window_max
            too_often = freq > self.targets().to(freq.device)
            never = self.window_fires == 0
            step = torch.where(too_often, -self.cfg.lower_rate * top.clamp_min(0),
                               torch.zeros_like(top))
            step = torch.where(never & torch.isfinite(top), self.cfg.raise_rate * (-top), step)
            self.b_enc.add_(step).clamp_(max=0)
        self.window_fires.zero_()
        self.window_max.fill_(-math.inf)
        self.window_rows.zero_()

    @torch.no_grad()
    def _start_step(self, step: int) -> None:
        """At the first call of a step that starts a window, adapt the biases."""
        if step != int(self.window_step):
            if step % self.cfg.update_every == 0:
                self.adapt_biases()
            self.window_step.fill_(step)

    @torch.no_grad()
    def _record(self, pre: Tensor) -> None:
        """Add a batch's firing counts and largest pre-activations [B, n_latents] to the
        window."""
        self.window_fires += (pre > 0).sum(0)
        torch.maximum(self.window_max, pre.max(0).values, out=self.window_max)
        self.window_rows += pre.shape[0]

    def loss(self, x: Tensor, state: StepState, target: Tensor | None = None) -> Loss:
        target = x if target is None else target
        if self.training:
            self._start_step(state.step)
        pre = self.pre_activations(x)
        if self.training:
            self._record(pre.detach())
        codes = pre.relu()
        x_hat = codes @ self.W_dec + self.b_dec
        mse = squared_error(x_hat, target).mean()
        fired = codes.detach() > 0
        metrics = {"fvu": fvu(x_hat.detach(), target).item(),
                   "l0": fired.sum(-1).float().mean().item(),
                   "mean_bias": float(self.b_enc.mean())}
        return Loss(mse, {"mse": mse}, metrics, fired.any(0))
