"""Reading an activation store: manifest checks, shards one at a time, shuffled batches."""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from saelab.errors import ConfigError, DataError, FormatError
from saelab.store.shuffle import ShuffledBatches

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CONTEXTS = "contexts.safetensors"
FORMAT = "saelab-activations"
SAFETENSORS_DTYPES = {"F32": torch.float32}
"""Stored dtypes read straight into a float32 buffer (others go through read_shard)."""


def acts_name(key: str) -> str:
    """Tensor name of a hookpoint's activations inside a shard."""
    return f"acts/{key}"


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def is_store(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise FormatError(f"{path} is not an activation store: no {MANIFEST} in it") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{path / MANIFEST} is corrupt ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise FormatError(f"{path / MANIFEST} is not a saelab activation store manifest")
    return manifest


class ActivationStore:
    """A folder of activation shards. Memory stays bounded: one shard (or one shuffle buffer)
    is in memory at a time.

    With `verify` (the default) each shard's bytes are checked against the sha256 the capture
    recorded in the manifest the first time this object reads it, so an altered or corrupted
    shard is refused before any of its rows reach training, evaluation or a dashboard (the cost,
    one extra read of the file from the page cache and the hash, is measured in
    bench/store_verify.py). `verify()` checks every shard at once (`saelab check STORE`)."""

    def __init__(self, path: str | Path, verify: bool = True):
        self.path = Path(path)
        self.verify_reads = verify
        self.verified: set[int] = set()
        """Indices of the shards whose checksum this object has verified."""
        self.manifest = read_manifest(self.path)
        for shard in self.manifest["shards"]:
            file = self.path / shard["file"]
            if not file.is_file():
                raise FormatError(f"store {self.path}: shard {shard['file']} is missing")
            if file.stat().st_size != shard["bytes"]:
                raise FormatError(f"store {self.path}: shard {shard['file']} has "
                                  f"{file.stat().st_size} bytes, the manifest says "
                                  f"{shard['bytes']} (truncated or replaced)")

    def __repr__(self) -> str:
        return (f"ActivationStore({str(self.path)!r}, model={self.model!r}, "
                f"hookpoints={self.hookpoints}, rows={self.n_rows})")

    # --- what is in it ------------------------------------------------------------------
    @property
    def model(self) -> str:
        return self.manifest["model"]

    @property
    def hookpoints(self) -> list[str]:
        return list(self.manifest["hookpoints"])

    @property
    def n_rows(self) -> int:
        return sum(s["rows"] for s in self.manifest["shards"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def require_complete(self, allow: bool, use: str) -> None:
        """Refuse to use (`use`: "training", ...) a store whose capture has not finished (still
        running, or killed), unless `allow`: then log a warning and go on with its rows."""
        if self.complete:
            return
        m = self.manifest
        done = f"{m.get('contexts_done', '?')} of {m.get('n_contexts', '?')}"
        if not allow:
            raise DataError(f"{self.path} is incomplete ({done} contexts captured): its capture "
                            f"is still running or was killed. Rerun the same `saelab capture` "
                            f"command to finish it, or allow an incomplete store for {use} "
                            f"(--allow-incomplete-store) to use the rows it has")
        log.warning("%s is incomplete (%s contexts): %s on the rows it has", self.path, done, use)

    def d(self, key: str) -> int:
        return int(self.manifest["d"][self.hookpoint(key)])

    def hookpoint(self, key: str | None = None) -> str:
        """`key` checked against the store, or when None the store's only hookpoint (a store
        captured with gradients holds `<key>` and `<key>.grad`: then `<key>`)."""
        if key is None:
            from saelab.capture.gradients import is_gradient_key

            acts = [k for k in self.hookpoints if not is_gradient_key(k)]
            if len(acts) != 1:
                raise ConfigError(f"store {self.path} holds several hookpoints "
                                  f"({', '.join(self.hookpoints)}); name one")
            return acts[0]
        if key not in self.hookpoints:
            raise ConfigError(f"store {self.path} has no hookpoint {key!r}; it holds "
                              f"{', '.join(self.hookpoints)}")
        return key

    def mean_squared_norm(self, key: str | None = None) -> float:
        s = self.manifest["stats"][self.hookpoint(key)]
        return s["sum_sq_norm"] / max(1, s["count"])

    def mean(self, key: str | None = None) -> Tensor:
        s = self.manifest["stats"][self.hookpoint(key)]
        return torch.tensor(s["sum"], dtype=torch.float64).div(max(1, s["count"])).float()

    # --- integrity ----------------------------------------------------------------------
    def verify_shard(self, i: int) -> None:
        """Refuse shard i (FormatError) if its bytes differ from the sha256 recorded at capture."""
        shard = self.manifest["shards"][i]
        expected = shard.get("sha256")
        if expected is None or i in self.verified:
            return
        file = self.path / shard["file"]
        try:
            actual = file_sha256(file)
        except OSError as e:
            raise FormatError(f"shard {file} is unreadable: {e}") from None
        if actual != expected:
            raise FormatError(f"store {self.path}: shard {shard['file']} does not match the "
                              f"checksum its capture recorded (sha256 {actual[:12]}..., "
                              f"expected {expected[:12]}...): its bytes were altered or "
                              f"corrupted. Capture the store again (saelab capture ... "
                              f"--overwrite); to read it anyway, open it with "
                              f"ActivationStore(path, verify=False)")
        self.verified.add(i)

    def verify(self) -> int:
        """Check every shard against its recorded sha256 and its row count against the manifest
        (FormatError at the first that differs); returns the number of shards checked."""
        for i in range(len(self.manifest["shards"])):
            self.verify_shard(i)
            self.read_shard(i, ["ctx"])  # the row ids: small, and their count is checked
        return len(self.manifest["shards"])

    def check_rows(self, i: int, tensors: list[Tensor]) -> None:
        """Refuse shard i when its tensors do not hold the rows the manifest says."""
        shard = self.manifest["shards"][i]
        for t in tensors:
            if t.shape[0] != shard["rows"]:
                raise FormatError(f"store {self.path}: the manifest says shard {shard['file']} "
                                  f"holds {shard['rows']} rows, the shard holds {t.shape[0]}: "
                                  f"the manifest was edited or belongs to another capture; "
                                  f"capture the store again (saelab capture ... --overwrite)")

    # --- reading ------------------------------------------------------------------------
    def read_shard(self, i: int, names: list[str]) -> list[Tensor]:
        """Tensors `names` of shard i (activations as float32)."""
        file = self.path / self.manifest["shards"][i]["file"]
        if self.verify_reads:
            self.verify_shard(i)
        try:
            with safe_open(str(file), framework="pt") as f:
                out = [f.get_tensor(n) for n in names]
        except (SafetensorError, OSError) as e:
            raise FormatError(f"shard {file} is unreadable (corrupt?): {e}") from None
        except KeyError as e:
            raise FormatError(f"shard {file} lacks tensor {e}") from None
        self.check_rows(i, out)
        return [t.float() if t.is_floating_point() else t for t in out]

    def read_shard_into(self, i: int, names: list[str], dest: tuple[Tensor, ...]) -> bool:
        """Read tensors `names` of shard i straight from the file into `dest` (no mapping, no
        intermediate copy). Returns False, writing nothing, when a tensor's stored dtype or
        shape differs from its destination (the caller then converts through `read_shard`)."""
        file = self.path / self.manifest["shards"][i]["file"]
        if self.verify_reads:
            self.verify_shard(i)
        try:
            with open(file, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
                spans = []
                for name, out in zip(names, dest):
                    entry = header[name]
                    if (SAFETENSORS_DTYPES.get(entry["dtype"]) != out.dtype
                            or list(entry["shape"]) != list(out.shape) or not out.is_contiguous()):
                        return False
                    begin, end = entry["data_offsets"]
                    if end - begin != out.numel() * out.element_size():
                        return False
                    spans.append((8 + n + begin, end - begin, out))
                for offset, size, out in spans:
                    f.seek(offset)
                    view = memoryview(out.numpy()).cast("B")
                    if f.readinto(view) != size:
                        raise FormatError(f"shard {file} is truncated")
        except KeyError as e:
            raise FormatError(f"shard {file} lacks tensor {e}") from None
        except (OSError, ValueError, struct.error) as e:
            raise FormatError(f"shard {file} is unreadable (corrupt?): {e}") from None
        return True

    def iter_rows(self, key: str | None = None, batch_size: int = 4096
                  ) -> Iterator[tuple[Tensor, Tensor]]:
        """Sequential (acts [b, d], row_ids [b]) batches over the whole store, in order."""
        name = acts_name(self.hookpoint(key))
        offset = 0
        for i, shard in enumerate(self.manifest["shards"]):
            (acts,) = self.read_shard(i, [name])
            for s in range(0, acts.shape[0], batch_size):
                chunk = acts[s:s + batch_size]
                yield chunk, torch.arange(offset + s, offset + s + chunk.shape[0])
            offset += shard["rows"]

    def row_index(self) -> dict[str, Tensor]:
        """Per-row metadata over the whole store: `ctx` (context index), `pos`, `token`."""
        parts = [self.read_shard(i, ["ctx", "pos", "token"])
                 for i in range(len(self.manifest["shards"]))]
        if not parts:
            return {n: torch.zeros(0, dtype=torch.long) for n in ("ctx", "pos", "token")}
        return {n: torch.cat([p[j] for p in parts]).long()
                for j, n in enumerate(("ctx", "pos", "token"))}

    def contexts(self) -> dict[str, Tensor]:
        """`tokens` [N_ctx, T] and `doc_ids` [N_ctx, T] of every captured context."""
        try:
            with safe_open(str(self.path / CONTEXTS), framework="pt") as f:
                return {n: f.get_tensor(n) for n in f.keys()}  # noqa: SIM118
        except (SafetensorError, OSError) as e:
            raise FormatError(f"{self.path / CONTEXTS} is unreadable: {e}") from None

    def shuffled(self, batch_size: int, key: str | None = None, target: str | None = None,
                 seed: int = 0, buffer_rows: int = 1 << 19) -> ShuffledBatches:
        """Shuffled batches of (acts,) or (acts, target acts) for training."""
        keys = [self.hookpoint(key)] + ([] if target is None else [self.hookpoint(target)])
        return self.shuffled_hookpoints(keys, batch_size, seed, buffer_rows)

    def shuffled_hookpoints(self, keys: list[str], batch_size: int, seed: int = 0,
                            buffer_rows: int = 1 << 19) -> ShuffledBatches:
        """Shuffled batches holding one row-aligned tensor per hookpoint of `keys`, in that
        order. The row order depends only on the seed, the shard sizes and the buffer, so a
        batch holds the same rows whichever hookpoints are read (one pass over the shards feeds
        dictionaries of several hookpoints)."""
        names = [acts_name(self.hookpoint(k)) for k in keys]
        sizes = [s["rows"] for s in self.manifest["shards"]]
        if sum(sizes) < batch_size:
            raise ConfigError(f"store {self.path} holds {sum(sizes)} rows, fewer than one batch "
                              f"of {batch_size}")
        return ShuffledBatches(sizes, lambda i: tuple(self.read_shard(i, names)), batch_size,
                               buffer_rows, seed,
                               load_into=lambda i, dest: self.read_shard_into(i, names, dest))
