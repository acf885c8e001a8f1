"""Static dashboards of a dictionary trained on a vision model's activations: the top-activating
images of each feature, each with the feature's patch heat map over it.

An image's activation for a feature is the largest code of the feature over the image's rows
(its patches; its CLS or pooled row for such stores). Two streaming passes over the store: the
first keeps that maximum for every (image, latent) and the patch-row firing counts; the second
gathers, for the chosen features' top images, the code on every patch. The images are read again
from the source the store names (titles checked against the manifest) and shown as the model saw
them (resized and cropped by its processor, normalisation undone).

The output folder holds `index.html` (features by firing frequency, each with its first top
images), `features/NNNNN.html` (the top images, activation, title and label), `images/` (each
image shown once, as PNG) and `heat/` (one small RGBA PNG per feature and image: the patch grid,
darkening the patches where the feature is silent and tinting those where it is active; the
browser scales it over the image), and
`dashboard.json`, and `data/images.json` (the features' records, for `saelab view`, which serves
them with search and sorting). No JavaScript, no external URL: the pages open from file://.

Memory: the first pass holds a float32 [n_images, n_latents] matrix (1,797 digits x 1,536
latents: 11 MB).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from saelab._paths import atomic_path
from saelab.data.images import read_images
from saelab.data.pixels import displayed_images, pixel_values
from saelab.errors import DataError, OutputExistsError
from saelab.interpret.dashboard import MARKER, select_features
from saelab.interpret.html import templates
from saelab.store import ActivationStore

log = logging.getLogger(__name__)
IMAGE_DATA = "images.json"
"""The image dashboard's records under `data/`, what `saelab view` serves."""

SHADE = 190
"""Opacity (of 255) of the dark veil over a patch where the feature is silent."""
TINT, TINT_ALPHA = (255, 140, 0), 120
"""Colour and opacity of the tint over the patch with the largest code. A patch with code a
(relative to the largest) gets the colour a x TINT at opacity SHADE - a x (SHADE - TINT_ALPHA):
silent patches are darkened, active ones tinted orange, so the map reads on dark images (digits)
and bright ones alike."""
PER_ROW_ON_INDEX = 4
"""Top images shown per feature on the index page."""


class ImageTops(NamedTuple):
    """Top-activating images of the chosen features, with their patch codes."""

    features: list[int]
    """The features shown, most frequent first."""
    values: Tensor
    """Float32 [n_features, n_top]: each top image's activation (its largest code)."""
    images: Tensor
    """Int64 [n_features, n_top]: index of each top image in the store."""
    heat: Tensor
    """Float32 [n_features, n_top, grid rows * grid cols]: the feature's code on each patch."""
    fire_counts: Tensor
    """Int64 [n_latents]: rows (patches) on which each latent fired."""
    image_counts: Tensor
    """Int64 [n_latents]: images on which each latent fired somewhere."""


def image_tops(dictionary, store: ActivationStore, key: str, n_features: int = 200,
               n_top: int = 12, progress: bool = True) -> ImageTops:
    """Two passes over the store's rows of `key` (see the module docstring)."""
    images_meta = store.manifest["images"]
    n_images, prefix = store.manifest["n_contexts"], images_meta["prefix"]
    n_patches = images_meta["grid"][0] * images_meta["grid"][1]
    index = store.row_index()
    img_max = torch.zeros(n_images, dictionary.n_latents)
    fire_counts = torch.zeros(dictionary.n_latents, dtype=torch.long)
    with torch.no_grad():
        for acts, ids in tqdm(store.iter_rows(key), desc="images: maxima", disable=not progress,
                              leave=False):
            codes = dictionary.encode(acts).float()
            fire_counts += (codes > 0).sum(0)
            img_max.scatter_reduce_(0, index["ctx"][ids].view(-1, 1).expand_as(codes), codes,
                                    "amax")
        features = select_features(SimpleNamespace(fire_counts=fire_counts), n_features)
        n_top = min(n_top, n_images)
        values, images = img_max[:, features].topk(n_top, dim=0)  # [n_top, n_features]
        values, images = values.t().contiguous(), images.t().contiguous()
        heat = torch.zeros(len(features), n_top, n_patches)
        for acts, ids in tqdm(store.iter_rows(key), desc="images: heat maps",
                              disable=not progress, leave=False):
            ctx, patch = index["ctx"][ids], index["pos"][ids] - prefix
            r, fi, ti = (images.unsqueeze(0) == ctx.view(-1, 1, 1)).nonzero(as_tuple=True)
            keep = patch[r] >= 0  # prefix tokens and pooled rows have no patch
            if keep.any():
                r, fi, ti = r[keep], fi[keep], ti[keep]
                codes = dictionary.encode(acts[r]).float()
                heat[fi, ti, patch[r]] = codes[torch.arange(r.numel()),
                                               torch.tensor(features)[fi]]
    return ImageTops(features, values, images, heat, fire_counts,
                     (img_max > 0).sum(0))


def image_dashboard(dictionary, store: ActivationStore | str | os.PathLike,
                    out: str | os.PathLike, *, hookpoint: str | None = None,
                    n_features: int = 200, n_top: int = 12, processor: Any = None,
                    title: str | None = None, extra: dict | None = None,
                    progress: bool = True) -> Path:
    """Write the image dashboard of `dictionary` over the image store `store` to `out`
    (replacing a previous dashboard there atomically; any other non-empty folder is refused).
    `processor`: the store model's image processor (default: loaded by the model's name)."""
    store = store if isinstance(store, ActivationStore) else ActivationStore(store)
    meta = store.manifest.get("images")
    if meta is None:
        raise DataError(f"{store.path} holds text activations, not images: build its dashboard "
                        f"with saelab.interpret.dashboard_from_store")
    out = Path(out)
    if out.exists() and not (out / MARKER).is_file() and any(out.iterdir()):
        raise OutputExistsError(f"{out} exists and is not a saelab dashboard; choose another "
                                f"output folder or remove it")
    key = store.hookpoint(hookpoint)
    items = _source_images(meta)
    if processor is None:
        from saelab.models import load_processor

        processor = load_processor(store.model)
    tops = image_tops(dictionary, store, key, n_features, n_top, progress)
    title = title or f"saelab: {dictionary.architecture} on {store.model} {key} (images)"
    with atomic_path(out) as tmp:
        shown = sorted(set(tops.images.flatten().tolist()))
        _write_images(tmp / "images", items, shown, processor)
        has_heat = meta["rows"] in ("patches", "all")
        if has_heat:
            _write_heat(tmp / "heat", tops, meta["grid"])
        records = _records(tops, meta, store.manifest["n_contexts"], store.n_rows, has_heat)
        _write_pages(tmp, records, title, meta, extra or {}, dictionary, store)
        (tmp / MARKER).write_text(json.dumps(
            {"title": title, "kind": "images", "features": tops.features, "n_rows": store.n_rows,
             "store": str(store.path.resolve()), "hookpoint": key}, indent=1), encoding="utf-8")
    log.info("wrote an image dashboard of %d features to %s", len(tops.features), out)
    return out


def _source_images(meta: dict) -> list:
    """The store's images, read again from their source; refused if the source changed."""
    skip, titles = meta.get("skip_images", 0), meta["titles"]
    items = read_images(meta["dataset"], limit=skip + len(titles))[skip:]
    if [i.title for i in items] != titles:
        raise DataError(f"the images of {meta['dataset']!r} are not those the store was captured "
                        f"from (titles differ): capture the store again from the current images")
    return items


def _write_images(folder: Path, items: list, shown: list[int], processor: Any) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    for start in range(0, len(shown), 16):
        ids = shown[start:start + 16]
        pictures = displayed_images(pixel_values([items[i] for i in ids], processor), processor)
        for i, picture in zip(ids, pictures):
            Image.fromarray(picture).save(folder / f"{i:06d}.png", optimize=True)


def _write_heat(folder: Path, tops: ImageTops, grid: list[int]) -> None:
    """One RGBA PNG [rows, cols] per (feature, top image): with a = code / the feature's largest
    code on its top images, the colour a x TINT at opacity SHADE - a x (SHADE - TINT_ALPHA)."""
    from PIL import Image

    folder.mkdir(parents=True)
    for fi, f in enumerate(tops.features):
        scale = float(tops.heat[fi].max()) or 1.0
        for ti in range(tops.images.shape[1]):
            if tops.values[fi, ti] <= 0:
                continue
            alpha = (tops.heat[fi, ti] / scale).clamp(0, 1).view(*grid).numpy()
            rgba = np.zeros((*grid, 4), dtype=np.uint8)
            rgba[..., :3] = np.round(alpha[..., None] * np.array(TINT)).astype(np.uint8)
            rgba[..., 3] = np.round(SHADE - alpha * (SHADE - TINT_ALPHA)).astype(np.uint8)
            Image.fromarray(rgba, "RGBA").save(folder / f"{f:05d}_{ti:02d}.png")


def _records(tops: ImageTops, meta: dict, n_images: int, n_rows: int,
             has_heat: bool) -> list[dict]:
    out = []
    for fi, f in enumerate(tops.features):
        examples = [{"image": f"{int(i):06d}.png", "value": float(v),
                     "title": meta["titles"][int(i)], "label": meta["labels"][int(i)],
                     "heat": f"{f:05d}_{ti:02d}.png" if has_heat else None}
                    for ti, (i, v) in enumerate(zip(tops.images[fi], tops.values[fi])) if v > 0]
        out.append({"id": f, "density": int(tops.fire_counts[f]) / max(n_rows, 1),
                    "images": int(tops.image_counts[f]), "image_share": int(
                        tops.image_counts[f]) / max(n_images, 1),
                    "max": examples[0]["value"] if examples else 0.0, "examples": examples})
    return out


def _write_pages(root: Path, records: list[dict], title: str, meta: dict, extra: dict,
                 dictionary, store: ActivationStore) -> None:
    env = templates()
    summary = [("architecture", f"{dictionary.architecture} · d_in {dictionary.d_in} · "
                                f"latents {dictionary.n_latents}"),
               ("images", f"{store.manifest['n_contexts']:,} from {meta['dataset']}"),
               ("rows", f"{store.n_rows:,} ({meta['rows']}; grid {meta['grid'][0]} x "
                        f"{meta['grid'][1]})"), ("features shown", len(records)),
               *extra.items()]
    env.globals.update(meta={"title": title}, static=True, home="index.html",
                       feature_url=lambda f: f"features/{f:05d}.html")
    (root / "index.html").write_text(env.get_template("image_list.html").render(
        records=records, summary=summary, per_row=PER_ROW_ON_INDEX, prefix=""),
        encoding="utf-8")
    (root / "data").mkdir()
    (root / "data" / IMAGE_DATA).write_text(json.dumps(
        {"title": title, "summary": [[k, str(v)] for k, v in summary], "features": records},
        indent=1), encoding="utf-8")
    env.globals.update(home="../index.html", feature_url=lambda f: f"{f:05d}.html")
    template = env.get_template("image_feature.html")
    (root / "features").mkdir()
    for i, rec in enumerate(records):
        nav = (records[i - 1]["id"] if i else None,
               records[i + 1]["id"] if i + 1 < len(records) else None)
        (root / "features" / f"{rec['id']:05d}.html").write_text(
            template.render(rec=rec, nav=nav, prefix="../"), encoding="utf-8")
