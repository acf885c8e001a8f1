"""Top-activating examples per latent, collected in one streaming pass with bounded memory.

`collect_top_examples` encodes batches of activations and keeps, for every latent, the `n_top`
largest positive codes and the global row ids they came from, together with firing counts, the
maximum activation and a histogram of the positive activations. Memory is O(n_latents * (n_top +
n_bins)) for the running state plus O(B * n_latents) for one batch's codes, whatever the number
of rows.

Histogram bins: one set of log10-spaced edges shared by every latent (so `hist_edges` is
[n_bins + 1]). Their range is `hist_range` if given; otherwise it is decided once, from the first
batch with any positive code: the top edge is 10x that batch's largest code and the range spans
`DEFAULT_DECADES` decades below it. Codes below the lowest edge are counted in the first bin and
codes above the highest edge in the last, so every positive code is counted exactly once and
`hist_counts.sum(1) == fire_counts`. The exact per-latent maximum is in `max_act`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor
from tqdm.auto import tqdm

from saelab._paths import write_safetensors
from saelab.errors import ConfigError, DataError, FormatError

log = logging.getLogger(__name__)

DEFAULT_DECADES = 5.0
"""Width, in decades, of the histogram range decided from the first batch."""

_TENSOR_FIELDS = ("values", "row_ids", "fire_counts", "max_act", "hist_counts", "hist_edges")


class TopExamples(NamedTuple):
    """Top-activating examples and activation statistics of every latent of a dictionary."""

    values: Tensor
    """Float32 [n_latents, n_top]: the largest positive codes of each latent, descending; 0 in
    the slots past the number of rows on which the latent fired."""
    row_ids: Tensor
    """Int64 [n_latents, n_top]: global row id of each value in `values`; -1 in empty slots."""
    fire_counts: Tensor
    """Int64 [n_latents]: number of rows on which the latent's code was > 0."""
    n_rows: int
    """Number of rows seen (firing frequency = fire_counts / n_rows)."""
    max_act: Tensor
    """Float32 [n_latents]: the largest code of each latent (0 if it never fired)."""
    hist_counts: Tensor
    """Int64 [n_latents, n_bins]: histogram of each latent's positive codes over `hist_edges`
    (the first and last bins also hold the codes below and above the range)."""
    hist_edges: Tensor
    """Float64 [n_bins + 1]: bin edges shared by all latents, log10-spaced, increasing."""

    def save(self, path: str | os.PathLike) -> Path:
        """Write as one safetensors file (atomically); `n_rows` goes into the metadata."""
        tensors = {name: getattr(self, name).detach().cpu() for name in _TENSOR_FIELDS}
        write_safetensors(path, tensors, metadata={"format": "saelab.top_examples",
                                                   "n_rows": str(self.n_rows)})
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TopExamples:
        """Read a file written by `save`; a FormatError if it is missing or not one."""
        path = Path(path)
        if not path.is_file():
            raise FormatError(f"top-examples file {path} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                names = list(f.keys())
                tensors = {name: f.get_tensor(name) for name in names}
        except (SafetensorError, OSError, ValueError) as e:
            raise FormatError(f"{path} is not a readable safetensors file: {e}") from None
        missing = [n for n in _TENSOR_FIELDS if n not in tensors]
        if missing or "n_rows" not in metadata:
            raise FormatError(f"{path} is not a saelab top-examples file (missing "
                              f"{', '.join(missing) or 'n_rows metadata'})")
        return cls(n_rows=int(metadata["n_rows"]), **{n: tensors[n] for n in _TENSOR_FIELDS})


class _State:
    """Running state of the streaming pass (all tensors on the encoding device)."""

    def __init__(self, n_latents: int, n_top: int, n_bins: int, device: torch.device):
        self.values = torch.full((n_latents, n_top), -math.inf, device=device)
        self.row_ids = torch.full((n_latents, n_top), -1, dtype=torch.int64, device=device)
        self.fire_counts = torch.zeros(n_latents, dtype=torch.int64, device=device)
        self.max_act = torch.zeros(n_latents, device=device)
        self.hist_counts = torch.zeros(n_latents, n_bins, dtype=torch.int64, device=device)
        self.edges: Tensor | None = None
        self.n_rows = 0


def log_edges(lo: float, hi: float, n_bins: int) -> Tensor:
    """`n_bins + 1` log10-spaced edges from `lo` to `hi` (float64)."""
    if not 0 < lo < hi:
        raise ConfigError(f"hist_range: need 0 < low < high, got ({lo}, {hi})")
    return torch.logspace(math.log10(lo), math.log10(hi), n_bins + 1, dtype=torch.float64)


def _positive(codes_BL: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The positive codes of a batch as (row, latent, value) triples."""
    rows, lats = (codes_BL > 0).nonzero(as_tuple=True)
    return rows, lats, codes_BL[rows, lats]


def _by_latent(lats: Tensor, vals: Tensor) -> Tensor:
    """The order of the entries grouped by latent, each latent's values descending."""
    if lats.device.type == "cpu":  # numpy's sort: see saelab.ops.sparse on torch's CPU sorts
        return torch.from_numpy(np.lexsort((-vals.numpy(), lats.numpy())))
    order = torch.argsort(vals, descending=True, stable=True)
    return order[torch.argsort(lats[order], stable=True)]


def _merge_top(state: _State, rows: Tensor, lats: Tensor, vals: Tensor,
               row_ids_B: Tensor) -> None:
    """Merge one batch's positive codes (row, latent, value) into the running top-n per latent
    and its maximum: each latent's best n of the batch are taken from the positive entries
    alone (the codes of a sparse dictionary are mostly zero), then merged with the running
    ones."""
    n_latents, n_top = state.values.shape
    order = _by_latent(lats, vals)
    lats, rows, vals = lats[order], rows[order], vals[order]
    counts = torch.bincount(lats, minlength=n_latents)
    rank = torch.arange(lats.numel(), device=lats.device) - (torch.cumsum(counts, 0)
                                                             - counts)[lats]
    keep = rank < n_top
    lats, rank = lats[keep], rank[keep]
    batch_vals = torch.full_like(state.values, -math.inf)
    batch_ids = torch.full_like(state.row_ids, -1)
    batch_vals[lats, rank] = vals[keep].to(batch_vals.dtype)
    batch_ids[lats, rank] = row_ids_B[rows[keep]]
    state.max_act = torch.maximum(state.max_act, batch_vals[:, 0])
    cand_vals = torch.cat([state.values, batch_vals], dim=1)  # [L, 2 n_top]
    cand_ids = torch.cat([state.row_ids, batch_ids], dim=1)
    state.values, best = cand_vals.topk(n_top, dim=1)
    state.row_ids = cand_ids.gather(1, best)


def _update_hist(state: _State, lats: Tensor, vals: Tensor, n_bins: int) -> None:
    """Count the positive codes of a batch (latent, value pairs): firing counts and
    histogram."""
    if lats.numel() == 0:
        return
    if state.edges is None:
        hi = 10.0 * vals.max().item()
        state.edges = log_edges(hi / 10**DEFAULT_DECADES, hi, n_bins).to(vals.device)
    state.fire_counts += torch.bincount(lats, minlength=state.fire_counts.numel())
    # Bin i holds edges[i] <= v < edges[i+1]; out-of-range codes go to the end bins.
    bins = torch.bucketize(vals.double(), state.edges[1:-1], right=True)
    flat = lats * n_bins + bins
    state.hist_counts += torch.bincount(flat, minlength=state.hist_counts.numel()).view_as(
        state.hist_counts)


def _check_batch(acts: Tensor, row_ids: Tensor, d_in: int) -> None:
    if acts.ndim != 2 or acts.shape[1] != d_in:
        raise DataError(f"activations must be [B, d_in={d_in}], got {list(acts.shape)}")
    if row_ids.shape != (acts.shape[0],):
        raise DataError(f"row_ids must be [B={acts.shape[0]}], got {list(row_ids.shape)}")
    if not torch.isfinite(acts).all():
        raise DataError(f"NaN or inf activations in the batch of rows {row_ids[:3].tolist()}...")


def _device_dtype(dictionary: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(iter(dictionary.parameters()), None)
    if param is None:
        return torch.device("cpu"), torch.float32
    return param.device, param.dtype


@torch.no_grad()
def collect_top_examples(dictionary, batches: Iterable[tuple[Tensor, Tensor]], n_top: int = 20,
                         n_bins: int = 40, progress: bool = False,
                         hist_range: tuple[float, float] | None = None) -> TopExamples:
    """Top-activating rows and activation statistics of every latent, in one streaming pass.

    `batches` yields `(acts [B, d_in], row_ids [B] int64)`; row ids are global row numbers the
    caller maps back to text. Only positive codes count as examples. `hist_range` fixes the
    (low, high) of the log-spaced histogram bins; None decides it from the first batch (see the
    module docstring).
    """
    if n_top < 1 or n_bins < 1:
        raise ConfigError(f"n_top and n_bins must be >= 1, got n_top={n_top}, n_bins={n_bins}")
    device, dtype = _device_dtype(dictionary)
    state = _State(dictionary.n_latents, n_top, n_bins, device)
    if hist_range is not None:
        state.edges = log_edges(float(hist_range[0]), float(hist_range[1]), n_bins).to(device)
    for acts, row_ids in tqdm(batches, disable=not progress, desc="top examples", unit="batch"):
        _check_batch(acts, row_ids, dictionary.d_in)
        codes_BL = dictionary.encode(acts.to(device=device, dtype=dtype)).float()
        rows, lats, vals = _positive(codes_BL)
        _merge_top(state, rows, lats, vals, row_ids.to(device=device, dtype=torch.int64))
        _update_hist(state, lats, vals, n_bins)
        state.n_rows += acts.shape[0]
    return _finish(state, n_bins)


def _finish(state: _State, n_bins: int) -> TopExamples:
    """Turn the running state into a TopExamples on the CPU."""
    if state.n_rows == 0:
        log.warning("collect_top_examples saw no rows")
    edges = state.edges if state.edges is not None else log_edges(1e-4, 1e1, n_bins)
    empty = state.row_ids < 0
    return TopExamples(values=state.values.masked_fill(empty, 0.0).cpu(),
                       row_ids=state.row_ids.cpu(), fire_counts=state.fire_counts.cpu(),
                       n_rows=state.n_rows, max_act=state.max_act.cpu(),
                       hist_counts=state.hist_counts.cpu(), hist_edges=edges.cpu())
