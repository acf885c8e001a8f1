"""A diffusion block's delta captured into an activation store on disk, one image at a time.

The folder is a saelab activation store (`saelab.store.writer`'s layout, read by
`ActivationStore`, trained on by `saelab.fit(sae, store)` and `saelab train STORE`): shards with
`acts/<block>:delta` [rows, C] and per row `ctx` (the image's index), `pos` (its spatial
position, y * W + x), `token` (-1: no vocabulary) and `step` (the denoising step). An image's
rows are contiguous, by step then position. `manifest["diffusion"]` records the block, the
feature map's grid, the steps, the number of denoising steps, the scheduler and the seed;
`contexts.safetensors` holds, for the rows of one image, their `pos`, `step` and `position_yx`
[R, 2]. Shards and manifest are written atomically; a killed capture resumes from the last
finished shard when run again with the same inputs (the fingerprint includes a checksum of the
conditioning and the starting latents).

Capture at SDXL scale needs this: the paper (Surkov et al. 2024) captures 1.5M prompts'
16 x 16 x 1280 deltas of each block, far more than memory holds.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from torch import Tensor

from saelab._paths import folder_lock, write_json, write_safetensors
from saelab.capture.diffusion import DeltaCapture
from saelab.capture.exclude import Exclusion
from saelab.errors import DataError
from saelab.models._diffusion import Conditioning, DiffusionModel, denoise
from saelab.steer.diffusion import check_steps
from saelab.store.reader import CONTEXTS, FORMAT, MANIFEST, ActivationStore, acts_name
from saelab.store.writer import DTYPES, RowAccumulator, flush_shard, prepare_folder

log = logging.getLogger(__name__)
NO_TOKEN = -1
"""`token` of a diffusion row."""


def capture_deltas_to_store(model: DiffusionModel, block: str, cond: Conditioning,
                            latents: Tensor, n_steps: int, out: str | Path, *,
                            steps: list[int] | None = None, batch_images: int = 8,
                            shard_rows: int = 1 << 16, dtype: str = "float32", seed: int = 0,
                            overwrite: bool = False) -> ActivationStore:
    """Denoise `latents` [N, C, H, W] in batches of `batch_images` and write the delta of
    `block` at `steps` (None: every step) into a store at `out`."""
    out = Path(out)
    if dtype not in DTYPES:
        raise DataError(f"unknown store dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    chosen = check_steps(steps, n_steps) or list(range(n_steps))
    n = latents.shape[0]
    if n < 1 or cond.n_images != n:
        raise DataError(f"{n} starting latents and {cond.n_images} conditionings: give one "
                        f"conditioning per image, at least one image")
    key = f"{block}:delta"
    fingerprint = {"model": model.name, "hookpoints": [key], "diffusion": True,
                   "steps": chosen, "n_steps": n_steps, "n_images": n, "dtype": dtype,
                   "seed": seed, "inputs_sha256": _sha256(cond, latents)}
    with folder_lock(out, "saelab diffusion capture"):
        manifest = prepare_folder(out, fingerprint, overwrite)
        if manifest is not None and manifest.get("complete"):
            log.info("store %s is already complete", out)
            return ActivationStore(out)
        if manifest is None:
            manifest = _new_manifest(out, fingerprint, model, block)
        acc = RowAccumulator([key], manifest["stats"])
        for start in range(manifest["contexts_done"], n, batch_images):
            stop = min(n, start + batch_images)
            acc.add(_batch_rows(model, block, cond, latents, n_steps, chosen, start, stop,
                                seed, DTYPES[dtype], manifest))
            if manifest["context_len"] is None:  # the first batch tells the grid
                grid = manifest["diffusion"]["grid"]
                manifest["context_len"] = len(chosen) * grid[0] * grid[1]
                write_contexts(out, chosen, grid)
            if acc.rows >= shard_rows or stop == n:
                flush_shard(out, manifest, acc, Exclusion([], None), contexts_done=stop)
        manifest["complete"] = True
        write_json(out / MANIFEST, manifest)
    return ActivationStore(out)


def _batch_rows(model: DiffusionModel, block: str, cond: Conditioning, latents: Tensor,
                n_steps: int, steps: list[int], start: int, stop: int, seed: int,
                dtype: torch.dtype, manifest: dict) -> dict[str, Tensor]:
    """The rows of images [start, stop): by image, then step, then position."""
    with DeltaCapture(model.unet, block, steps) as cap:
        denoise(model, cond.rows(start, stop), latents[start:stop], n_steps, seed=seed + start)
    cap.rows()  # refuses steps that never ran
    acts_BSPC = torch.stack([cap.captured[s] for s in steps], dim=1)  # [B, S, P, C]
    b, s, p, c = acts_BSPC.shape
    if not torch.isfinite(acts_BSPC).all():
        raise DataError(f"non-finite deltas (NaN or inf) of {block!r} in images "
                        f"{start}-{stop - 1}; check the model's dtype and inputs")
    key = f"{block}:delta"
    manifest["d"][key] = c
    manifest["diffusion"]["grid"] = list(cap.grid or ())
    return {acts_name(key): acts_BSPC.reshape(b * s * p, c).to(dtype),
            "ctx": torch.arange(start, stop).repeat_interleave(s * p),
            "pos": torch.arange(p, dtype=torch.int32).repeat(b * s),
            "token": torch.full((b * s * p,), NO_TOKEN, dtype=torch.long),
            "step": torch.tensor(steps).repeat_interleave(p).repeat(b)}


def _new_manifest(out: Path, fingerprint: dict, model: DiffusionModel, block: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"format": FORMAT, "version": 1, "model": model.name, "model_hub_id": None,
                "hookpoints": fingerprint["hookpoints"], "d": {}, "dtype": fingerprint["dtype"],
                "context_len": None, "n_contexts": fingerprint["n_images"], "contexts_done": 0,
                "complete": False, "shards": [], "stats": {}, "excluded_rows": 0,
                "exclusion": Exclusion([], None).to_json(),
                "diffusion": {"block": block, "site": "delta", "steps": fingerprint["steps"],
                              "n_steps": fingerprint["n_steps"], "seed": fingerprint["seed"],
                              "scheduler": type(model.scheduler).__name__, "grid": None},
                "config": fingerprint}
    write_json(out / MANIFEST, manifest)
    return manifest


def _sha256(cond: Conditioning, latents: Tensor) -> str:
    h = hashlib.sha256()
    for t in [cond.text_NSE, latents, *(cond.added or {}).values()]:
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def write_contexts(out: Path, steps: list[int], grid: tuple[int, int]) -> None:
    """`contexts.safetensors`: `pos`, `step` and `position_yx` of the rows of one image."""
    p = grid[0] * grid[1]
    pos = torch.arange(p).repeat(len(steps))
    write_safetensors(out / CONTEXTS, {
        "pos": pos, "step": torch.tensor(steps).repeat_interleave(p),
        "position_yx": torch.stack([pos // grid[1], pos % grid[1]], dim=1)})
