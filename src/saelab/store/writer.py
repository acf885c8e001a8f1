"""Writing an activation store from a model: capture, filter, shard, resume.

The folder holds `manifest.json`, `contexts.safetensors` (the token ids of every context, so that
interpretation can show the text behind a row) and shards `NNNNN.safetensors` with, for every
hookpoint, `acts/<key>` [rows, d], and per row `ctx` (context index), `pos` and `token`.
Shards and manifest are written atomically, and the manifest only ever names finished shards: a
killed capture resumes from the last finished shard when run again with the same settings.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import shutil
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from saelab._paths import LOCK_FILE, folder_lock, write_json, write_safetensors
from saelab.capture import BATCH_CONTEXTS, Capture
from saelab.capture.exclude import NORM_FACTOR, Exclusion
from saelab.errors import DataError, OutputExistsError
from saelab.models import hub_id
from saelab.store import ranks
from saelab.store.reader import (CONTEXTS, FORMAT, MANIFEST, ActivationStore, acts_name,
                                 file_sha256, is_store, read_manifest)

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _sha256(data: bytes | Path) -> str:
    return file_sha256(data) if isinstance(data, Path) else hashlib.sha256(data).hexdigest()


SHARD_FILE = re.compile(r"(r\d+-)?\d{5}\.safetensors")
"""Name of a shard file (NNNNN.safetensors; rR-NNNNN.safetensors when written by rank R of a
multi-process capture)."""


def store_entries(out: Path) -> list[Path]:
    """What a capture writes in its folder: the manifest, the contexts, the shards, and the
    temporaries an interrupted atomic write leaves (`.NAME.*.tmp`, `.NAME.old-PID`). The lock
    file is not among them: it stays while a capture may wait on it."""
    if not out.is_dir():
        return []
    return [p for p in out.iterdir() if p.name in (MANIFEST, CONTEXTS)
            or SHARD_FILE.fullmatch(p.name) or ranks.PROGRESS_FILE.fullmatch(p.name)
            or (p.name.startswith(".") and (p.name.endswith(".tmp") or ".old-" in p.name))]


def prepare_folder(out: Path, fingerprint: dict, overwrite: bool) -> dict | None:
    """The manifest to resume from, None for a fresh start. A store captured with other
    settings is refused unless `overwrite`; files of other programs are refused unless
    `overwrite`, and kept even then: overwrite removes only what a capture writes."""
    if is_store(out):
        manifest = read_manifest(out)
        if manifest.get("config") == fingerprint and not overwrite:
            return manifest
        if not overwrite:
            raise OutputExistsError(f"{out} already holds an activation store captured with "
                                    f"other settings; pass overwrite (--overwrite) to replace "
                                    f"it, or choose another folder")
    else:
        ours = set(store_entries(out))
        foreign = sorted(p.name for p in out.iterdir() if p not in ours and p.name != LOCK_FILE)
        if foreign and not overwrite:
            raise OutputExistsError(f"{out} holds files that are not an activation store "
                                    f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}"
                                    f"); choose an empty folder, or pass overwrite "
                                    f"(--overwrite) to capture beside them (they are kept)")
    for p in store_entries(out):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return None


class RowAccumulator:
    """Rows waiting to be written, plus running statistics per hookpoint."""

    def __init__(self, keys: list[str], stats: dict):
        self.keys = keys
        self.parts: list[dict[str, Tensor]] = []
        self.rows = 0
        self.stats = stats

    def add(self, rows: dict[str, Tensor]) -> None:
        self.parts.append(rows)
        self.rows += rows["ctx"].shape[0]
        for key in self.keys:
            a = rows[acts_name(key)].double()
            s = self.stats.setdefault(key, {"count": 0, "sum_sq_norm": 0.0,
                                            "sum": [0.0] * a.shape[1]})
            s["count"] += a.shape[0]
            s["sum_sq_norm"] += float(a.pow(2).sum())
            s["sum"] = (torch.tensor(s["sum"], dtype=torch.float64) + a.sum(0)).tolist()

    def take(self) -> dict[str, Tensor]:
        out = {n: torch.cat([p[n] for p in self.parts]) for n in self.parts[0]}
        self.parts, self.rows = [], 0
        return out


def _rows_of_batch(acts: dict[str, Tensor], tokens: Tensor, first_ctx: int,
                   exclusion: Exclusion, dtype: torch.dtype) -> tuple[dict[str, Tensor], int]:
    """Kept rows of one batch of contexts as flat tensors, and how many were dropped."""
    keep = exclusion.keep_mask(tokens, acts)  # [B, T]
    ctx, pos = keep.nonzero(as_tuple=True)
    rows = {acts_name(k): a[ctx, pos].to(dtype) for k, a in acts.items()}
    rows.update(ctx=(ctx + first_ctx).long(), pos=pos.int(), token=tokens[ctx, pos].long())
    return rows, int((~keep).sum())


def capture_to_store(model: nn.Module, tokens: Tensor, hookpoints: list[str], out: str | Path, *,
                     model_name: str, doc_ids: Tensor | None = None,
                     special_ids: list[int] | None = None, norm_factor: float | None = NORM_FACTOR,
                     batch_contexts: int = BATCH_CONTEXTS, shard_rows: int = 1 << 16, dtype: str = "float32",
                     overwrite: bool = False, progress: bool = True,
                     gradients: bool = False) -> ActivationStore:
    """Capture the activations of `hookpoints` for every context in `tokens` [N, T] into a store.

    Special tokens and rows whose norm is above `norm_factor` x the median are left out (see
    saelab.capture.exclude). Returns the finished store; a rerun with the same arguments resumes
    an interrupted capture or returns the finished one at once. With `gradients` (one hookpoint,
    a causal LM), the store also holds d(next-token loss)/d(activation) under `<key>.grad`, for
    gradient-guided dictionaries (see saelab.capture.gradients); the forward then runs in full.

    The model may sit on any device (each batch of tokens is moved to it, the activations back to
    the CPU). Under a torch.distributed process group (`torchrun`), every rank calls this with
    the same arguments and captures its own span of the contexts into the one store (see
    saelab.store.ranks).
    """
    out = Path(out)
    if dtype not in DTYPES:
        raise DataError(f"unknown store dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    rank, world = ranks.current()
    lock = folder_lock(out, "saelab capture") if rank == 0 else contextlib.nullcontext()
    with lock, _capturer(model, hookpoints, gradients) as cap:
        fingerprint = {"model": model_name, "hookpoints": _keys(cap), "context_len": tokens.shape[1],
                       "n_contexts": tokens.shape[0], "dtype": dtype,
                       "tokens_sha256": _sha256(tokens.contiguous().numpy().tobytes()),
                       "special_ids": sorted(special_ids or []), "norm_factor": norm_factor}
        if gradients:
            fingerprint["gradients"] = True
        if world > 1:
            fingerprint["world_size"] = world
        manifest = ranks.together(
            lambda: _start(cap, tokens, doc_ids, out, fingerprint, overwrite, batch_contexts,
                           calibrate=world > 1), world, only_rank0=True)
        if world > 1:
            manifest = read_manifest(out)
        if manifest.get("complete"):
            log.info("store %s is already complete", out)
            return ActivationStore(out)
        if world == 1:
            if manifest["contexts_done"]:
                log.info("resuming capture into %s at context %d", out, manifest["contexts_done"])
            _capture_loop(cap, tokens, out, manifest, DTYPES[dtype], batch_contexts, shard_rows,
                          progress, span=(manifest["contexts_done"], tokens.shape[0]))
            manifest["complete"] = True
            manifest["contexts_done"] = tokens.shape[0]
            write_json(out / MANIFEST, manifest)
        else:
            ranks.together(lambda: _capture_span(cap, tokens, out, manifest, rank, world,
                                                 DTYPES[dtype], batch_contexts, shard_rows,
                                                 progress), world)
            ranks.together(lambda: ranks.merge(out, manifest, world, tokens.shape[0]), world,
                           only_rank0=True)
    return ActivationStore(out)


def _start(cap, tokens: Tensor, doc_ids: Tensor | None, out: Path, fingerprint: dict,
           overwrite: bool, batch_contexts: int, calibrate: bool) -> dict:
    """Rank 0: the manifest to resume from, or a new store's. With `calibrate` (several
    ranks), the exclusion rule is fixed from the first global batch before any rank starts."""
    manifest = prepare_folder(out, fingerprint, overwrite)
    if manifest is None:
        manifest = _new_store(out, tokens, doc_ids, fingerprint)
    exclusion = Exclusion(**manifest["exclusion"])
    if calibrate and not manifest.get("complete") and exclusion.norm_factor is not None \
            and not exclusion.norm_threshold:
        batch = tokens[:batch_contexts]
        exclusion.calibrate(batch, _plain(_run(cap, batch, 0)))
        manifest["exclusion"] = exclusion.to_json()
        write_json(out / MANIFEST, manifest)
    return manifest


def _capture_span(cap, tokens: Tensor, out: Path, manifest: dict, rank: int, world: int,
                  dtype: torch.dtype, batch_contexts: int, shard_rows: int,
                  progress: bool) -> None:
    """One rank's share of a multi-process capture, resumable from its progress file."""
    lo, hi = ranks.span(tokens.shape[0], rank, world)
    state = ranks.read_progress(out, manifest, lo, hi, rank)
    if state["contexts_done"] > lo:
        log.info("rank %d resumes at context %d of [%d, %d)", rank, state["contexts_done"], lo, hi)
    _capture_loop(cap, tokens, out, state, dtype, batch_contexts, shard_rows,
                  progress and rank == 0, span=(state["contexts_done"], hi),
                  prefix=ranks.shard_prefix(rank), state_file=ranks.progress_path(out, rank))
    state["contexts_done"] = hi
    ranks.save_progress(out, state)


def _capturer(model: nn.Module, hookpoints: list[str], gradients: bool):
    """Capture (activations), or GradientCapture (activation and loss gradient, one hookpoint)."""
    if not gradients:
        return Capture(model, hookpoints)
    from saelab.capture.gradients import GradientCapture

    if len(hookpoints) != 1:
        raise DataError(f"gradients=True captures one hookpoint (the activation and its loss "
                        f"gradient), got {len(hookpoints)}: {', '.join(map(str, hookpoints))}")
    return GradientCapture(model, hookpoints[0])


def _new_store(out: Path, tokens: Tensor, doc_ids: Tensor | None, fingerprint: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    ctx = {"tokens": tokens.long()}
    if doc_ids is not None:
        ctx["doc_ids"] = doc_ids.long()
    write_safetensors(out / CONTEXTS, ctx)
    exclusion = Exclusion(fingerprint["special_ids"], fingerprint["norm_factor"])
    manifest = {"format": FORMAT, "version": 1, "model": fingerprint["model"],
                "model_hub_id": hub_id(fingerprint["model"]),  # for SAELens' model_name
                "hookpoints": fingerprint["hookpoints"], "d": {}, "dtype": fingerprint["dtype"],
                "context_len": fingerprint["context_len"],
                "n_contexts": fingerprint["n_contexts"], "contexts_done": 0, "complete": False,
                "shards": [], "stats": {}, "excluded_rows": 0,
                "exclusion": exclusion.to_json(), "config": fingerprint}
    write_json(out / MANIFEST, manifest)
    return manifest


def _capture_loop(cap: Capture, tokens: Tensor, out: Path, state: dict, dtype: torch.dtype,
                  batch_contexts: int, shard_rows: int, progress: bool, span: tuple[int, int],
                  prefix: str = "", state_file: Path | None = None) -> None:
    """Capture contexts [span) into shards, recording each in `state` (the manifest, or a rank's
    progress) saved to `state_file` (default: the manifest)."""
    exclusion = Exclusion(**state["exclusion"])
    acc = RowAccumulator(_keys(cap), state["stats"])
    done, n = span
    T = tokens.shape[1]
    bar = tqdm(total=(n - span[0]) * T, unit="tok", unit_scale=True, desc="capture",
               disable=not progress)
    for start in range(done, n, batch_contexts):
        batch = tokens[start:min(n, start + batch_contexts)]
        acts = _run(cap, batch, start)
        for key, a in acts.items():
            state["d"][key] = a.shape[-1]
        exclusion.calibrate(batch, _plain(acts))
        rows, dropped = _rows_of_batch(acts, batch, start, exclusion, dtype)
        acc.add(rows)
        state["excluded_rows"] += dropped
        bar.update(batch.numel())
        last = start + len(batch) >= n
        if acc.rows >= shard_rows or (last and acc.rows):
            flush_shard(out, state, acc, exclusion, contexts_done=start + len(batch),
                        prefix=prefix, state_file=state_file)
    bar.close()


def _keys(cap) -> list[str]:
    """The store keys a capturer writes (activation keys, and `.grad` keys for gradients)."""
    return list(cap.keys) if hasattr(cap, "keys") else [hp.key for hp in cap.hookpoints]


def _run(cap, batch: Tensor, start: int) -> dict[str, Tensor]:
    """One forward of `batch` on the model's device; the activations on the CPU, checked."""
    device = model_device(cap.model)
    acts = {k: a.cpu() for k, a in cap.run(input_ids=batch.to(device)).items()}
    for key, a in acts.items():
        if not torch.isfinite(a).all():
            raise DataError(f"non-finite activations (NaN or inf) at hookpoint {key!r} in "
                            f"contexts {start}-{start + len(batch) - 1}; check the model's "
                            f"dtype and inputs")
    return acts


def _plain(acts: dict[str, Tensor]) -> dict[str, Tensor]:
    """The activations without the loss gradients (the exclusion rule is on activations)."""
    return {k: a for k, a in acts.items() if not k.endswith(".grad")}


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (the CPU for a model without parameters)."""
    first = next(model.parameters(), None)
    return torch.device("cpu") if first is None else first.device


def flush_shard(out: Path, manifest: dict, acc: RowAccumulator, exclusion: Exclusion,
                contexts_done: int, prefix: str = "", state_file: Path | None = None) -> None:
    """Write the waiting rows as the next shard (`PREFIX` + NNNNN.safetensors), then the
    manifest (or the rank's progress file, `state_file`) that names it."""
    rows = acc.take()
    name = f"{prefix}{len(manifest['shards']):05d}.safetensors"
    write_safetensors(out / name, rows)
    manifest["shards"].append({"file": name, "rows": int(rows["ctx"].shape[0]),
                               "bytes": (out / name).stat().st_size,
                               "sha256": _sha256(out / name)})
    manifest["contexts_done"] = contexts_done
    manifest["exclusion"] = exclusion.to_json()
    manifest["stats"] = acc.stats
    write_json(state_file or out / MANIFEST, manifest)
