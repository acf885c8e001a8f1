"""SAE-V data scores: how much an image and its text activate the same features, and filtering
a paired dataset by it (Lou, Li, Ji, Yang 2025, "SAE-V: Interpreting Multimodal Models for
Enhanced Alignment", ICML 2025, arXiv 2502.17514).

SAE-V runs one SAE over the image tokens and the text tokens of a multimodal model and scores
each image-text sample by its cross-modal features: the features active on both its image and
its text, weighted by how cross-modal each feature is over the data, so that a dataset can be
filtered to its best-aligned part without another model. Reference code: PKU-Alignment/SAE-V's
README points to PKU-Alignment/SAELens-V (not available here; a copy of its helper functions was
read through code search): features active above 1 on any text token and on any image token of
a sample, their intersection the sample's co-occurring features, and a ranking by cosine
similarity; the exact weighting of the paper could not be read here.

saelab's scores for a pair with image codes a [F] and text codes b [F] (one row per side: a
pooled image embedding and a sentence embedding, not token sequences), each higher for a better
matched pair:

- `cooccurrence`: the number of latents active on both sides (the reference's intersection);
- `weighted`: the sum, over those latents, of their cross-modal weight w_f, the cosine
  similarity over the pairs of latent f's image activations and text activations
  (`cross_modal_weights`: 1 for a latent that fires on exactly the texts of the images it fires
  on, about 0 for one that ignores the other side), computed on the dataset being filtered
  itself, as SAE-V's filter needs no other model;
- `cosine`: the cosine similarity of the two code vectors.

`separation` gives the AUROC of a score for matched pairs against shuffled ones (each text
given to an image of another concept, saelab.data.paired.shuffled): 0.5 is chance.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import Tensor

from saelab.errors import DataError

SCORES = ("cooccurrence", "weighted", "cosine")
"""Names of the pair scores."""


class PairScores(NamedTuple):
    """SAE-V scores of image-text pairs [N] each, higher for better matched pairs."""

    cooccurrence: Tensor
    """Latents active on both the image and the text."""
    weighted: Tensor
    """Sum of the cross-modal weights of those latents."""
    cosine: Tensor
    """Cosine similarity of the image's and the text's codes."""


def _check(image_codes: Tensor, text_codes: Tensor) -> None:
    if image_codes.ndim != 2 or image_codes.shape != text_codes.shape:
        raise DataError(f"image codes {tuple(image_codes.shape)} and text codes "
                        f"{tuple(text_codes.shape)}: give [N, n_latents] for both, row i of "
                        f"each for pair i")


def cross_modal_weights(image_codes: Tensor, text_codes: Tensor) -> Tensor:
    """Per latent [F], the cosine similarity over pairs of its image activations (a column of
    image_codes [N, F]) and its text activations (text_codes [N, F]); 0 for a latent silent on
    either side."""
    _check(image_codes, text_codes)
    a, b = image_codes.double(), text_codes.double()
    norm = a.norm(dim=0) * b.norm(dim=0)
    return torch.where(norm > 0, (a * b).sum(0) / norm.clamp_min(1e-300), 0.0).float()


def sae_v_scores(image_codes: Tensor, text_codes: Tensor,
                 weights: Tensor | None = None) -> PairScores:
    """The scores of pairs (codes [N, F] per side). `weights` [F]: the cross-modal weights
    (default: `cross_modal_weights` of these pairs themselves)."""
    _check(image_codes, text_codes)
    if weights is None:
        weights = cross_modal_weights(image_codes, text_codes)
    if weights.shape != (image_codes.shape[1],):
        raise DataError(f"weights of shape {tuple(weights.shape)}: give one per latent "
                        f"({image_codes.shape[1]})")
    both = ((image_codes != 0) & (text_codes != 0)).float()
    return PairScores(both.sum(1), both @ weights.float(),
                      F.cosine_similarity(image_codes.float(), text_codes.float(), dim=1))


def filter_pairs(scores: Tensor, keep: float) -> Tensor:
    """Indices of the best `keep` share of the pairs by `scores` [N] (at least one), in their
    original order: the filtered dataset."""
    if not 0 < keep <= 1:
        raise DataError(f"keep is the share of pairs kept, in (0, 1], got {keep}")
    n = max(1, round(keep * len(scores)))
    return scores.argsort(descending=True, stable=True)[:n].sort().values


def separation(matched: Tensor, shuffled: Tensor) -> float:
    """AUROC of a score telling matched pairs (higher) from shuffled ones: the probability that
    a matched pair scores above a shuffled one, ties counted half."""
    if len(matched) == 0 or len(shuffled) == 0:
        raise DataError("separation needs matched and shuffled pairs")
    y = torch.cat([torch.ones(len(matched)), torch.zeros(len(shuffled))])
    s = torch.cat([matched.double(), shuffled.double()])
    return float(roc_auc_score(y.numpy(), s.numpy()))
