"""Latent use as the input's structure degrades, and hallucination prediction from the latents
(Suresh, Stanley, Joseph, Scimeca and Bzdok 2025, "From Noise to Narrative: Tracing the Origins of
Hallucinations in Transformers", arXiv 2509.06938).

The paper decomposes the residual stream of pre-trained transformers (CLIP ViT-B/32, Pythia-160m,
Gemma-2B-IT) with sparse autoencoders and finds that the number of concepts (latents) the model
uses grows as its input becomes less structured (image patches shuffled, text n-grams scrambled,
up to pure noise), most in the middle layers; and that hallucination in the model's output can
be predicted from the concepts active on the input.

Here the same texts (the evaluation's token contexts) are run through the model three times:

- `clean`: as given;
- `shuffled`: the tokens of each context permuted at random (the same tokens, no order left);
- `random`: every token drawn uniformly from the model's vocabulary (pure noise).

The first token of each context is kept in place in every condition (the BOS or separator that
opens a context, on which the model parks attention), and the first position is never counted.
For each condition: the number of distinct latents active anywhere in a context (averaged over
contexts), the mean L0 per position, and the number of distinct latents over all contexts.

With hallucination labels (labelled texts with two classes, e.g. "faithful" / "hallucinated"), a
logistic regression on each text's pooled codes (codes averaged over its tokens) predicts the
label, scored by cross-validated AUROC, against the same probe on the raw activations.

No reference code of the paper was found; this follows its text. Where saelab departs:

- The paper scrambles n-grams at several sizes (and trains SAEs on activations of noise inputs
  too); here the two ends of that range are measured (shuffled tokens and uniform random tokens)
  with the dictionary given, trained on natural text.
- The paper counts the concepts active per input; here it is per context, over the positions the
  dictionary was trained on (the exclusion rule's), which may be fewer under noise: see
  `kept_fraction_*`.
- The paper regresses continuous hallucination scores of Gemma-2B-IT's summaries on the concept
  activations of the input (partial least squares); here binary labels are predicted by a
  logistic regression (scikit-learn, L2, C = 1, standardised) and scored by stratified k-fold
  AUROC. No hallucination-labelled data ship with saelab: bring your own texts and labels.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from torch import Tensor, nn

from saelab.capture.exclude import Exclusion
from saelab.errors import ConfigError
from saelab.evaluate._base import Context, Family
from saelab.evaluate._contexts import context_activations, one_hookpoint
from saelab.evaluate._pooled import labelled_for, pooled_for
from saelab.evaluate._probe import fit_probe
from saelab.evaluate._registry import register

log = logging.getLogger(__name__)

CONDITIONS = ("clean", "shuffled", "random")
"""The input conditions, from most to least structured."""
MAX_CONTEXTS = 128
"""Contexts used at most (the first ones): 3 x 128 forwards of 128 tokens take about 30 s for
SmolLM2-135M to layer 15 on 2 CPU cores."""
FOLDS = 5
"""Folds of the cross-validated AUROC (fewer when a class has fewer texts)."""
POSITIVE = ("1", "true", "yes", "hallucinated", "hallucination", "hallucinating", "unfaithful")
"""Label names taken as the positive (hallucinated) class; with none of them, the second class in
sorted order is."""
ROWS_PER_ENCODE = 4096
"""Positions the dictionary encodes at once."""


def shuffled_tokens(tokens: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """`tokens` [N, T] with positions 1..T-1 of each context permuted at random (its own
    permutation per context); position 0 stays."""
    keys = torch.rand(tokens.shape[0], tokens.shape[1] - 1, generator=generator)
    order = keys.argsort(dim=1) + 1  # [N, T-1]: a random permutation of 1..T-1 per row
    out = tokens.clone()
    out[:, 1:] = tokens.gather(1, order)
    return out


def random_tokens(tokens: Tensor, vocab_size: int,
                  generator: torch.Generator | None = None) -> Tensor:
    """`tokens` [N, T] with positions 1..T-1 replaced by ids drawn uniformly from
    [0, vocab_size); position 0 stays."""
    out = tokens.clone()
    out[:, 1:] = torch.randint(vocab_size, (tokens.shape[0], tokens.shape[1] - 1),
                               generator=generator)
    return out


class LatentUse(NamedTuple):
    """How many latents a set of contexts uses."""

    distinct: Tensor
    """Distinct latents active at any kept position, per context [N] (int64)."""
    l0: float
    """Mean number of active latents per kept position (NaN without one)."""
    union: int
    """Distinct latents active at any kept position of any context."""
    kept: int
    """Kept positions."""
    positions: int
    """Positions in all (kept or not)."""


class LatentCounter:
    """Accumulates `LatentUse` over batches of codes."""

    def __init__(self, n_latents: int) -> None:
        self.distinct: list[Tensor] = []
        self.used = torch.zeros(n_latents, dtype=torch.bool)
        self.active = self.kept = self.positions = 0

    def update(self, codes: Tensor, keep: Tensor) -> None:
        """codes [B, T, F] of a batch of contexts, keep [B, T] (bool)."""
        active = (codes != 0) & keep[..., None]  # [B, T, F]
        per_context = active.any(dim=1)  # [B, F]
        self.distinct.append(per_context.sum(1).cpu())
        self.used |= per_context.any(0).cpu()
        self.active += int(active.sum())
        self.kept += int(keep.sum())
        self.positions += keep.numel()

    def result(self) -> LatentUse:
        distinct = torch.cat(self.distinct) if self.distinct else torch.zeros(0, dtype=torch.long)
        l0 = self.active / self.kept if self.kept else math.nan
        return LatentUse(distinct, l0, int(self.used.sum()), self.kept, self.positions)


def latent_use(codes: Tensor, keep: Tensor) -> LatentUse:
    """`LatentUse` of codes [N, T, F] at the kept positions keep [N, T]."""
    counter = LatentCounter(codes.shape[-1])
    counter.update(codes, keep)
    return counter.result()


@torch.no_grad()
def latent_use_on_tokens(model: nn.Module, tokens: Tensor, hookpoint: str, dictionary,
                         exclusion: Exclusion | None = None, progress: bool = False,
                         desc: str = "latent use") -> LatentUse:
    """Run `model` on `tokens` [N, T], encode the activation at `hookpoint` with `dictionary`
    and count the latents it uses at the kept positions (not the first of a context, not what
    `exclusion` drops)."""
    counter = LatentCounter(dictionary.n_latents)
    d_device = next(dictionary.parameters(), torch.empty(0)).device
    for batch in context_activations(model, tokens, hookpoint, exclusion, progress=progress,
                                     desc=desc):
        rows = batch.acts.flatten(0, 1).to(d_device)  # [B*T, d]
        codes = torch.cat([dictionary.encode(rows[i:i + ROWS_PER_ENCODE]).float()
                           for i in range(0, len(rows), ROWS_PER_ENCODE)])
        counter.update(codes.view(*batch.keep.shape, -1).cpu(), batch.keep.cpu())
    return counter.result()


def cross_validated_auroc(x: Tensor, y: Tensor, folds: int = FOLDS, seed: int = 0) -> float:
    """Mean held-out AUROC of a logistic-regression probe (standardised; saelab's `fit_probe`)
    predicting y [N] (0/1) from x [N, D], over stratified folds (at most `folds`, at most the
    smaller class's count); NaN when a class has fewer than two rows."""
    counts = torch.bincount(y.long(), minlength=2)
    n_splits = min(folds, int(counts.min()))
    if len(counts) != 2 or n_splits < 2:
        return math.nan
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    scores = []
    for train, test in splitter.split(x.numpy(), y.numpy()):
        probe = fit_probe(x[train], y[train], standardize=True, seed=seed)
        scores.append(roc_auc_score(y[test].numpy(), probe.decision_function(x[test].numpy())))
    return float(sum(scores) / len(scores))


def vocab_size(model: nn.Module) -> int:
    """Token ids the model embeds: its input embedding table's rows (else config.vocab_size)."""
    embeddings = getattr(model, "get_input_embeddings", lambda: None)()
    if embeddings is not None:
        return embeddings.num_embeddings
    return int(model.config.vocab_size)


def positive_class(classes: list[str]) -> str:
    """The hallucinated class among two: the one named in POSITIVE (case-insensitive), else the
    second in sorted order."""
    named = [c for c in classes if c.strip().lower() in POSITIVE]
    return named[0] if len(named) == 1 else sorted(classes)[1]


@register("hallucination")
class Hallucination(Family):
    """Distinct latents used as the input's structure degrades (the same contexts clean, with
    their tokens shuffled, then as uniform random tokens), and, with hallucination labels, how
    well the latents predict them (Suresh et al. 2025, "From Noise to Narrative").

    Figures (under `report["hallucination"]`), for each condition COND of clean, shuffled,
    random:

    - `distinct_latents_COND`: distinct latents active at any kept position of a context,
      averaged over contexts (the paper's number of concepts per input);
    - `l0_COND`: mean active latents per kept position;
    - `union_latents_COND`: distinct latents active anywhere in the condition;
    - `kept_fraction_COND`: share of positions counted (not the first of a context, not what
      the exclusion rule drops; noise may push more rows over the norm limit);
    - `n_contexts`: contexts used (the first MAX_CONTEXTS = 128 of the tokens).

    With labels (`labels=` labelled texts with exactly two classes, e.g. "faithful" and
    "hallucinated"; the class named in POSITIVE, else the second in sorted order, is the
    positive one):

    - `hallucination_auroc`: cross-validated AUROC (stratified 5 folds) of a logistic
      regression predicting the label from each text's pooled codes;
    - `hallucination_auroc_raw`: the same from the raw activations (the reference);
    - `hallucination_texts`: texts the probes used (0 without labels).

    Both AUROCs are NaN without labels, with labels of more than two classes (a warning says
    so), or with a class of fewer than two texts. Texts are pooled as in `sparse_probing` (first
    128 tokens, first position and excluded positions left out); asked for together, the two
    families run the model on the labelled texts once. From the command line the labels reach
    this family only with a family that needs labels (`--metrics hallucination sparse_probing
    --labels FILE`).

    The degraded contexts keep their first token; random tokens are drawn from the whole
    embedding table (special tokens included; their positions are dropped by the exclusion
    rule like any other).

    Seen on SmolLM2-135M layer 15 (a TopK SAE, 4,608 latents, k = 32, FVU 0.27, trained on 32k
    Wikipedia tokens), 64 held-out Wikipedia contexts of 128 tokens: distinct latents per
    context 1,774 clean, 1,614 shuffled, 1,490 random (4,561, 4,333 and 4,034 over all
    contexts; 98% of positions kept in each). A TopK SAE's L0 is fixed, so the paper's growth
    in concepts could only show as more distinct latents per context; here noise draws on a
    narrower set instead. 73 s on 2 shared CPU cores.
    """

    needs = frozenset({"model", "tokens"})
    figures = (*(f"{kind}_{cond}" for kind in ("distinct_latents", "l0", "union_latents",
                                              "kept_fraction") for cond in CONDITIONS),
               "n_contexts", "hallucination_auroc", "hallucination_auroc_raw",
               "hallucination_texts")
    headline = ("distinct_latents_clean", "distinct_latents_shuffled", "distinct_latents_random",
                "hallucination_auroc")
    conditional = ("hallucination_auroc", "hallucination_auroc_raw")

    @classmethod
    def check(cls, context: Context) -> None:
        if context.hookpoint is None:
            raise ConfigError("hallucination: the latents are read at the hookpoint the "
                              "dictionary was trained on: pass hookpoint")
        one_hookpoint(context.model, context.hookpoint, cls.name)
        tokens = context.tokens
        if tokens.ndim != 2 or tokens.shape[1] < 2:
            raise ConfigError(f"hallucination: tokens must be contexts [N, T] with T >= 2, got "
                              f"shape {tuple(tokens.shape)}")
        if context.labels is not None:
            labelled_for(context, cls.name)

    def run(self) -> dict[str, float]:
        c = self.context
        g = torch.Generator().manual_seed(0 if c.seed is None else c.seed)
        tokens = c.tokens[:MAX_CONTEXTS].long().cpu()
        vocab = vocab_size(c.model)
        inputs = {"clean": tokens, "shuffled": shuffled_tokens(tokens, g),
                  "random": random_tokens(tokens, vocab, g)}
        out: dict[str, float] = {"n_contexts": tokens.shape[0]}
        for cond, ids in inputs.items():
            use = latent_use_on_tokens(c.model, ids, c.hookpoint, c.dictionary, c.exclusion,
                                       c.progress, desc=f"hallucination ({cond})")
            out[f"distinct_latents_{cond}"] = float(use.distinct.float().mean())
            out[f"l0_{cond}"] = use.l0
            out[f"union_latents_{cond}"] = use.union
            out[f"kept_fraction_{cond}"] = use.kept / use.positions
        out.update(self.prediction())
        return {name: out[name] for name in self.figures}

    def prediction(self) -> dict[str, float]:
        """The hallucination figures from the context's labels (NaN without usable ones)."""
        nan = {"hallucination_auroc": math.nan, "hallucination_auroc_raw": math.nan,
               "hallucination_texts": 0}
        c = self.context
        if c.labels is None:
            return nan
        labels, pooled = pooled_for(c, self.name)
        if len(labels.classes) != 2:
            log.warning("hallucination: the labels have %d classes (%s); hallucination labels "
                        "have two: the AUROC figures are NaN", len(labels.classes),
                        ", ".join(labels.classes[:5]))
            return nan
        positive = positive_class(labels.classes)
        y = torch.tensor([label == positive for label in labels.labels], dtype=torch.long)
        seed = 0 if c.seed is None else c.seed
        return {"hallucination_auroc": cross_validated_auroc(pooled.codes, y, seed=seed),
                "hallucination_auroc_raw": cross_validated_auroc(pooled.raw, y, seed=seed),
                "hallucination_texts": len(labels)}
