"""Guided SAE (G-SAE; Härle, Friedrich et al. 2025, "Measuring and Guiding Monosemanticity").

A TopK SAE whose first `n_guided` latents are reserved for labelled concepts: during training a
supervised term conditions latent j on concept j, so that the concept ends up in one known latent
instead of being spread over (or hidden in) unnamed ones. Detection then reads latent j directly,
from the code that `encode` returns.

What changes relative to TopK, as the authors' release builds it (reference: github.com/
ml-research/measuring-and-guiding-monosemanticity, `train/determined_trails.py` (loss_topk_c,
cond_loss_fn, grad_scaling), `llama3_SAE/modeling_llama3_SAE.py` (Autoencoder, TopK) and the
`activation: topk-sigmoid` configs in `llama3_SAE/SAE_config/`); these are the defaults here:
- `placement` "topk": the guided latents are ordinary members of the one TopK over all
  n_latents latents; a guided latent is in the code only when its pre-activation is among the
  row's k largest, so L0 is exactly k;
- `postact` "sigmoid": each kept pre-activation is squashed by a sigmoid (the release's
  topk-sigmoid activation), so a kept code lies in (0, 1) and, for a guided latent, reads as the
  predicted probability of its concept; the decoder rows are then free (the release does not
  renormalise them), since the magnitude has to live in the decoder;
- the supervised term `guide_coeff * BCE(sigmoid(pre_j), label_j)` on every row for every
  guided latent (whether or not it was kept), summed over the guided latents and averaged over
  the rows, next to the reconstruction term (the release's normalised MSE per row, which is
  saelab's MSE on inputs the trainer scales to unit mean squared norm). The release's
  `cond_loss_scaling` multiplies the gradient of the present rows' BCE by a factor, but the
  G-SAE runs use 1 (`train/train_SAE_24k_k2048.yaml`: 0 is the vanilla SAE without the term,
  1 the G-SAE), i.e. a plain BCE: no up-weighting of positives; `guide_balance` False.

saelab's variants, kept as options:
- `placement` "outside": the guided latents stay outside the TopK (TopK with k over the other
  n_latents - n_guided latents) and are ReLU(pre-activation), so a guided latent is never
  crowded out when its concept is present; L0 is k plus the number of concepts detected;
- `postact` "relu": the kept codes are ReLU(pre-activation) with unit-norm decoder rows (saelab's
  TopK recipe); with placement "outside" this is saelab's earlier default;
- `guide_balance` True (saelab's): within each batch the rows where concept j is present and
  those where it is absent weigh half each in concept j's BCE (a positive weight of absent /
  present rows from the batch's own label frequencies). With a ReLU code, a plain BCE on a
  concept present in 10% of rows puts the logit's zero where the posterior is one half, so the
  code stays 0 on most rows that carry the concept (measured: code AUC 0.51 on planted data
  while the logit's AUC was 0.92); balanced, the zero sits where the likelihood ratio is one.
- AuxK (saelab's TopK recipe; the release has none; `auxk_coeff=0` removes it) revives dead
  unguided latents only.
With n_guided = 0 it is TopK (with the sigmoid when postact is "sigmoid").

Labels reach the loss as `StepState.extra["labels"]`, a float tensor [B, n_guided]; the trainer
fills it from `saelab.fit(sae, Labelled(x, labels))` (saelab.train.data.Labelled). Without labels
the supervised term is off (reconstruction only); `fit` refuses plain activations
when the guidance is on (n_guided > 0 and guide_coeff > 0). `row_labels` and `store_row_labels`
turn per-document labels (e.g. the topics of the packaged Wikipedia summaries) into per-row label
tensors; `detection_auc` measures how well each latent detects a concept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from saelab.config import check, option
from saelab.dictionaries._base import Loss, StepState, fvu, squared_error
from saelab.dictionaries._registry import register
from saelab.dictionaries.topk import TopK, TopKConfig
from saelab.errors import DataError
from saelab.ops import sparse_decode, topk_encode
from saelab.ops.auxk import add_auxk


@dataclass
class GuidedConfig(TopKConfig):
    n_guided: int = option(0, "Latents conditioned on concept labels (latents 0..n_guided-1); "
                              "set it to the number of label columns. 0 is plain TopK.")
    guide_coeff: float = option(1.0, "Weight of the supervised (BCE) term on the guided latents "
                                     "(0 disables it).")
    placement: Literal["topk", "outside"] = option(
        "topk", "topk: the guided latents compete in the one TopK (the authors'); outside "
                "(saelab's): they are ReLU codes outside it, TopK runs over the others.")
    postact: Literal["sigmoid", "relu"] = option(
        "sigmoid", "Activation of the kept codes: sigmoid (the authors' topk-sigmoid, free "
                   "decoder rows) or relu (saelab's TopK recipe, unit-norm decoder rows).")
    guide_balance: bool = option(False, "Class-balanced supervised term (saelab's): rows where a "
                                        "concept is present and rows where it is absent weigh "
                                        "half each in a batch (off: the authors' plain BCE).")

    def __post_init__(self) -> None:
        super().__post_init__()
        n = self.n_guided
        check(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= self.n_latents,
              "n_guided", f"must be an integer in [0, n_latents={self.n_latents}], got {n!r}")
        check(self.placement in ("topk", "outside"), "placement",
              f"must be 'topk' or 'outside', got {self.placement!r}")
        check(self.postact in ("sigmoid", "relu"), "postact",
              f"must be 'sigmoid' or 'relu', got {self.postact!r}")
        if self.placement == "outside":
            check(self.k <= self.n_latents - n, "k",
                  f"must be at most n_latents - n_guided = {self.n_latents - n} (with placement "
                  f"'outside' TopK runs over the unguided latents), got {self.k}")
        check(isinstance(self.guide_coeff, (int, float)) and not isinstance(self.guide_coeff, bool)
              and self.guide_coeff >= 0, "guide_coeff",
              f"must be a number >= 0, got {self.guide_coeff!r}")
        check(isinstance(self.guide_balance, bool), "guide_balance",
              f"must be true or false, got {self.guide_balance!r}")


@register("guided")
class Guided(TopK):
    """TopK SAE plus n_guided concept latents (weights as TopK). Latents 0..n_guided-1 are the
    guided ones: members of the TopK (placement "topk") or ReLU codes outside it ("outside")."""

    Config = GuidedConfig
    formats = {}  # no counterpart in SAELens or sparsify (TopK's mapping is not inherited)

    @property
    def needs(self) -> frozenset[str]:
        """Labels when training uses them (`saelab.fit` refuses data without them)."""
        return frozenset({"labels"} if self.cfg.n_guided > 0 and self.cfg.guide_coeff > 0
                         else ())

    @property
    def unit_norm_decoder(self) -> bool:  # type: ignore[override]
        """Free decoder rows with the sigmoid (the release), unit norm with the ReLU."""
        return self.cfg.postact == "relu"

    def guided_logits(self, x: Tensor) -> Tensor:
        """Pre-activations of the guided latents [B, n_guided]: concept logits."""
        g = self.cfg.n_guided
        return F.linear(self.centered(x), self.W_enc[:g], self.b_enc[:g])

    def concept_scores(self, x: Tensor) -> Tensor:
        """Predicted probability of each concept [B, n_guided] (sigmoid of the logits)."""
        return torch.sigmoid(self.guided_logits(x))

    def activate(self, values: Tensor) -> Tensor:
        """The kept codes from their pre-activations: sigmoid or ReLU (`postact`)."""
        return torch.sigmoid(values) if self.cfg.postact == "sigmoid" else values.relu()

    def encode(self, x: Tensor) -> Tensor:
        g = self.cfg.n_guided
        pre = self.pre_activations(x)
        if self.cfg.placement == "topk":
            top = pre.topk(self.cfg.k, dim=-1, sorted=False)
            return pre.new_zeros(pre.shape).scatter_(1, top.indices, self.activate(top.values))
        top = pre[:, g:].topk(self.cfg.k, dim=-1, sorted=False)
        free = pre.new_zeros(pre.shape[0], self.n_latents - g)
        free.scatter_(1, top.indices, self.activate(top.values))
        return torch.cat([pre[:, :g].relu(), free], dim=1)

    def reconstruct(self, xc: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(x_hat [B, d_out], kept codes [B, k], their latent indices [B, k], guided logits
        [B, n_guided]) with autograd, for the loss."""
        g, cfg = self.cfg.n_guided, self.cfg
        if cfg.placement == "topk":
            pre = F.linear(xc, self.W_enc, self.b_enc)  # [B, n_latents], dense autograd
            top = pre.topk(cfg.k, dim=-1, sorted=False)
            values = self.activate(top.values)
            x_hat = sparse_decode(values, top.indices, self.W_dec) + self.b_dec
            return x_hat, values, top.indices, pre[:, :g]
        if cfg.postact == "relu":  # sparse backward over the unguided latents
            codes = topk_encode(xc, self.W_enc[g:], self.b_enc[g:], cfg.k)
            values, indices = codes.values, codes.indices + g
        else:
            top = F.linear(xc, self.W_enc[g:], self.b_enc[g:]).topk(cfg.k, dim=-1, sorted=False)
            values, indices = self.activate(top.values), top.indices + g
        x_hat = sparse_decode(values, indices, self.W_dec) + self.b_dec
        logits = F.linear(xc, self.W_enc[:g], self.b_enc[:g])  # [B, g]
        if g:
            x_hat = x_hat + logits.relu() @ self.W_dec[:g]
        return x_hat, values, indices, logits

    def loss(self, x: Tensor, state: StepState, target: Tensor | None = None) -> Loss:
        g, cfg = self.cfg.n_guided, self.cfg
        target = x if target is None else target
        xc = self.centered(x)
        x_hat, values, indices, logits = self.reconstruct(xc)
        mse = squared_error(x_hat, target).mean()
        terms = {"mse": mse}
        dead = state.dead_mask
        if dead is not None and g:
            dead = dead.clone()
            dead[:g] = False  # a guided latent is trained by its concept: AuxK leaves it alone
        total = add_auxk(terms, mse, cfg, dead, xc, target, x_hat, self.W_enc, self.b_enc,
                         self.W_dec)
        labels = state.extra.get("labels")
        metrics = {}
        if labels is not None and g and cfg.guide_coeff > 0:
            if labels.shape != (x.shape[0], g):
                raise DataError(f"labels have shape {tuple(labels.shape)}; the guided "
                                f"dictionary expects [batch={x.shape[0]}, n_guided={g}]")
            labels = labels.to(logits.device, torch.float32)
            terms["guide"] = guide_loss(logits.float(), labels, cfg.guide_balance)
            total = total + cfg.guide_coeff * terms["guide"]
            metrics.update(guide_metrics(logits.detach(), labels))
        fired = values.detach() > 0  # [B, k]
        active = torch.bincount(indices.reshape(-1), weights=fired.reshape(-1).float(),
                                minlength=self.n_latents) > 0
        l0 = fired.sum(-1)
        if cfg.placement == "outside":
            guided_fired = (logits > 0).detach()
            active[:g] |= guided_fired.any(0)
            l0 = l0 + guided_fired.sum(-1)
        metrics.update(fvu=fvu(x_hat.detach(), target).item(), l0=l0.float().mean().item())
        return Loss(total, terms, metrics, active)


def guide_loss(logits: Tensor, labels: Tensor, balance: bool = False) -> Tensor:
    """The supervised term: BCE of each guided logit [B, G] against its label [B, G] in [0, 1],
    summed over the guided latents (as the release's cond_loss). Without `balance` (the
    authors'), the plain mean over rows; with it (saelab's), each concept's present and absent
    rows weigh half each (sums over the batch divided by the batch's label mass of each side; a
    side with no rows in the batch contributes 0)."""
    if not balance:
        return F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(0).sum()
    present = (labels * F.logsigmoid(logits)).sum(0) / labels.sum(0).clamp_min(1e-6)  # [G]
    absent = ((1 - labels) * F.logsigmoid(-logits)).sum(0) / (1 - labels).sum(0).clamp_min(1e-6)
    return -0.5 * (present + absent).sum()


def guide_metrics(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """How the guided codes (positive where the logit is) agree with the labels in a batch:
    accuracy, recall (present rows with a positive code), false-positive rate."""
    fired, present = logits > 0, labels > 0.5
    n_present, n_absent = present.sum().clamp_min(1), (~present).sum().clamp_min(1)
    return {"guide_acc": (fired == present).float().mean().item(),
            "guide_recall": ((fired & present).sum() / n_present).item(),
            "guide_fpr": ((fired & ~present).sum() / n_absent).item()}


def row_labels(doc_ids: Tensor, doc_labels: Sequence[str | None],
               concepts: Sequence[str] | None = None) -> tuple[Tensor, list[str]]:
    """One-hot concept labels per row from per-document labels.

    `doc_ids` [N]: the document of each row (an index into `doc_labels`; negative for rows that
    belong to no document, such as a BOS token, which get all-zero labels). `doc_labels`: the
    label of each document (e.g. `Document.label`, the Wikipedia topic), None for unlabelled ones.
    `concepts`: the label names in column order (default: the sorted distinct labels).
    Returns (labels [N, len(concepts)] float32, concepts)."""
    if concepts is None:
        concepts = sorted({lab for lab in doc_labels if lab is not None})
    concepts = list(concepts)
    column = {c: i for i, c in enumerate(concepts)}
    per_doc = torch.tensor([column.get(lab, -1) if lab is not None else -1
                            for lab in doc_labels] + [-1], dtype=torch.long)  # [-1]: no doc
    doc_ids = doc_ids.long().reshape(-1)
    if doc_ids.numel() and int(doc_ids.max()) >= len(doc_labels):
        raise DataError(f"doc_ids reach {int(doc_ids.max())}, but only {len(doc_labels)} "
                        f"document labels were given")
    cols = per_doc[torch.where(doc_ids < 0, len(doc_labels), doc_ids)]
    out = torch.zeros(doc_ids.shape[0], len(concepts))
    hit = cols >= 0
    out[hit.nonzero(as_tuple=True)[0], cols[hit]] = 1.0
    return out, concepts


def store_row_labels(store, doc_labels: Sequence[str | None],
                     concepts: Sequence[str] | None = None) -> tuple[Tensor, list[str]]:
    """`row_labels` for every row of an activation store, in the store's row order (the order
    of `store.iter_rows`): each row's document is read from the store's contexts (`doc_ids`,
    recorded when the capture was given them) at the row's (ctx, pos)."""
    ctx = store.contexts()
    if "doc_ids" not in ctx:
        raise DataError(f"store {store.path} was captured without doc_ids: its rows cannot be "
                        f"matched to documents; capture with the tokenized corpus's doc_ids")
    index = store.row_index()
    return row_labels(ctx["doc_ids"][index["ctx"], index["pos"]], doc_labels, concepts)


def detection_auc(scores: Tensor, labels: Tensor, chunk: int = 128) -> Tensor:
    """ROC AUC of each column of `scores` [N, L] (e.g. latent codes) as a detector of binary
    labels: `labels` [N] gives [L]; `labels` [N, C] (several concepts) gives [C, L], ranking each
    column once for all concepts. Ties count one half (a latent that is 0 on most rows is not
    rewarded for it); 0.5 is chance. Columns are ranked `chunk` at a time (memory ~ 20 N chunk
    bytes). Used to compare guided latents with unguided ones."""
    present = (labels.reshape(labels.shape[0], -1) > 0.5).double()  # [N, C]
    n_pos = present.sum(0)
    n_neg = present.shape[0] - n_pos
    if bool((n_pos == 0).any() or (n_neg == 0).any()):
        raise DataError("detection_auc needs both positive and negative rows for every concept")
    scores = scores.reshape(scores.shape[0], -1).float()
    rank_sums = torch.cat([present.T @ _average_ranks(part)
                           for part in scores.split(chunk, dim=1)], dim=1)  # [C, L]
    auc = ((rank_sums - (n_pos * (n_pos + 1) / 2)[:, None]) / (n_pos * n_neg)[:, None]).float()
    return auc if labels.ndim == 2 else auc[0]


def _average_ranks(scores: Tensor) -> Tensor:
    """1-based rank of each entry within its column [N, L] -> [N, L] float64, tied entries sharing
    the mean of their ranks: (entries below + entries at or below + 1) / 2."""
    by_column = scores.T.contiguous()  # [L, N]: searchsorted works along the last dimension
    ordered = by_column.sort(dim=1).values
    below = torch.searchsorted(ordered, by_column, right=False)
    at_or_below = torch.searchsorted(ordered, by_column, right=True)
    return ((below + at_or_below + 1).double() / 2).T
