"""Writing an activation store from a vision model: rows per patch token or per image.

The same folder layout as a text store (saelab.store.writer): `manifest.json`, shards with
`acts/<key>` and per row `ctx` (here: the image's index), `pos` (its position in the token
sequence; -1 for a pooled row) and `token` (-1: images have no vocabulary). What differs:
- `manifest["images"]` says where the images came from and how a row maps onto one: the
  source, the rows kept per image (saelab.capture.images.IMAGE_ROWS), the patch grid
  (`grid`: rows, cols; `prefix`: tokens before the patches), the image size the model saw,
  and each image's title and label;
- `contexts.safetensors` holds, for the rows an image gives, their `pos` and their patch
  position `patch_rc` [R, 2] ((-1, -1) for CLS and pooled rows);
- `context_len` is the rows per image and `n_contexts` the number of images.
Shards and manifest are written atomically and a killed capture resumes, as for text.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from saelab._paths import folder_lock, write_json, write_safetensors
from saelab.capture import Capture
from saelab.capture.exclude import NORM_FACTOR, Exclusion
from saelab.capture.images import PatchGrid, image_rows, patch_grid, row_positions
from saelab.errors import DataError
from saelab.models import hub_id
from saelab.store.reader import CONTEXTS, FORMAT, MANIFEST, ActivationStore, acts_name
from saelab.store.writer import DTYPES, RowAccumulator, flush_shard, prepare_folder

log = logging.getLogger(__name__)
NO_TOKEN = -1
"""`token` of an image row."""


def capture_images_to_store(model: nn.Module, pixels: Callable[[int, int], Tensor],
                            n_images: int, hookpoints: list[str], out: str | Path, *,
                            model_name: str, source: dict, rows: str = "patches",
                            norm_factor: float | None = NORM_FACTOR, batch_images: int = 16,
                            shard_rows: int = 1 << 16, dtype: str = "float32",
                            overwrite: bool = False, progress: bool = True) -> ActivationStore:
    """Capture `hookpoints` of a vision model for images [0, n_images) into a store at `out`.

    `pixels(start, stop)` gives the `pixel_values` [stop - start, C, H, W] of those images (the
    model's own preprocessing). `source` describes the images for the manifest and the
    fingerprint: `dataset`, `titles` and `labels` (one per image) and `processor` (the
    preprocessing settings). `rows`: "patches", "cls", "pooled" or "all" per image. Rows whose
    norm exceeds `norm_factor` x the median are left out, as for text.
    """
    out = Path(out)
    if dtype not in DTYPES:
        raise DataError(f"unknown store dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if n_images < 1:
        raise DataError("no images to capture: the source holds none")
    with folder_lock(out, "saelab capture"), Capture(model, hookpoints) as cap:
        keys = [hp.key for hp in cap.hookpoints]
        fingerprint = {"model": model_name, "hookpoints": keys, "images": True, "rows": rows,
                       "n_images": n_images, "dtype": dtype, "norm_factor": norm_factor,
                       "source_sha256": _sha256(source)}
        manifest = prepare_folder(out, fingerprint, overwrite)
        if manifest is not None and manifest.get("complete"):
            log.info("store %s is already complete", out)
            return ActivationStore(out)
        _capture_loop(cap, model, pixels, n_images, out, manifest, fingerprint, source,
                      DTYPES[dtype], batch_images, shard_rows, progress)
    return ActivationStore(out)


def _sha256(source: dict) -> str:
    return hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()


def _capture_loop(cap: Capture, model: nn.Module, pixels: Callable[[int, int], Tensor],
                  n_images: int, out: Path, manifest: dict | None, fingerprint: dict,
                  source: dict, dtype: torch.dtype, batch_images: int, shard_rows: int,
                  progress: bool) -> None:
    done = 0 if manifest is None else manifest["contexts_done"]
    if manifest is not None:
        log.info("resuming capture into %s at image %d", out, done)
    bar = tqdm(total=n_images, initial=done, unit="img", desc="capture", disable=not progress)
    acc = exclusion = None
    for start in range(done, n_images, batch_images):
        stop = min(n_images, start + batch_images)
        batch = pixels(start, stop)
        first = next(model.parameters())
        acts = _checked({k: a.cpu() for k, a in cap.run(
            pixel_values=batch.to(first.device, first.dtype)).items()}, start, stop)
        if manifest is None:  # the first batch fixes the layout
            grid = patch_grid(model, batch, next(iter(acts.values())).shape[1])
            manifest = _new_store(out, fingerprint, source, grid, batch)
        if acc is None:
            grid = PatchGrid(*manifest["images"]["grid"], manifest["images"]["prefix"])
            exclusion = Exclusion(**manifest["exclusion"])
            acc = RowAccumulator(manifest["hookpoints"], manifest["stats"])
        selected = {k: image_rows(a, grid, fingerprint["rows"]) for k, a in acts.items()}
        for key, a in selected.items():
            manifest["d"][key] = a.shape[-1]
        kept, dropped = _rows_of_batch(selected, grid, fingerprint["rows"], start, exclusion,
                                       dtype)
        acc.add(kept)
        manifest["excluded_rows"] += dropped
        bar.update(stop - start)
        if acc.rows >= shard_rows or (stop >= n_images and acc.rows):
            flush_shard(out, manifest, acc, exclusion, contexts_done=stop)
    bar.close()
    manifest["complete"] = True
    manifest["contexts_done"] = n_images
    write_json(out / MANIFEST, manifest)


def _checked(acts: dict[str, Tensor], start: int, stop: int) -> dict[str, Tensor]:
    lengths = {k: a.shape[1] if a.dim() == 3 else None for k, a in acts.items()}
    if len(set(lengths.values())) != 1:
        raise DataError(f"the hookpoints give token sequences of different lengths {lengths}; "
                        f"capture them into separate stores")
    for key, a in acts.items():
        if not torch.isfinite(a).all():
            raise DataError(f"non-finite activations (NaN or inf) at hookpoint {key!r} in "
                            f"images {start}-{stop - 1}; check the model's dtype and inputs")
    return acts


def _rows_of_batch(acts: dict[str, Tensor], grid: PatchGrid, rows: str, first: int,
                   exclusion: Exclusion, dtype: torch.dtype) -> tuple[dict[str, Tensor], int]:
    """Kept rows of one batch of images as flat tensors, and how many were dropped."""
    positions = row_positions(grid, rows)  # [R]
    n_images = next(iter(acts.values())).shape[0]
    no_tokens = torch.full((n_images, positions.numel()), NO_TOKEN, dtype=torch.long)
    exclusion.calibrate(no_tokens, acts)
    keep = exclusion.keep_mask(no_tokens, acts)  # [B, R]
    image, r = keep.nonzero(as_tuple=True)
    out = {acts_name(k): a[image, r].to(dtype) for k, a in acts.items()}
    out.update(ctx=(image + first).long(), pos=positions[r].int(), token=no_tokens[image, r])
    return out, int((~keep).sum())


def _new_store(out: Path, fingerprint: dict, source: dict, grid: PatchGrid,
               pixels: Tensor) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    positions = row_positions(grid, fingerprint["rows"])
    write_safetensors(out / CONTEXTS, {"pos": positions, "patch_rc": grid.position(positions)})
    exclusion = Exclusion([], fingerprint["norm_factor"])
    images = {"dataset": source.get("dataset"), "skip_images": source.get("skip_images", 0),
              "rows": fingerprint["rows"],
              "grid": [grid.rows, grid.cols], "prefix": grid.prefix,
              "image_size": list(pixels.shape[-2:]), "processor": source.get("processor"),
              "titles": list(source["titles"]), "labels": list(source["labels"])}
    manifest = {"format": FORMAT, "version": 1, "model": fingerprint["model"],
                "model_hub_id": hub_id(fingerprint["model"]),
                "hookpoints": fingerprint["hookpoints"], "d": {}, "dtype": fingerprint["dtype"],
                "context_len": int(positions.numel()), "n_contexts": fingerprint["n_images"],
                "contexts_done": 0, "complete": False, "shards": [], "stats": {},
                "excluded_rows": 0, "exclusion": exclusion.to_json(), "images": images,
                "config": fingerprint}
    write_json(out / MANIFEST, manifest)
    return manifest
