"""Embeddings of the offline image-text pairs for bench/vl_sae.py and bench/vision_ood.py,
computed once and cached (keyed by source and size): the packaged ViT-S/14's pooled output of
scikit-learn's digits and the scikit-image pictures (and, for OOD, the LFW faces), and the
packaged MiniLM's embedding of each image's label sentence (saelab.data.paired, four
templates).

    OMP_NUM_THREADS=1 python bench/vl_embed.py     # fills the cache (about 5 min on 2 cores)
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

CACHE = Path(os.environ.get("SAELAB_BENCH_CACHE", Path.home() / ".cache" / "saelab" / "bench"))


def pair_embeddings(source: str, templates: int = 4):
    """PairEmbeddings of every image of `source` (saelab.data.paired), cached."""
    from saelab.data.paired import TEMPLATES, paired_images
    from saelab.evaluate.vl_pairs import PairEmbeddings, embed_pairs

    path = CACHE / f"vl_pairs_{source}_{templates}.pt"
    if path.exists():
        d = torch.load(path, weights_only=True)
        return PairEmbeddings(d["image"], d["text"], d["concepts"].split("\n")), d["texts"].split("\n")
    from saelab.interpret.explain.embedding import Encoder
    from saelab.models import load

    pairs = paired_images(source, templates=TEMPLATES[:templates], seed=0)
    emb = embed_pairs(pairs, load("vit-s14"), Encoder.load())
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"image": emb.image, "text": emb.text, "concepts": "\n".join(emb.concepts),
                "texts": "\n".join(p.text for p in pairs)}, path)
    return emb, [p.text for p in pairs]


def digits_split(train: int, seed: int = 0):
    """(digits, skimage pictures, train indices, held-out indices): the paired digit and picture
    embeddings, and the digits split by a seeded permutation into `train` and the rest."""
    digits, _ = pair_embeddings("digits")
    pictures, _ = pair_embeddings("skimage")
    order = torch.randperm(len(digits.concepts), generator=torch.Generator().manual_seed(seed))
    return digits, pictures, order[:train], order[train:]


def image_embeddings(source: str) -> torch.Tensor:
    """The ViT-S/14 pooled output of every image of an image source, cached."""
    from saelab.data.images import read_images
    from saelab.evaluate.vl_pairs import embed_images
    from saelab.models import load

    path = CACHE / f"vit_pooled_{source}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    x = embed_images(read_images(source), load("vit-s14"))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(x, path)
    return x


if __name__ == "__main__":
    torch.set_num_threads(1)
    for s in ("digits", "skimage"):
        e, _ = pair_embeddings(s)
        print(s, tuple(e.image.shape), tuple(e.text.shape), flush=True)
    for s in ("lfw",):
        print(s, tuple(image_embeddings(s).shape), flush=True)
