"""Variational TopK SAE, vSAE (Baker, Li et al. 2025, "Analysis of Variational Sparse
Autoencoders").

A TopK SAE whose active codes are samples from a Gaussian posterior instead of fixed values:
the encoder gives a mean per latent (the TopK SAE's pre-activation), the k largest means are
selected, and during training each selected code is mu + sigma * eps with eps ~ N(0, 1)
(reparameterisation), decoded as usual. The loss adds the KL divergence of each selected
latent's posterior N(mu, sigma^2) from the standard normal prior N(0, 1). The paper's hypothesis
is that the noise and the KL push features apart; its finding on Pythia-70M is that the KL
term costs reconstruction and kills latents. Relative to TopK: sampled codes and a KL term in
training; at inference `encode` is the posterior mean, i.e. exactly a TopK SAE's codes.

Where this file had to choose:
- The variance. The paper's post fixes it at 1 in one form ("mean = activation, variance = 1")
  and speaks of learned posteriors in the abstract. Here each latent has a learned log-variance
  (`log_var` [n_latents], the same for every input), initialised at `init_log_var`; with
  `learn_variance=False` it stays there. An input-dependent variance head would double the
  encoder; it is not implemented.
- What is sampled: only the k selected latents (the others are exactly 0, not Gaussian), and the
  selection uses the means, not the samples, so noise never changes which latents are active.
  A sampled code is passed through a ReLU, as TopK's codes are, so codes stay non-negative.
- The KL term is over the selected latents only, summed over them and averaged over the batch:
  KL = 0.5 * sum (mu^2 + sigma^2 - 1 - log sigma^2), mu the ReLU'd mean; weight `kl_coeff`.
  On inputs normalised to unit mean squared norm (how saelab.fit trains) the prior N(0, 1) is
  wide compared with the codes, so the KL mostly pulls sigma up and mu down.
- Where the noise comes from: the noise of training step s is drawn from a generator seeded
  with `noise_seed + s`, where `noise_seed` (a saved buffer) is drawn from torch's global
  generator when the dictionary is created. So a run is reproducible under torch.manual_seed,
  a resumed run draws the same noise, the noise differs from step to step, and the loss is a
  deterministic function of (weights, batch, step): two evaluations within one step see the
  same noise, so they compare the weights, not two draws. `sample(x)` draws from the global
  generator (different on every call, reproducible under torch.manual_seed).
- AuxK for dead latents works as in TopK (on the means).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

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
from saelab.ops import SparseCodes, linear, sparse_decode, to_dense, topk_encode, topk_relu
from saelab.ops.auxk import add_auxk


@dataclass
class VSAEConfig(AuxKConfig):
    k: int = option(32, "Number of active latents per input (selected on the posterior means).")
    kl_coeff: float = option(1e-3, "Weight of the KL divergence from the N(0, 1) prior.")
    init_log_var: float = option(-6.0, "Initial log-variance of every latent's posterior.")
    learn_variance: bool = option(True, "Learn the per-latent log-variance by gradient.")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_k(self)
        check(isinstance(self.kl_coeff, (int, float)) and self.kl_coeff >= 0, "kl_coeff",
              f"must be >= 0, got {self.kl_coeff!r}")
        check(isinstance(self.init_log_var, (int, float)) and -30 <= self.init_log_var <= 5,
              "init_log_var", f"must be in [-30, 5], got {self.init_log_var!r}")
        check(isinstance(self.learn_variance, bool), "learn_variance",
              f"must be true or false, got {self.learn_variance!r}")


def gaussian_kl(mu: Tensor, log_var: Tensor) -> Tensor:
    """KL(N(mu, exp(log_var)) || N(0, 1)) elementwise."""
    return 0.5 * (mu.pow(2) + log_var.exp() - 1 - log_var)


@register("vsae")
class VSAE(Dictionary):
    """Variational TopK SAE. Weights: W_enc [n_latents, d_in], b_enc [n_latents], log_var
    [n_latents], W_dec [n_latents, d_out], b_dec [d_out]; buffer noise_seed [] (int64)."""

    Config = VSAEConfig
    scales_with_input = ("b_enc", "b_dec")

    def __init__(self, cfg: VSAEConfig):
        super().__init__(cfg)
        self.init_tied_weights()
        self.log_var = nn.Parameter(torch.full((cfg.n_latents,), float(cfg.init_log_var)),
                                    requires_grad=cfg.learn_variance)
        self.register_buffer("noise_seed", torch.randint(0, 2**62, ()))

    def pre_activations(self, x: Tensor) -> Tensor:
        """Posterior means before selection [B, n_latents]."""
        return linear(self.centered(x), self.W_enc, self.b_enc)

    def encode(self, x: Tensor) -> Tensor:
        """Deterministic codes: the k largest posterior means, ReLU'd (a TopK SAE's codes)."""
        return to_dense(topk_relu(self.pre_activations(x), self.cfg.k), self.n_latents)

    def _draw(self, means: SparseCodes, generator: torch.Generator | None = None) -> Tensor:
        """Sampled values [B, k] of the selected latents: ReLU(mu + sigma * eps)."""
        sigma = (0.5 * self.log_var[means.indices]).exp()  # [B, k]
        eps = torch.randn(means.values.shape, generator=generator, device=means.values.device,
                          dtype=means.values.dtype)
        return (means.values + sigma * eps).relu()

    def step_generator(self, step: int) -> torch.Generator:
        """The generator of training step `step` (seeded with noise_seed + step)."""
        g = torch.Generator(device=self.W_dec.device)
        return g.manual_seed((int(self.noise_seed) + step) % 2**63)

    @torch.no_grad()
    def sample(self, x: Tensor) -> Tensor:
        """Codes [B, n_latents] drawn from the posterior (random; the global torch generator)."""
        means = topk_relu(self.pre_activations(x), self.cfg.k)
        return to_dense(SparseCodes(self._draw(means), means.indices), self.n_latents)

    def loss(self, x: Tensor, state: StepState, target: Tensor | None = None) -> Loss:
        target = x if target is None else target
        xc = self.centered(x)
        means = topk_encode(xc, self.W_enc, self.b_enc, self.cfg.k)
        values = self._draw(means, self.step_generator(state.step))
        x_hat = sparse_decode(values, means.indices, self.W_dec) + self.b_dec
        mse = squared_error(x_hat, target).mean()
        kl = gaussian_kl(means.values, self.log_var[means.indices]).sum(-1).mean()
        terms = {"mse": mse, "kl": kl}
        total = mse + self.cfg.kl_coeff * kl
        total = add_auxk(terms, total, self.cfg, state.dead_mask, xc, target, x_hat, self.W_enc,
                         self.b_enc, self.W_dec)
        fired = means.values.detach() > 0
        active = torch.bincount(means.indices.reshape(-1), weights=fired.reshape(-1).float(),
                                minlength=self.n_latents) > 0
        metrics = {"fvu": fvu(x_hat.detach(), target).item(),
                   "l0": fired.sum(-1).float().mean().item(),
                   "sigma": float((0.5 * self.log_var.detach()).exp().mean())}
        return Loss(total, terms, metrics, active)
