"""Variational TopK SAE, vSAE (Baker, Li et al. 2025, "Analysis of Variational Sparse
Autoencoders").

Relative to TopK: a KL term to a standard normal prior on the encoder's means, which pulls every
latent's mean towards zero, and (in one option) Gaussian posterior samples in training.

The authors' form (the default, `posterior="fixed"`), as in their reference,
ZachData/SPAR-Variational-Sparse-Autoencoders `dictionary_learning/trainers/vsae_topk.py` at
commit 8e1581a ("Repo Update", 2025-09-27, the commit that adds the paper's Pythia-70M
SAEBench tables; `var_flag=0`, `use_april_update_mode=True`):
- the posterior has a fixed unit variance and nothing is sampled: the codes are the means
  mu = ReLU(W_enc x + b_enc), and TopK keeps the k largest, so the forward pass is deterministic
  in training as at inference, and `encode` is a TopK SAE's;
- KL(N(mu, 1) || N(0, 1)) = 0.5 * sum of mu^2 over **all** latents (not only the k selected),
  summed over latents and averaged over the batch, so the KL's gradient also reaches latents
  that TopK did not select but whose mean is positive, and pushes them below zero;
- the KL weight rises linearly from 0 to `kl_coeff` over the first `kl_warmup` fraction of the
  run (10%), read from the training loop's StepState (step, total_steps);
- the decoder rows are free (not renormalised to unit norm): the reference's "April update"
  mode, which has no decoder renormalisation; `unit_norm_decoder=True` gives saelab's TopK
  decoder instead;
- the paper's Pythia-70M runs use kl_coeff 1.0 (the run names in the commit's
  comprehensive_histogram_analysis/), the default here. MSE (summed over features) and KL are
  both quadratic in the input's scale, so the weight means the same on saelab's normalised inputs.
- AuxK revives dead latents as in TopK (the reference's auxk_alpha 1/32, as saelab's default).

Departures, on points the reference fixes outside the method: the reference clamps the codes to
[-10, 10] inside the KL (a numerical guard, not applied here), initialises the tied weights at
norm 0.1 (here unit rows, as every saelab TopK), does not subtract b_dec before the encoder (here
it does, as every saelab autoencoder: the same function class, since b_enc absorbs W_enc b_dec),
and trains with its own lr schedule and gradient clipping (TrainConfig's business here).

saelab's earlier form (`posterior="sampled"`, saelab's own, kept as an option): each latent has a
learned log-variance `log_var` [n_latents] (the same for every input; the reference's learned
variance, `var_flag=1`, is an input-dependent head, not implemented), the k latents selected on
the means are sampled as ReLU(mu + sigma * eps) in training, and the KL
0.5 * (mu^2 + sigma^2 - 1 - log sigma^2) is summed over the selected latents only. The noise of
training step s comes from a generator seeded with `noise_seed + s` (`noise_seed` a saved buffer
drawn from torch's global generator at creation), so a run is reproducible, a resumed run draws
the same noise, and two evaluations within one step see the same draw. `sample(x)` draws from the
global generator.
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
    check_k,
    fvu,
    squared_error,
)
from saelab.dictionaries._registry import register
from saelab.ops import SparseCodes, linear, sparse_decode, to_dense, topk_encode, topk_relu
from saelab.ops.auxk import add_auxk

POSTERIORS = ("fixed", "sampled")


@dataclass
class VSAEConfig(AuxKConfig):
    k: int = option(32, "Number of active latents per input (selected on the posterior means).")
    posterior: Literal["fixed", "sampled"] = option(
        "fixed", "fixed: the paper's unit variance, no sampling, KL on every latent's mean; "
                 "sampled: saelab's learned per-latent variance, samples and KL on the k "
                 "selected latents.")
    kl_coeff: float = option(1.0, "Weight of the KL divergence from the N(0, 1) prior (after "
                                  "the warm-up).")
    kl_warmup: float = option(0.1, "Fraction of the run over which the KL weight rises "
                                   "linearly from 0 (0: full weight from the first step).")
    unit_norm_decoder: bool = option(False, "Keep decoder rows at unit norm (saelab's TopK); "
                                            "false: free rows, as the reference.")
    init_log_var: float = option(-6.0, "Initial log-variance of every latent (sampled only).")
    learn_variance: bool = option(True, "Learn the per-latent log-variance (sampled only).")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_k(self)
        check(self.posterior in POSTERIORS, "posterior",
              f"must be one of {', '.join(POSTERIORS)}, got {self.posterior!r}")
        check(isinstance(self.kl_coeff, (int, float)) and self.kl_coeff >= 0, "kl_coeff",
              f"must be >= 0, got {self.kl_coeff!r}")
        check(isinstance(self.kl_warmup, (int, float)) and 0 <= self.kl_warmup <= 1,
              "kl_warmup", f"must be in [0, 1], got {self.kl_warmup!r}")
        check(isinstance(self.unit_norm_decoder, bool), "unit_norm_decoder",
              f"must be true or false, got {self.unit_norm_decoder!r}")
        check(isinstance(self.init_log_var, (int, float)) and -30 <= self.init_log_var <= 5,
              "init_log_var", f"must be in [-30, 5], got {self.init_log_var!r}")
        check(isinstance(self.learn_variance, bool), "learn_variance",
              f"must be true or false, got {self.learn_variance!r}")


def gaussian_kl(mu: Tensor, log_var: Tensor) -> Tensor:
    """KL(N(mu, exp(log_var)) || N(0, 1)) elementwise."""
    return 0.5 * (mu.pow(2) + log_var.exp() - 1 - log_var)


def kl_weight(cfg: VSAEConfig, state: StepState) -> float:
    """kl_coeff times the warm-up factor: step / warm-up steps during the first kl_warmup of the
    run (warm-up steps = int(kl_warmup * total_steps), as the reference), then 1."""
    warm = int(cfg.kl_warmup * state.total_steps)
    return cfg.kl_coeff * (min(1.0, state.step / warm) if warm > 0 else 1.0)


@register("vsae")
class VSAE(Dictionary):
    """Variational TopK SAE. Weights: W_enc [n_latents, d_in], b_enc [n_latents], W_dec
    [n_latents, d_out], b_dec [d_out]; with posterior="sampled" also log_var [n_latents] and the
    buffer noise_seed [] (int64)."""

    Config = VSAEConfig
    scales_with_input = ("b_enc", "b_dec")

    def __init__(self, cfg: VSAEConfig):
        super().__init__(cfg)
        self.init_tied_weights()
        if cfg.posterior == "sampled":
            self.log_var = nn.Parameter(torch.full((cfg.n_latents,), float(cfg.init_log_var)),
                                        requires_grad=cfg.learn_variance)
            self.register_buffer("noise_seed", torch.randint(0, 2**62, ()))

    @property
    def unit_norm_decoder(self) -> bool:  # type: ignore[override]
        return self.cfg.unit_norm_decoder

    def pre_activations(self, x: Tensor) -> Tensor:
        """Encoder outputs before the ReLU [B, n_latents]; the posterior means are their ReLU."""
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
        """The generator of training step `step` (seeded with noise_seed + step; sampled only)."""
        g = torch.Generator(device=self.W_dec.device)
        return g.manual_seed((int(self.noise_seed) + step) % 2**63)

    @torch.no_grad()
    def sample(self, x: Tensor) -> Tensor:
        """Codes [B, n_latents] drawn from the posterior: with posterior="sampled" random (the
        global torch generator), with "fixed" the means themselves (`encode`)."""
        if self.cfg.posterior == "fixed":
            return self.encode(x)
        means = topk_relu(self.pre_activations(x), self.cfg.k)
        return to_dense(SparseCodes(self._draw(means), means.indices), self.n_latents)

    def loss(self, x: Tensor, state: StepState, target: Tensor | None = None) -> Loss:
        target = x if target is None else target
        xc = self.centered(x)
        if self.cfg.posterior == "fixed":
            pre = linear(xc, self.W_enc, self.b_enc)  # [B, n_latents]
            means = topk_relu(pre, self.cfg.k)
            values = means.values
            kl = 0.5 * pre.relu().pow(2).sum(-1).mean()  # every latent's mean, selected or not
        else:
            means = topk_encode(xc, self.W_enc, self.b_enc, self.cfg.k)
            values = self._draw(means, self.step_generator(state.step))
            kl = gaussian_kl(means.values, self.log_var[means.indices]).sum(-1).mean()
        x_hat = sparse_decode(values, means.indices, self.W_dec) + self.b_dec
        mse = squared_error(x_hat, target).mean()
        weight = kl_weight(self.cfg, state)
        terms = {"mse": mse, "kl": kl}
        total = mse + weight * kl
        total = add_auxk(terms, total, self.cfg, state.dead_mask, xc, target, x_hat, self.W_enc,
                         self.b_enc, self.W_dec)
        fired = means.values.detach() > 0
        active = torch.bincount(means.indices.reshape(-1), weights=fired.reshape(-1).float(),
                                minlength=self.n_latents) > 0
        metrics = {"fvu": fvu(x_hat.detach(), target).item(),
                   "l0": fired.sum(-1).float().mean().item(), "kl_weight": weight}
        if self.cfg.posterior == "sampled":
            metrics["sigma"] = float((0.5 * self.log_var.detach()).exp().mean())
        return Loss(total, terms, metrics, active)
