"""Affine maps between two models' residual streams, fitted by (ridge) least squares.

Chen et al. 2025 ("Transferring Linear Features Across Language Models With Model Stitching")
stitch a small and a large model of one family with two affine maps, up (small -> large) and
down (large -> small), each trained by gradient descent on the MSE between the mapped and the
true residual stream at a pair of layers. No code of the authors could be found (searched by
title and authors on 2026-12-03), so saelab follows the paper's text. It departs in one
respect: the least-squares problem has a closed form, so saelab solves it exactly (normal
equations in float64, centred data, so the bias is mean_y - W mean_x) instead of by Adam, with an
optional ridge term. `ridge` is relative: the penalty added to the input covariance is
ridge x (its mean eigenvalue) x I, so one value means the same for streams of any scale.

Figures (`Fit.figures`) are measured on rows the map was not fitted on (a split by document):
- `r2`: 1 - sum of squared errors / total variance of the true target around its mean (the
  explained variance, 1 - FVU, summed over dimensions);
- `cosine`: mean cosine similarity of mapped and true rows.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file
from torch import Tensor

from saelab._paths import atomic_path, write_safetensors
from saelab.errors import ConfigError, DataError, FormatError

MAP_FILE = "map.safetensors"
INFO_FILE = "map.json"


@dataclass
class AffineMap:
    """y ≈ x W^T + b, from a d_in-wide stream to a d_out-wide one."""

    weight: Tensor
    """W [d_out, d_in]."""
    bias: Tensor
    """b [d_out]."""

    @property
    def d_in(self) -> int:
        return self.weight.shape[1]

    @property
    def d_out(self) -> int:
        return self.weight.shape[0]

    def __call__(self, x: Tensor) -> Tensor:
        """Map rows x [N, d_in] to [N, d_out]."""
        if x.shape[-1] != self.d_in:
            raise ConfigError(f"the map reads {self.d_in}-wide rows, got {x.shape[-1]}-wide "
                              f"ones: it was fitted between other hookpoints or models")
        return x.to(self.weight) @ self.weight.T + self.bias

    def direction(self, v: Tensor) -> Tensor:
        """Map a direction (a difference of two rows, a steering vector) [.., d_in]: the linear
        part only, W v (the bias cancels in a difference)."""
        return v.to(self.weight) @ self.weight.T


class Figures(NamedTuple):
    """How well a map predicts held-out rows."""

    r2: float
    """1 - SSE / total variance of the targets (explained variance)."""
    cosine: float
    """Mean cosine similarity of mapped and true rows."""
    rows: int
    """Held-out rows measured."""


def fit_affine(x: Tensor, y: Tensor, ridge: float = 0.0) -> AffineMap:
    """Least-squares affine map from rows x [N, d_in] to rows y [N, d_out] (float64 normal
    equations on centred data; `ridge` relative to the mean eigenvalue of x's covariance)."""
    if x.shape[0] != y.shape[0]:
        raise ConfigError(f"x and y must have the same rows, got {x.shape[0]} and {y.shape[0]}")
    if ridge < 0 or not math.isfinite(ridge):
        raise ConfigError(f"ridge must be a finite number >= 0, got {ridge}")
    n, d_in = x.shape
    if n <= d_in and ridge == 0:
        raise DataError(f"an exact least-squares map of {d_in}-wide rows needs more than {d_in} "
                        f"rows, got {n}: give more text, or set a ridge > 0")
    mean_x, mean_y = x.double().mean(0), y.double().mean(0)
    cov_xx = torch.zeros(d_in, d_in, dtype=torch.float64)
    cov_xy = torch.zeros(d_in, y.shape[1], dtype=torch.float64)
    for start in range(0, n, 16384):  # chunks: float64 copies of the whole data are not needed
        xc = x[start:start + 16384].double() - mean_x
        cov_xx += xc.T @ xc
        cov_xy += xc.T @ (y[start:start + 16384].double() - mean_y)
    cov_xx /= n
    cov_xy /= n
    if ridge:
        cov_xx += torch.eye(d_in, dtype=torch.float64) * ridge * cov_xx.diagonal().mean()
    w_T = torch.linalg.lstsq(cov_xx, cov_xy).solution  # [d_in, d_out]; lstsq: safe if singular
    weight = w_T.T.contiguous()
    bias = mean_y - weight @ mean_x
    return AffineMap(weight.float(), bias.float())


@torch.no_grad()
def measure(f: AffineMap, x: Tensor, y: Tensor) -> Figures:
    """Held-out `Figures` of map `f` on rows x -> y."""
    sse = sq = 0.0
    sum_y = torch.zeros(y.shape[1], dtype=torch.float64)
    cos = 0.0
    for start in range(0, x.shape[0], 16384):
        yb = y[start:start + 16384].double()
        pred = f(x[start:start + 16384]).double()
        sse += float((pred - yb).pow(2).sum())
        sq += float(yb.pow(2).sum())
        sum_y += yb.sum(0)
        cos += float(torch.nn.functional.cosine_similarity(pred, yb, dim=-1).sum())
    n = max(1, y.shape[0])
    total = sq - float(sum_y.pow(2).sum()) / n
    return Figures(1 - sse / total if total > 0 else float("nan"), cos / n, y.shape[0])


@dataclass
class Stitch:
    """The two affine maps between hookpoint A of one model and hookpoint B of another, with
    what they were fitted on and their held-out figures."""

    a_to_b: AffineMap
    """A's stream -> B's stream ("up" in the paper when B is the larger model)."""
    b_to_a: AffineMap
    """B's stream -> A's stream ("down")."""
    info: dict = field(default_factory=dict)
    """model_a, hookpoint_a, model_b, hookpoint_b, ridge, counts (tokens, aligned, kept, fit
    and held-out rows), figures ({"a_to_b": {r2, cosine, rows}, "b_to_a": ...}), text source."""

    def save(self, folder: str | Path) -> None:
        """Write `folder/map.safetensors` (the four tensors) and `folder/map.json` (info)."""
        tensors = {"a_to_b.weight": self.a_to_b.weight, "a_to_b.bias": self.a_to_b.bias,
                   "b_to_a.weight": self.b_to_a.weight, "b_to_a.bias": self.b_to_a.bias}
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            write_safetensors(tmp / MAP_FILE, tensors)
            (tmp / INFO_FILE).write_text(json.dumps(self.info, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> "Stitch":
        """Read a folder written by `save`."""
        folder = Path(folder)
        if not (folder / MAP_FILE).is_file():
            raise FormatError(f"{folder} holds no {MAP_FILE}: not a map written by "
                              f"`saelab stitch` / Stitch.save")
        t = load_file(str(folder / MAP_FILE))
        info = json.loads((folder / INFO_FILE).read_text()) if (folder / INFO_FILE).is_file() \
            else {}
        try:
            return cls(AffineMap(t["a_to_b.weight"], t["a_to_b.bias"]),
                       AffineMap(t["b_to_a.weight"], t["b_to_a.bias"]), info)
        except KeyError as e:
            raise FormatError(f"{folder / MAP_FILE} lacks the tensor {e}") from None

    def figures(self) -> dict[str, dict]:
        """Held-out figures per direction, as recorded when fitted."""
        return self.info.get("figures", {})


def fit_stitch(x_a: Tensor, x_b: Tensor, doc: Tensor, *, ridge: float = 0.0,
               holdout: float = 0.2, info: dict | None = None) -> Stitch:
    """Fit both maps on the rows of documents outside the held-out fraction `holdout` (the last
    documents, by index) and measure them on the others."""
    if x_a.shape[0] != x_b.shape[0] or x_a.shape[0] != doc.shape[0]:
        raise ConfigError("x_a, x_b and doc must have the same number of rows")
    if not 0 < holdout < 1:
        raise ConfigError(f"holdout must lie strictly between 0 and 1, got {holdout}")
    docs = torch.unique(doc)
    if len(docs) < 2:
        raise DataError("the rows come from one document: a held-out split by document needs "
                        "at least two")
    cut = docs[min(len(docs) - 1, max(1, round(len(docs) * (1 - holdout))))]
    train, test = doc < cut, doc >= cut
    a_to_b = fit_affine(x_a[train], x_b[train], ridge)
    b_to_a = fit_affine(x_b[train], x_a[train], ridge)
    figures = {"a_to_b": measure(a_to_b, x_a[test], x_b[test])._asdict(),
               "b_to_a": measure(b_to_a, x_b[test], x_a[test])._asdict()}
    info = {**(info or {}), "ridge": ridge, "holdout": holdout, "fit_rows": int(train.sum()),
            "heldout_rows": int(test.sum()), "d_a": x_a.shape[1], "d_b": x_b.shape[1],
            "figures": figures}
    return Stitch(a_to_b, b_to_a, info)

