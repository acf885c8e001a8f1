"""Image-text pairs as vectors, and whether a shared dictionary gives an image and the text of its
concept the same latents (the claim of VL-SAE: Shen, Sun, Huang, Wang 2025, "VL-SAE:
Interpreting and Enhancing Vision-Language Alignment with a Unified Concept Set").

`embed_pairs` turns saelab.data.paired pairs into an image embedding (the vision model's pooled
output: for the packaged ViT-S/14, its final layer-normed CLS token) and a text embedding (the
packaged all-MiniLM-L6-v2, mean-pooled and normalised as sentence-transformers does, through
saelab.interpret.explain.embedding.Encoder). `concept_consistency` measures, on pairs held out
from training, how many of the latents active on an image are also active on the text of the
same concept, against the texts of other concepts (the chance level of this data) and against
k / n_latents (the level of random latent sets of the same sizes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from saelab.errors import DataError

IMAGE_BATCH = 32
"""Images per forward of the vision model."""
CODES_BATCH = 4096
"""Rows a dictionary encodes at once."""


class PairEmbeddings(NamedTuple):
    """The two sides of image-text pairs as vectors, row i of each for pair i."""

    image: Tensor
    """Image embeddings [N, d_image] (float32)."""
    text: Tensor
    """Text embeddings [N, d_text] (float32)."""
    concepts: list[str]
    """The concept of each pair."""


@torch.no_grad()
def embed_images(items: Sequence, loaded) -> Tensor:
    """The pooled output of a loaded vision model (saelab.models.load) for image items [N, d]
    (its last hidden state's first token when it has no pooled output)."""
    from saelab.data.pixels import pixel_values

    if getattr(loaded, "kind", None) != "vision":
        raise DataError(f"{getattr(loaded, 'name', loaded)!r} is not a vision model: images are "
                        f"embedded with one (e.g. saelab.models.load('vit-s14'))")
    out = []
    for s in range(0, len(items), IMAGE_BATCH):
        output = loaded.model(pixel_values=pixel_values(items[s:s + IMAGE_BATCH],
                                                        loaded.processor))
        pooled = getattr(output, "pooler_output", None)
        out.append((pooled if pooled is not None else output.last_hidden_state[:, 0]).float())
    return torch.cat(out) if out else torch.zeros(0, 0)


def _features(output) -> Tensor:
    """What a model's get_*_features returns: the tensor, or its pooled output."""
    return output if isinstance(output, Tensor) else output.pooler_output


def image_text_encoders(loaded) -> tuple[Callable[[Sequence], Tensor],
                                         Callable[[list[str]], Tensor]]:
    """(images, texts) encoders into the shared space of an image-text model loaded by
    saelab.models.load_image_text (CLIP, SigLIP): the two sides need no alignment step there.
    Pass them to `embed_pairs` as `vision` and `text_encoder`."""
    from saelab.data.pixels import pixel_values

    @torch.no_grad()
    def images(items: Sequence) -> Tensor:
        return torch.cat([_features(loaded.model.get_image_features(
            pixel_values=pixel_values(items[s:s + IMAGE_BATCH], loaded.processor))).float()
            for s in range(0, len(items), IMAGE_BATCH)])

    @torch.no_grad()
    def texts(batch: list[str]) -> Tensor:
        tokens = loaded.tokenizer(batch, padding=True, truncation=True, return_tensors="pt")
        return _features(loaded.model.get_text_features(**tokens)).float()

    return images, texts


def embed_pairs(pairs: Sequence, vision, text_encoder) -> PairEmbeddings:
    """Embed saelab.data.paired pairs: images through the loaded `vision` model (or a callable
    images -> [N, d], e.g. the first of `image_text_encoders`), texts through `text_encoder` (a
    callable texts -> [N, d], e.g. saelab.interpret.explain.embedding.Encoder; each distinct
    text is embedded once)."""
    if not pairs:
        raise DataError("no pairs to embed")
    texts = sorted({p.text for p in pairs})
    vectors = text_encoder(texts).float()
    row = {t: i for i, t in enumerate(texts)}
    text = vectors[torch.tensor([row[p.text] for p in pairs])]
    items = [p.image for p in pairs]
    image = embed_images(items, vision) if hasattr(vision, "kind") else vision(items).float()
    return PairEmbeddings(image, text, [p.concept for p in pairs])


@torch.no_grad()
def codes_of(dictionary, x: Tensor) -> Tensor:
    """Dense codes [N, n_latents] of rows x [N, d_in], in chunks, float32 on the CPU."""
    if x.ndim != 2 or x.shape[1] != dictionary.d_in:
        raise DataError(f"rows of shape {tuple(x.shape)} for a dictionary of input width "
                        f"{dictionary.d_in}: give [N, {dictionary.d_in}]")
    device = next(dictionary.parameters(), torch.empty(0)).device
    return torch.cat([dictionary.encode(x[i:i + CODES_BATCH].to(device)).float().cpu()
                      for i in range(0, len(x), CODES_BATCH)]) if len(x) else \
        torch.zeros(0, dictionary.n_latents)


class Consistency(NamedTuple):
    """How often the latents active on an image are active on a text (means over the images)."""

    matched: float
    """Share of an image's active latents also active on the text of its own concept."""
    other_concepts: float
    """The same share against the texts of the other concepts (mean over them): the chance
    level of this data, with the latents' frequencies as they are."""
    random_latents: float
    """Expected share if the text's active latents were a random set of the same size:
    mean text L0 / n_latents."""
    lift: float
    """matched / other_concepts."""
    image_l0: float
    """Mean number of latents active on an image."""
    text_l0: float
    """Mean number of latents active on a concept's text."""
    n_images: int
    """Images measured."""
    n_concepts: int
    """Concepts among them."""


def concept_consistency(image_codes: Tensor, text_codes: Tensor,
                        concepts: Sequence[str]) -> Consistency:
    """Consistency of image codes [N, F] and text codes [N, F] of pairs of `concepts` [N] (the
    texts of one concept may differ: a concept's text latents are those active on any of its
    texts among the pairs). Needs at least two concepts."""
    if image_codes.shape != text_codes.shape or len(concepts) != len(image_codes):
        raise DataError(f"image codes {tuple(image_codes.shape)}, text codes "
                        f"{tuple(text_codes.shape)} and {len(concepts)} concepts: give one of "
                        f"each per pair")
    names = sorted(set(concepts))
    if len(names) < 2:
        raise DataError("concept consistency needs pairs of at least two concepts")
    index = torch.tensor([names.index(c) for c in concepts])
    image = image_codes != 0  # [N, F]
    # a concept's text latents: active on any of its texts [C, F]
    text = torch.stack([(text_codes[index == c] != 0).any(0) for c in range(len(names))])
    shared = image.float() @ text.float().T  # [N, C]: latents an image shares with each concept
    l0 = image.sum(1).float().clamp_min(1)
    share = shared / l0[:, None]
    matched = share[torch.arange(len(index)), index]
    others = (share.sum(1) - matched) / (len(names) - 1)
    text_l0 = float(text.sum(1).float().mean())
    m, o = float(matched.mean()), float(others.mean())
    return Consistency(m, o, text_l0 / image.shape[1], m / o if o > 0 else float("inf"),
                       float(image.sum(1).float().mean()), text_l0, len(index), len(names))
