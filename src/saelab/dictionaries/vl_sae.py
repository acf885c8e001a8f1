"""VL-SAE (Shen, Sun, Huang, Wang 2025, "VL-SAE: Interpreting and Enhancing Vision-Language
Alignment with a Unified Concept Set", NeurIPS 2025, arXiv 2510.21323): one set of latents for
images and texts, so that a latent is one concept in both modalities.

What it changes relative to a TopK SAE: the encoder is distance-based and shared by the two
modalities, and there are two decoders, one per modality.
- Encoder: a latent's activation is 2 - ||x / |x| - w_i / |w_i|||, two minus the Euclidean
  distance between the normalised input and the latent's normalised encoder row (in [0, 2]; a
  monotone function of their cosine), then the k largest are kept. Inputs that point the same
  way get the same activations whatever their modality and norm: this is the paper's
  consistency property (semantically similar image and text representations activate the same
  latents), built into the encoder rather than added as a loss term.
- Decoders: the image decoder is the contract's `W_dec`, `b_dec` (`decode`, `forward`); the
  text decoder is `W_dec_text`, `b_dec_text` (`decode_text`). Reconstructing each modality with
  its own decoder keeps modality-specific offsets out of the shared encoder.
- Loss: the squared error of each row with its modality's decoder, image rows and text rows
  averaged separately and summed (the reference's MSE_v + MSE_t).

Reference code (github.com/ssfgunner/VL-SAE): `cvlms/sae_trainer/sae_model.py` (class
`VL_SAE`: the normalised distance encoder, a top-k on the activations, two `nn.Linear`
decoders), `cvlms/sae_trainer/train.py` (the two reconstruction terms, Adam) and, for models
whose two modalities do not share a space (LLaVA), the explicit alignment step before it:
`lvlms/sae_trainer/train_aux.py` with `AuxiliaryAE` in `lvlms/sae_trainer/sae_model.py` (one
linear projection per modality into a shared space, trained with a symmetric contrastive loss
plus the reconstruction of each modality from its projection; the VL-SAE then reads the
projections, `lvlms/sae_trainer/train.py`). `fit_alignment` here is that step.

Training: rows of both modalities go through `saelab.fit` with their modality as the label
(0 image, 1 text, one column): `saelab.fit(sae, saelab.train.Labelled(torch.cat([img, txt]),
modality_labels(len(img), len(txt))), cfg)`; rows without labels are treated as images. The pairing itself
is not used by the VL-SAE's loss (the reference's `--shuffle` trains on unpaired modalities);
it is used by the alignment.

Departures: saelab's offline data has no CLIP, whose image and text towers already share a
space; its pairs are the packaged ViT-S/14's pooled image embedding and the packaged MiniLM's
sentence embedding of the image's label ("a photo of the digit seven", saelab.data.paired),
two unrelated spaces, so the alignment step is always needed here (with a network,
`saelab.models.load` of a CLIP model gives its vision tower; the text tower is not wired in).
The alignment's contrastive loss uses cosine similarity (the reference leaves the
normalisation commented out and works on raw dot products), standardises each modality first,
and counts every pair of the same concept as a positive (many images share one label
sentence here; the reference's captions are one per image). Decoders start small and random
as `nn.Linear` does; no unit-norm constraint, as in the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saelab._paths import write_safetensors
from saelab.config import option
from saelab.dictionaries._base import (
    Dictionary,
    DictionaryConfig,
    Loss,
    StepState,
    check_k,
    fvu,
    squared_error,
)
from saelab.dictionaries._registry import register
from saelab.errors import ConfigError, DataError
from saelab.ops import sparse_decode, to_dense, topk_relu

IMAGE, TEXT = 0, 1
"""Modality labels of rows: 0 image, 1 text."""


@dataclass
class VLSAEConfig(DictionaryConfig):
    k: int = option(32, "Number of active latents per input.")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_k(self)


def distance_activations(x: Tensor, W_enc: Tensor) -> Tensor:
    """2 - ||x/|x| - w/|w||| for rows x [B, d] and encoder rows W_enc [F, d]: [B, F] in [0, 2].
    For unit vectors the distance is sqrt(2 - 2 cos); the clamp keeps its gradient finite."""
    cos = F.normalize(x, dim=-1) @ F.normalize(W_enc, dim=-1).T
    return 2 - (2 - 2 * cos).clamp_min(1e-12).sqrt()


def modality_labels(n_image: int, n_text: int) -> Tensor:
    """Labels [n_image + n_text, 1] for rows of images followed by rows of texts: 0 then 1."""
    return torch.cat([torch.full((n_image, 1), float(IMAGE)), torch.full((n_text, 1), float(TEXT))])


def modality_of(labels: Tensor | None, n: int) -> Tensor:
    """The modality [n] (bool: True for text) of rows whose labels are `labels` ([n] or [n, 1],
    0 image, 1 text); all images without labels."""
    if labels is None:
        return torch.zeros(n, dtype=torch.bool)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or len(labels) != n or not ((labels == IMAGE) | (labels == TEXT)).all():
        raise DataError(f"vl_sae's labels are each row's modality, 0 (image) or 1 (text), one "
                        f"per row; got shape {tuple(labels.shape)}. Train with "
                        f"saelab.train.Labelled(rows, modality)")
    return labels.bool()


@register("vl_sae")
class VLSAE(Dictionary):
    """VL-SAE: a distance-based top-k encoder shared by images and texts and one decoder per
    modality. Weights: W_enc [n_latents, d_in] (the encoder rows; only their direction counts),
    W_dec, b_dec (image decoder), W_dec_text, b_dec_text (text decoder)."""

    Config = VLSAEConfig
    unit_norm_decoder = False
    scales_with_input = ("W_dec", "b_dec", "W_dec_text", "b_dec_text")
    """The encoder reads directions only, so a scaled input scales the outputs alone."""

    def __init__(self, cfg: VLSAEConfig):
        super().__init__(cfg)
        if cfg.d_out != cfg.d_in:
            raise ConfigError("d_out: vl_sae reconstructs its input (d_out = d_in), got "
                              f"{cfg.d_out} and {cfg.d_in}")
        bound = 1 / math.sqrt(cfg.n_latents)  # nn.Linear's default for the decoders
        self.W_enc = nn.Parameter(torch.randn(cfg.n_latents, cfg.d_in))
        self.W_dec = nn.Parameter(torch.empty(cfg.n_latents, cfg.d_out).uniform_(-bound, bound))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_out))
        self.W_dec_text = nn.Parameter(torch.empty(cfg.n_latents, cfg.d_out)
                                       .uniform_(-bound, bound))
        self.b_dec_text = nn.Parameter(torch.zeros(cfg.d_out))

    def encode(self, x: Tensor) -> Tensor:
        return to_dense(topk_relu(distance_activations(x, self.W_enc), self.cfg.k),
                        self.n_latents)

    def decode_text(self, codes: Tensor) -> Tensor:
        """Text reconstruction [B, d_out] from codes [B, n_latents]."""
        return codes @ self.W_dec_text + self.b_dec_text

    def decode_as(self, codes: Tensor, text: Tensor) -> Tensor:
        """Reconstruction of rows of either modality: `text` [B] bool picks the text decoder."""
        return torch.where(text[:, None], self.decode_text(codes), self.decode(codes))

    @torch.no_grad()
    def init_from_data(self, x: Tensor) -> None:
        """Both decoder biases start at the data mean."""
        self.b_dec.copy_(x.mean(0))
        self.b_dec_text.copy_(x.mean(0))

    def loss(self, x: Tensor, state: StepState, target: Tensor | None = None) -> Loss:
        if target is not None and target is not x:
            raise ConfigError("vl_sae reconstructs its input; it takes no target")
        text = modality_of(state.extra.get("labels"), len(x)).to(x.device)
        codes = topk_relu(distance_activations(x, self.W_enc), self.cfg.k)
        x_hat = torch.where(text[:, None],
                            sparse_decode(codes.values, codes.indices, self.W_dec_text)
                            + self.b_dec_text,
                            sparse_decode(codes.values, codes.indices, self.W_dec) + self.b_dec)
        error = squared_error(x_hat, x)
        terms = {name: error[mask].mean() for name, mask in (("mse_image", ~text),
                                                              ("mse_text", text)) if mask.any()}
        fired = codes.values > 0
        active = torch.bincount(codes.indices.reshape(-1), weights=fired.reshape(-1).float(),
                                minlength=self.n_latents) > 0
        metrics = {"fvu": fvu(x_hat.detach(), x).item(),
                   "l0": fired.sum(-1).float().mean().item(),
                   "text_fraction": text.float().mean().item()}
        return Loss(sum(terms.values()), terms, metrics, active)


# --- the explicit alignment step ----------------------------------------------------------------
class Alignment(nn.Module):
    """Two linear projections of standardised image and text embeddings into one shared space
    (the reference's `AuxiliaryAE`), with linear decoders back to each modality."""

    def __init__(self, d_image: int, d_text: int, d_shared: int):
        super().__init__()
        self.register_buffer("image_mean", torch.zeros(d_image))
        self.register_buffer("image_std", torch.ones(d_image))
        self.register_buffer("text_mean", torch.zeros(d_text))
        self.register_buffer("text_std", torch.ones(d_text))
        self.image_in, self.text_in = nn.Linear(d_image, d_shared), nn.Linear(d_text, d_shared)
        self.image_out, self.text_out = nn.Linear(d_shared, d_image), nn.Linear(d_shared, d_text)

    def project_image(self, image: Tensor) -> Tensor:
        """Image embeddings [N, d_image] in the shared space [N, d_shared]."""
        return self.image_in((image - self.image_mean) / self.image_std)

    def project_text(self, text: Tensor) -> Tensor:
        """Text embeddings [N, d_text] in the shared space [N, d_shared]."""
        return self.text_in((text - self.text_mean) / self.text_std)

    def save(self, path: str | Path) -> None:
        """Write `alignment.safetensors` (the weights, the shapes in its metadata) at `path`
        (a file path; atomic)."""
        shapes = {"d_image": self.image_in.in_features, "d_text": self.text_in.in_features,
                  "d_shared": self.image_in.out_features}
        write_safetensors(path, dict(self.state_dict()),
                          metadata={k: str(v) for k, v in shapes.items()})

    @classmethod
    def load(cls, path: str | Path) -> "Alignment":
        """An alignment written by `save` (in eval mode, no gradients)."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "pt") as f:
                meta, tensors = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
            model = cls(int(meta["d_image"]), int(meta["d_text"]), int(meta["d_shared"]))
            model.load_state_dict(tensors)
        except (OSError, KeyError, RuntimeError, ValueError, SafetensorError) as e:
            raise DataError(f"{path} is not an alignment written by Alignment.save ({e})") from None
        return model.eval().requires_grad_(False)


class AlignmentFit(NamedTuple):
    """The alignment and how well it matches pairs."""

    alignment: Alignment
    """The fitted projections (in eval mode, no gradients)."""
    contrastive: float
    """Last step's contrastive loss."""
    reconstruction: float
    """Last step's reconstruction loss (both modalities, on standardised inputs)."""


def contrastive_loss(image: Tensor, text: Tensor, same: Tensor, temperature: float) -> Tensor:
    """Symmetric cross-entropy of cosine similarities [B, B] / temperature, the targets spread
    evenly over the pairs `same` marks as positives ([B, B] bool, the diagonal included)."""
    logits = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T / temperature
    target = same.float() / same.float().sum(1, keepdim=True)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target.T)) / 2


def fit_alignment(image: Tensor, text: Tensor, concepts: Sequence[str] | None = None,
                  d_shared: int | None = None, steps: int = 500, batch_size: int = 256,
                  lr: float = 1e-3, temperature: float = 0.07, seed: int = 0) -> AlignmentFit:
    """The explicit alignment step: fit `Alignment` on pairs (row i of `image` [N, d_image] with
    row i of `text` [N, d_text]) by the contrastive loss plus each modality's reconstruction
    (reference: `lvlms/sae_trainer/train_aux.py`). `concepts` [N] makes every pair of the same
    concept a positive; without it only row i matches row i. `d_shared` defaults to d_image."""
    if image.ndim != 2 or text.ndim != 2 or len(image) != len(text) or len(image) < 2:
        raise DataError(f"alignment needs paired rows: image {tuple(image.shape)} and text "
                        f"{tuple(text.shape)} must be [N, d] with the same N >= 2")
    if concepts is not None and len(concepts) != len(image):
        raise DataError(f"{len(concepts)} concepts for {len(image)} pairs: give one per pair")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Alignment(image.shape[1], text.shape[1], d_shared or image.shape[1])
    model.image_mean.copy_(image.mean(0)), model.image_std.copy_(image.std(0).clamp_min(1e-6))
    model.text_mean.copy_(text.mean(0)), model.text_std.copy_(text.std(0).clamp_min(1e-6))
    if concepts is None:
        ids = torch.arange(len(image))
    else:
        names = {c: i for i, c in enumerate(sorted(set(concepts)))}
        ids = torch.tensor([names[c] for c in concepts])
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    for _ in range(steps):
        rows = torch.randperm(len(image), generator=g)[:batch_size]
        xi = (image[rows] - model.image_mean) / model.image_std
        xt = (text[rows] - model.text_mean) / model.text_std
        zi, zt = model.image_in(xi), model.text_in(xt)
        contrast = contrastive_loss(zi, zt, ids[rows, None] == ids[None, rows], temperature)
        recon = F.mse_loss(model.image_out(zi), xi) + F.mse_loss(model.text_out(zt), xt)
        optimizer.zero_grad(set_to_none=True)
        (contrast + recon).backward()
        optimizer.step()
    model.eval().requires_grad_(False)
    return AlignmentFit(model, float(contrast.detach()), float(recon.detach()))
