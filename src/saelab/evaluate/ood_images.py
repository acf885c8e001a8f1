"""Out-of-distribution detection on an image store: the `ood` family's scores with images as
the rows ("Probing the Representational Power of Sparse Autoencoders in Vision Models", 2025,
arXiv 2508.11277).

The paper asks whether the latents of SAEs on vision models serve OOD detection. Here the
in-distribution images are those of the image store the dictionary is evaluated on (e.g.
scikit-learn's digits captured with `saelab capture --model vit-s14 --dataset digits`); the OOD
images (by default the scikit-image pictures and the LFW faces, `ood="skimage+lfw"`) are run
through the store's model to the same hookpoint and give the same rows per image (CLS, pooled
or patches, as the store's manifest says). The scores and their raw-activation references are
the `ood` family's (saelab.evaluate.ood.ood_detection: reconstruction error against PCA error,
Mahalanobis distance of the codes against that of the activation, rare latents against rare
dimensions), each an AUROC of held-out in-distribution rows against OOD rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from saelab.errors import ConfigError, DataError
from saelab.evaluate._base import Context, Family
from saelab.evaluate._registry import register
from saelab.evaluate.ood import Ood, ood_detection, sample_rows

IMAGE_BATCH = 16
"""OOD images per forward of the model."""


@dataclass(frozen=True)
class OodImagesConfig:
    """What the `ood_images` family reads and how much of it."""

    ood: str = "skimage+lfw"
    """The OOD images: an image source saelab.data.images.read_images reads (a packaged set, a
    folder, hf:NAME, several joined by '+')."""
    max_ood_images: int | None = None
    """OOD images read at most (None: all of the source)."""
    fit_fraction: float = 0.5
    """Share of the store's images whose rows fit the statistics; the rest are scored."""
    max_rows: int = 4096
    """Rows per part (fit, held-out, OOD) at most, a seeded sample beyond."""
    rare_frequency: float = 0.001
    """A latent is rare when it fires on fewer than this share of the fit rows."""


def store_image_rows(store, key: str) -> tuple[Tensor, Tensor]:
    """Every row of `key` in an image store [N, d] (float32) and the image of each row [N]."""
    image = store.row_index()["ctx"]
    parts = [(a.float(), ids) for a, ids in store.iter_rows(key)]
    if not parts:
        raise DataError(f"{store.path} has no rows: capture images into it first")
    return torch.cat([a for a, _ in parts]), image[torch.cat([i for _, i in parts])]


@torch.no_grad()
def image_rows_of(loaded, items, key: str, rows: str) -> Tensor:
    """The rows `rows` ("cls", "pooled", "patches", "all") of images `items` at hookpoint `key` of
    a loaded vision model (saelab.models.load), as a store captures them: [images * R, d]."""
    from saelab.capture import Capture
    from saelab.capture.images import image_rows, patch_grid
    from saelab.data.pixels import pixel_values

    out = []
    with Capture(loaded.model, [key]) as cap:
        for s in range(0, len(items), IMAGE_BATCH):
            pixels = pixel_values(items[s:s + IMAGE_BATCH], loaded.processor)
            acts = cap.run(pixel_values=pixels)[key]
            grid = patch_grid(loaded.model, pixels, acts.shape[1])
            out.append(image_rows(acts, grid, rows).reshape(-1, acts.shape[-1]).float())
    if not out:
        raise DataError("no OOD images to capture")
    return torch.cat(out)


@register("ood_images")
class OodImages(Family):
    """Out-of-distribution detection on an image store by scores from the latents
    (reconstruction error, Mahalanobis distance of the codes, rare latents), each against the
    same kind of score on the raw activation (after "Probing the Representational Power of
    Sparse Autoencoders in Vision Models", 2025).

    In-distribution: the images of the store evaluated on, split at random by image (half fit
    the statistics, half are scored); OOD: `OodImages.config.ood`, by default the scikit-image
    pictures and the LFW faces, run through the store's model (loaded by the name in its
    manifest) to the same hookpoint, with the store's rows per image (CLS, pooled or every
    patch; patch rows are scored one by one). At most 4,096 rows per part.

    Figures (the `ood` family's): `auroc_reconstruction_error`, `auroc_mahalanobis_codes`,
    `auroc_rare_latents` from the dictionary; `auroc_pca_error`, `auroc_mahalanobis_raw`,
    `auroc_rare_dims` from the raw activation; `rows_fit`, `rows_in`, `rows_ood`,
    `pca_components`, `rare_latent_fraction`. Each AUROC: held-out in-distribution rows
    against OOD rows, 0.5 is chance.

    Departures: the paper works with CLIP and its own OOD sets; the OOD rows are not passed
    through the store's norm-based exclusion rule (that rule would drop exactly the unusual
    rows). Text stores are refused (use the `ood` family there). Another OOD set:
    `OodImages.config = OodImagesConfig(ood="path/to/folder")`.
    """

    needs = frozenset({"activations", "images"})
    figures = Ood.figures  # the text family's scores, on images
    headline = Ood.headline
    config: ClassVar[OodImagesConfig] = OodImagesConfig()
    """The OOD images and the sizes (replace with another OodImagesConfig to change them)."""

    @classmethod
    def check(cls, context: Context) -> None:
        if context.target_hookpoint is not None:
            raise ConfigError("ood_images: a transcoder reconstructs another activation than it "
                              "reads; evaluate an SAE")
        if context.hookpoint is None:
            raise ConfigError("ood_images: the rows are read at the hookpoint the dictionary "
                              "was trained on: pass hookpoint")
        if not 0 < cls.config.fit_fraction < 1:
            raise ConfigError(f"ood_images: fit_fraction must be in (0, 1), got "
                              f"{cls.config.fit_fraction}")

    def run(self) -> dict[str, float]:
        from saelab.data.images import read_images
        from saelab.models import load

        c, config = self.context, self.config
        x, image = store_image_rows(c.store, c.hookpoint)
        n_images = int(image.max()) + 1
        if n_images < 2:
            raise DataError("ood_images needs an image store of at least 2 images (one part "
                            "fits, one is scored)")
        g = torch.Generator().manual_seed(0 if c.seed is None else c.seed)
        order = torch.randperm(n_images, generator=g)
        n_fit = min(max(1, round(config.fit_fraction * n_images)), n_images - 1)
        is_fit = torch.zeros(n_images, dtype=torch.bool)
        is_fit[order[:n_fit]] = True
        items = read_images(config.ood, limit=config.max_ood_images)
        ood = image_rows_of(load(c.store.model), items, c.hookpoint,
                            c.store.manifest["images"]["rows"])
        parts = [sample_rows(t, config.max_rows, g) for t in (x[is_fit[image]],
                                                              x[~is_fit[image]], ood)]
        out = ood_detection(c.dictionary, *parts, rare_frequency=config.rare_frequency)
        return {name: out[name] for name in self.figures}
