"""Monosemanticity score (MS) of vision units: are the images a unit fires on alike?
(Pach, Karthik, Bouniot, Belongie, Akata 2025, "Sparse Autoencoders Learn Monosemantic Features
in Vision-Language Models", arXiv 2504.02821).

For a unit u (an SAE latent, or a neuron of the model), with activations a[i, u] on images
i = 1..I rescaled per unit to [0, 1] over the images (min-max), and s[i, j] the cosine similarity
of images i and j in an image-embedding space:

    MS(u) = sum_{i < j} a[i, u] a[j, u] s[i, j] / sum_{i < j} a[i, u] a[j, u]

the activation-weighted average similarity of the pairs of images that activate it (1: it fires
only on images the embedding sees as the same; near the mean similarity of random pairs: it
fires on anything). A unit with no weight (constant over the images, e.g. a dead latent) has no
score (NaN) and is left out of the aggregates, as in the reference.

Reference code (github.com/ExplainableML/sae-for-vlm): `metric.py` (min-max per neuron over the
images, pairs i < j, weights the product of the two activations, NaN where the weights sum to
0, mean and std over the rest) and `scripts/monosemanticity_score.sh` (the units: the CLIP
vision encoder's CLS activations, raw or encoded by the SAE; the embeddings: a second encoder,
CLIP ViT-B/32 or DINOv2-base, `encode_images.py`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from saelab.errors import ConfigError, DataError
from saelab.evaluate._base import Context, Family
from saelab.evaluate._registry import register

UNITS_PER_CHUNK = 2048
"""Units scored at once (their [images, units] weights are held in float64)."""


def image_maxima(acts: Tensor, image: Tensor, n_images: int) -> Tensor:
    """Per-image activation of each unit [n_images, D]: the largest of acts [N, D] over the rows
    of each image (`image` [N], the image index of each row, in 0..n_images-1); an image without
    rows is 0."""
    out = torch.full((n_images, acts.shape[1]), -math.inf, dtype=torch.float32)
    out.scatter_reduce_(0, image.long().view(-1, 1).expand(-1, acts.shape[1]), acts.float(),
                        "amax")
    return torch.where(torch.isfinite(out), out, 0.0)


def minmax(acts: Tensor) -> Tensor:
    """acts [I, D] rescaled per unit to [0, 1] over the images (a constant unit becomes 0)."""
    lo, hi = acts.min(0).values, acts.max(0).values
    span = hi - lo
    return torch.where(span > 0, (acts - lo) / torch.where(span > 0, span, 1.0), 0.0)


def ms_scores(acts: Tensor, embeddings: Tensor) -> Tensor:
    """MS of each unit [D] from its per-image activations acts [I, D] (min-max rescaled here)
    and the images' embeddings [I, E]; NaN for a unit with no pair of weight (module docstring).

    With A the rescaled activations and S the cosine similarities (s[i, i] = 1), the sums over
    pairs i < j are half those over i != j: numerator (sum_i A[i] (S A)[i] - sum_i A[i]^2) / 2,
    denominator ((sum_i A[i])^2 - sum_i A[i]^2) / 2; the halves cancel."""
    if acts.shape[0] != embeddings.shape[0]:
        raise DataError(f"{acts.shape[0]} images of activations but {embeddings.shape[0]} "
                        f"embeddings: give one embedding per image, in the same order")
    e = torch.nn.functional.normalize(embeddings.double(), dim=1)
    sim = e @ e.T  # [I, I]
    out = []
    for start in range(0, acts.shape[1], UNITS_PER_CHUNK):
        a = minmax(acts[:, start:start + UNITS_PER_CHUNK].double())  # [I, d]
        self_pairs = (a * a).sum(0)
        num = (a * (sim @ a)).sum(0) - (a * a * sim.diagonal()[:, None]).sum(0)
        den = a.sum(0) ** 2 - self_pairs
        ok = den > 1e-12 * a.shape[0]
        out.append(torch.where(ok, num / torch.where(ok, den, 1.0), math.nan).float())
    return torch.cat(out)


class MSSummary(NamedTuple):
    """Aggregates of the MS of a set of units."""

    mean: float
    """Mean MS over the units that have one."""
    median: float
    """Median MS over the units that have one."""
    scored: int
    """Units with a score (the rest are constant over the images)."""


def summarize(scores: Tensor) -> MSSummary:
    """The aggregates of MS scores [D] (NaN ones left out)."""
    kept = scores[~scores.isnan()]
    if not len(kept):
        return MSSummary(math.nan, math.nan, 0)
    return MSSummary(float(kept.mean()), float(kept.median()), len(kept))


class ImageUnits(NamedTuple):
    """Per-image activations of the latents and of the neurons."""

    codes: Tensor
    """Largest code of each latent over each image's rows [I, n_latents]."""
    raw: Tensor
    """Largest value of each neuron (the activation's dimensions) over each image's rows
    [I, d_in]."""


@torch.no_grad()
def image_units(dictionary, store, key: str, batch_size: int = 4096) -> ImageUnits:
    """One pass over the store's rows of `key`: each image's largest code per latent and largest
    activation per neuron (rows mapped to images by the store's `ctx`)."""
    n_images = int(store.manifest["n_contexts"])
    image = store.row_index()["ctx"]
    codes = torch.full((n_images, dictionary.n_latents), -math.inf)
    raw: Tensor | None = None
    for acts, ids in store.iter_rows(key, batch_size):
        acts = acts.float()
        if raw is None:
            raw = torch.full((n_images, acts.shape[1]), -math.inf)
        rows = image[ids].view(-1, 1)
        c = dictionary.encode(acts).float()
        codes.scatter_reduce_(0, rows.expand_as(c), c, "amax")
        raw.scatter_reduce_(0, rows.expand_as(acts), acts, "amax")
    if raw is None:
        raise DataError(f"{store.path} has no rows: capture images into it first")
    return ImageUnits(torch.where(torch.isfinite(codes), codes, 0.0),
                      torch.where(torch.isfinite(raw), raw, 0.0))


@torch.no_grad()
def image_embeddings(store, model=None) -> Tensor:
    """Embedding of each of the store's images [I, E]: the pooled output of the vision model the
    store was captured from (for DINOv2, the final layer-normed CLS token), or its last hidden
    state's first token when it has no pooled output. `model`: a loaded model
    (saelab.models.LoadedModel) to use instead of loading the store's by name. The images are
    read again from the source the store names; a source whose images changed is refused."""
    from saelab.data.images import read_images
    from saelab.evaluate.vl_pairs import embed_images
    from saelab.models import load

    meta = store.manifest["images"]
    skip, titles = meta.get("skip_images", 0), meta["titles"]
    items = read_images(meta["dataset"], limit=skip + len(titles))[skip:]
    if [i.title for i in items] != titles:
        raise DataError(f"the images of {meta['dataset']!r} are not those {store.path} was "
                        f"captured from (titles differ): capture the store again")
    return embed_images(items, model if model is not None else load(store.model))


@register("monosemanticity")
class Monosemanticity(Family):
    """Monosemanticity score (Pach et al. 2025, "Sparse Autoencoders Learn Monosemantic Features
    in Vision-Language Models") of the dictionary's latents and, side by side, of the model's
    neurons at the same hookpoint, on an image store: the activation-weighted average pairwise
    cosine similarity of the images a unit fires on, in the image-embedding space of the model
    the store was captured from.

    A unit's activation on an image is its largest value over the image's rows in the store
    (its patches, or its one CLS or pooled row), rescaled per unit to [0, 1] over the images;
    each pair of distinct images weighs the product of the two activations.

    Figures (under `report["monosemanticity"]`); `neuron_...` the same for the raw activation's
    dimensions:

    - `ms_mean`, `ms_median`: mean and median MS over the latents that vary over the images;
    - `ms_scored`: how many latents that is (dead ones have no score);
    - `ms_random_pairs`: the mean cosine similarity of two distinct images, the MS of a unit
      firing equally on every image (the level a unit must beat to be more specific than chance);
    - `ms_centred_mean`: `ms_mean` in the embeddings centred on their mean over the images
      (where two random images score about 0; a line the reference's `metric.py` keeps
      commented out): in an embedding where every two images are alike (the packaged ViT's
      pooled output on digits: mean cosine 0.93) the raw score moves only in the third decimal;
    - `n_images`: the images of the store.

    Needs an image store (`saelab capture --model vit-s14 --dataset NAME`), given as the data:
    `saelab eval SAE STORE --metrics monosemanticity`. The embeddings are computed by running
    the store's model on its images again (its pooled output: for the packaged ViT-S/14, the
    final layer-normed CLS token).

    Departures from the paper: it embeds the images with a second model (CLIP ViT-B/32 or
    DINOv2-base) while its units come from CLIP's or SigLIP's vision encoder; no such model is
    installable offline, so here the embedding space is the captured model's own final pooled
    embedding (with a network, capture from any transformers vision model by name and its own
    embedding is used). Units are judged on their per-image maximum over patch rows, where the
    paper's units read the CLS token only (on a CLS store the two are the same). Neurons are
    min-max rescaled like latents, as the reference does (the min-max is the shift to
    non-negative values: a neuron's most negative image weighs 0).

    Measured (bench/vision_ms.py; TopK SAEs on the packaged ViT-S/14's layer-6 patches of 427
    scikit-image and digit images, scored on 300 held-out digits): `ms_centred_mean` 0.031-0.087
    for latents (768 or 3,072 latents, k 8 or 32; sparser and wider higher) against 0.011 for
    the neurons; `ms_mean` 0.930-0.935 against 0.929 (`ms_random_pairs` 0.927).
    """

    needs = frozenset({"activations", "images"})
    figures = ("ms_mean", "ms_median", "ms_scored", "neuron_ms_mean", "neuron_ms_median",
               "neuron_ms_scored", "ms_random_pairs", "ms_centred_mean",
               "neuron_ms_centred_mean", "n_images")
    headline = ("ms_mean", "neuron_ms_mean", "ms_random_pairs")

    @classmethod
    def check(cls, context: Context) -> None:
        if context.target_hookpoint is not None:
            raise ConfigError("'monosemanticity' scores the latents of an SAE read from an "
                              "image store; a transcoder's target is not supported")

    def run(self) -> dict[str, float]:
        ctx = self.context
        units = image_units(ctx.dictionary, ctx.store, ctx.hookpoint, ctx.batch_size)
        emb = image_embeddings(ctx.store)
        e = torch.nn.functional.normalize(emb.double(), dim=1)
        n = e.shape[0]
        random_pairs = float(((e @ e.T).sum() - n) / max(n * (n - 1), 1))
        out: dict[str, float] = {"ms_random_pairs": random_pairs, "n_images": n}
        for prefix, acts in (("", units.codes), ("neuron_", units.raw)):
            s = summarize(ms_scores(acts, emb))
            out.update({f"{prefix}ms_mean": s.mean, f"{prefix}ms_median": s.median,
                        f"{prefix}ms_scored": s.scored,
                        f"{prefix}ms_centred_mean": summarize(ms_scores(acts,
                                                                        emb - emb.mean(0))).mean})
        return {name: out.get(name, math.nan) for name in self.figures}
