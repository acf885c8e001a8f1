"""Matryoshka SAE (Bussmann, Nabeshima, Karvonen and Nanda 2025, "Learning Multi-Level Features
with Matryoshka Sparse Autoencoders"; Nabeshima 2024, "Matryoshka Sparse Autoencoders").

Relative to a TopK SAE: the dictionary is a stack of nested prefixes (its first m_1 < m_2 < ...
< n_latents latents), each of which must reconstruct the input on its own, so the first latents
learn general features and later ones refine them; latents are picked by BatchTopK.

    pre       = W_enc (x - b_dec) + b_enc                         [B, n_latents]
    f         = BatchTopK(ReLU(pre)): the k * B largest entries of the whole batch
    x_hat_m   = f[:, :m] W_dec[:m] + b_dec                        one per prefix size m
    loss      = sum over m of ||x - x_hat_m||^2  (+ AuxK on the full reconstruction)

At inference a latent fires where its pre-activation exceeds one global threshold, the running
mean of the smallest code BatchTopK kept in each training batch (Bussmann et al. 2024, "BatchTopK
Sparse Autoencoders"); every row then has about k active latents on average, and a row's codes
no longer depend on the rest of its batch.

Choices where the papers leave room:
- Prefixes are fixed (Bussmann et al.), not sampled per batch (Nabeshima). The default
  `prefixes` is n_latents times 1/16, 1/8, 1/4, 1/2, 1, rounded (Bussmann et al.'s group sizes
  n/16, n/16, n/8, n/4, n/2, as prefix ends), duplicates and zeros dropped.
- The prefix losses are summed, unweighted, as in the paper's equation (their code averages
  them; under Adam only the weight of AuxK relative to them differs). No bias-only term.
- The decoder rows are kept at unit norm, and encoder = decoder transpose at initialisation.
- The threshold is an exponential moving average (decay 0.99) of each training batch's smallest
  kept positive code, started at the first batch's value (a buffer, saved with the weights).
  Until a first training batch has been seen (threshold < 0) `encode` uses BatchTopK over the
  batch it is given.
- AuxK (Gao et al. 2024) revives dead latents by reconstructing the full dictionary's residual,
  on by default as in the paper.
- Training runs on sparse codes: the dense encoder product (no gradient) picks the k * B
  entries, and everything else touches only those, O(k B d). BatchTopK gives rows different
  numbers of latents, so the kept codes are flat lists in row-major order, and embedding_bag
  sums them per (row, group between two prefix ends): one decode gives every prefix's
  reconstruction as a running sum over the groups.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.config import check, option
from saelab.dictionaries._base import (
    AuxKConfig,
    Dictionary,
    Loss,
    StepState,
    check_k,
    squared_error,
)
from saelab.dictionaries._formats import PLAIN, SaeLensMapping, inference_form, whole_k
from saelab.dictionaries._registry import register
from saelab.dictionaries.jumprelu import JumpReLU
from saelab.errors import ConfigError
from saelab.ops.bags import bag_decode, batch_topk, batch_topk_encode
from saelab.ops.auxk import add_auxk
from saelab.ops.jumprelu import log_exact

PREFIX_FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2)
THRESHOLD_DECAY = 0.99


def default_prefixes(n_latents: int) -> list[int]:
    """n_latents x (1/16, 1/8, 1/4, 1/2, 1), rounded, without zeros or repeats."""
    sizes = {max(1, round(n_latents * f)) for f in PREFIX_FRACTIONS} | {n_latents}
    return sorted(sizes)


@dataclass
class MatryoshkaConfig(AuxKConfig):
    k: int = option(32, "Mean number of active latents per input: BatchTopK keeps k x batch "
                        "codes over each training batch.")
    prefixes: list[int] | None = option(None, "Increasing prefix sizes, each reconstructing on "
                                              "its own, ending at n_latents; default n_latents x "
                                              "(1/16, 1/8, 1/4, 1/2, 1).")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_k(self)
        if self.prefixes is None:
            self.prefixes = default_prefixes(self.n_latents)
        self.prefixes = self._checked_prefixes(self.prefixes)

    def _checked_prefixes(self, prefixes) -> list[int]:
        allowed = (f"must be a strictly increasing list of positive integers ending at "
                   f"n_latents={self.n_latents}")
        check(isinstance(prefixes, (list, tuple)) and len(prefixes) > 0
              and all(isinstance(m, int) and not isinstance(m, bool) for m in prefixes),
              "prefixes", f"{allowed}, got {prefixes!r}")
        prefixes = list(prefixes)
        check(prefixes[0] > 0, "prefixes", f"{allowed}; {prefixes[0]} is not positive")
        for a, b in itertools.pairwise(prefixes):
            check(b > a, "prefixes", f"{allowed}; {b} follows {a}")
        check(prefixes[-1] == self.n_latents, "prefixes",
              f"{allowed}; the last is {prefixes[-1]}")
        return prefixes


def prefixes_from_saelens(cfg: dict, fields: dict) -> None:
    """k as a whole number; `matryoshka_widths` as the prefixes (ending at n_latents)."""
    whole_k(cfg, fields)
    n = fields["n_latents"]
    widths = [int(w) for w in cfg.get("matryoshka_widths") or [n]]
    fields["prefixes"] = widths if widths[-1] == n else widths + [n]


def threshold_from_saelens(cfg: dict, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """SAELens' `topk_threshold` [] as the inference threshold (-1, none yet, unless > 0)."""
    state["threshold"] = state["threshold"].to(state["W_dec"].dtype)
    if float(state["threshold"]) <= 0:
        state["threshold"] = torch.tensor(-1.0, dtype=state["threshold"].dtype)
    return {}


@register("matryoshka")
class Matryoshka(Dictionary):
    """Matryoshka BatchTopK SAE. Weights: W_enc [n_latents, d_in], b_enc [n_latents],
    W_dec [n_latents, d_out], b_dec [d_out]; buffer `threshold` (scalar, inference)."""

    Config = MatryoshkaConfig
    scales_with_input = ("b_enc", "b_dec", "threshold")
    formats = {"saelens": SaeLensMapping(
        architecture="matryoshka_batchtopk", tensors={**PLAIN, "topk_threshold": "threshold"},
        fields={"k": "k"}, read_fields=prefixes_from_saelens, read=threshold_from_saelens,
        written_as=inference_form)}
    """Read from SAELens' training-time Matryoshka BatchTopK; written as its inference form, a
    JumpReLU."""

    def __init__(self, cfg: MatryoshkaConfig):
        super().__init__(cfg)
        self.init_tied_weights()
        # inference threshold on the codes; < 0 until a training batch has set it
        self.register_buffer("threshold", torch.tensor(-1.0))

    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_activations(x)
        if self.threshold < 0:  # no threshold learned yet: select as in training
            codes = batch_topk(pre, self.cfg.k)
            return pre.new_zeros(pre.shape).index_put_((codes.rows, codes.latents), codes.values)
        return pre * (pre > self.threshold)

    @torch.no_grad()
    def to_inference(self) -> JumpReLU:
        """The same dictionary as a `jumprelu` whose every latent's threshold is the inference
        threshold theta (log theta chosen so that exp gives theta back where a float allows,
        theta itself kept in its `exact_tensors`). Refused before a training batch has set
        theta: until then the codes depend on the batch."""
        if float(self.threshold) < 0:
            raise ConfigError("this matryoshka dictionary has no inference threshold yet (it has "
                              "not seen a training batch), so its codes depend on the batch; a "
                              "JumpReLU (e.g. SAELens') needs one")
        cfg = JumpReLU.Config(d_in=self.d_in, n_latents=self.n_latents, d_out=self.d_out)
        with torch.random.fork_rng(devices=[]):  # its random init is overwritten anyway
            out = JumpReLU(cfg).to(self.W_dec)
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(out, name).copy_(getattr(self, name))
        theta = self.threshold.expand(self.n_latents).contiguous()
        out.log_threshold.copy_(log_exact(theta))
        out.exact_tensors["threshold"] = theta.clone()
        out.provenance = {**self.provenance, "converted_from": "matryoshka"}
        return out.eval()

    def prefix(self, m: int) -> Matryoshka:
        """A standalone dictionary made of the first `m` latents (m one of `cfg.prefixes`, or any
        size up to n_latents); with a learned threshold its codes are this dictionary's codes
        restricted to those latents."""
        check(isinstance(m, int) and 0 < m <= self.n_latents, "m",
              f"must be an integer in [1, n_latents={self.n_latents}], got {m!r}")
        cfg = MatryoshkaConfig(d_in=self.d_in, n_latents=m, d_out=self.d_out,
                               k=min(self.cfg.k, m),
                               prefixes=[p for p in self.cfg.prefixes if p < m] + [m],
                               auxk_coeff=self.cfg.auxk_coeff, auxk_k=self.cfg.auxk_k)
        small = Matryoshka(cfg)
        with torch.no_grad():
            for name in ("W_enc", "b_enc", "W_dec"):
                getattr(small, name).copy_(getattr(self, name)[:m])
            small.b_dec.copy_(self.b_dec)
            small.threshold.copy_(self.threshold)
        small.provenance = {**self.provenance, "prefix_of": self.n_latents}
        return small.train(self.training)

    @torch.no_grad()
    def _update_threshold(self, values: Tensor) -> None:
        kept = values[values > 0]
        if kept.numel() == 0:
            return
        smallest = kept.min()
        if self.threshold < 0:
            self.threshold.copy_(smallest)
        else:
            self.threshold.lerp_(smallest, 1 - THRESHOLD_DECAY)

    def loss(self, x: Tensor, state: StepState, target: Tensor | None = None) -> Loss:
        target = x if target is None else target
        b, prefixes = x.shape[0], self.cfg.prefixes
        xc = self.centered(x)
        floor = max(0.0, 0.5 * self.threshold.item())  # half the running threshold
        codes = batch_topk_encode(xc, self.W_enc, self.b_enc, self.cfg.k, floor)
        if self.training:
            self._update_threshold(codes.values.detach())
        # one bag per (row, group of latents between two prefix ends): entries are row-major with
        # latents increasing, so each bag is a contiguous run
        ends = torch.tensor(prefixes[:-1], dtype=torch.long, device=x.device)
        bags = codes.rows * len(prefixes) + torch.bucketize(codes.latents, ends, right=True)
        parts = bag_decode(codes.values, codes.latents, bags, b * len(prefixes),
                           self.W_dec).view(b, len(prefixes), self.d_out)
        terms: dict[str, Tensor] = {}
        x_hat = self.b_dec
        for i, m in enumerate(prefixes):
            x_hat = x_hat + parts[:, i]  # [B, d_out]: reconstruction from the first m latents
            terms[f"mse_{m}"] = squared_error(x_hat, target).mean()
        errors = torch.stack(list(terms.values()))  # [n_prefixes]
        total = errors.sum()
        # x_hat is now the full dictionary's reconstruction (the last prefix is n_latents)
        total = add_auxk(terms, total, self.cfg, state.dead_mask, xc, target, x_hat, self.W_enc,
                         self.b_enc, self.W_dec)
        fired = codes.values > 0
        variance = (target - target.mean(0)).pow(2).sum().clamp_min(1e-12)
        prefix_fvu = (errors.detach() * b / variance).tolist()
        metrics = {f"fvu_{m}": f for m, f in zip(prefixes, prefix_fvu)}
        metrics.update({"fvu": prefix_fvu[-1], "l0": fired.sum().item() / b,
                        "threshold": self.threshold.item()})
        active = torch.zeros(self.n_latents, dtype=torch.bool, device=x.device)
        active[codes.latents[fired]] = True
        return Loss(total, terms, metrics, active)
