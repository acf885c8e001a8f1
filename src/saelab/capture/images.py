"""Which rows a vision transformer's activations give per image: patch tokens, the CLS token,
or the mean over patches.

A ViT's hookpoint holds, per image, a sequence of `prefix + rows * cols` tokens: the prefix
tokens (DINOv2 and ViT: one CLS token; models with registers add those) and then one token per
patch in raster order (row by row). A row of an image store is one such token, named by its
image (`ctx`) and its position in the sequence (`pos`): patch (r, c) is at
`pos = prefix + r * cols + c`; the pooled row of an image has `pos = -1`.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from saelab.errors import ConfigError

ImageRows = Literal["patches", "cls", "pooled", "all"]
IMAGE_ROWS = ("patches", "cls", "pooled", "all")
"""Per image: every patch token; the first (CLS) token; the mean of the patch tokens; or the
whole sequence (prefix and patches)."""
POOLED = -1
"""`pos` of an image's pooled row."""


class PatchGrid(NamedTuple):
    """How a vision transformer's token sequence lays out over the image."""

    rows: int
    """Patches per column of the image (its height / patch size)."""
    cols: int
    """Patches per row (its width / patch size)."""
    prefix: int
    """Tokens before the patches (the CLS token; register tokens where the model has them)."""

    def position(self, pos: Tensor) -> Tensor:
        """(row, col) [n, 2] of sequence positions `pos` [n]; (-1, -1) for prefix tokens and
        pooled rows."""
        patch = pos - self.prefix
        out = torch.stack([patch // self.cols, patch % self.cols], dim=-1)
        return torch.where((patch >= 0).unsqueeze(-1), out, torch.full_like(out, -1))


def patch_grid(model: nn.Module, pixels: Tensor, n_tokens: int) -> PatchGrid:
    """The patch grid of `pixels` [B, C, H, W] for `model` (its config's patch size), the prefix
    read off the sequence length `n_tokens` the model produced at a hookpoint."""
    patch = getattr(getattr(model, "config", None), "patch_size", None)
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    if not isinstance(patch, int):
        raise ConfigError(f"{type(model).__name__}'s config states no patch_size: saelab reads "
                          f"patch positions from a vision transformer's patch grid")
    rows, cols = pixels.shape[-2] // patch, pixels.shape[-1] // patch
    prefix = n_tokens - rows * cols
    if prefix < 0:
        raise ConfigError(f"the hookpoint holds {n_tokens} tokens per image, fewer than the "
                          f"{rows} x {cols} patches: not a patch sequence")
    return PatchGrid(rows=rows, cols=cols, prefix=prefix)


def row_positions(grid: PatchGrid, rows: ImageRows) -> Tensor:
    """The `pos` of each row an image gives, in order (int64 [R])."""
    if rows not in IMAGE_ROWS:
        raise ConfigError(f"unknown image rows {rows!r}; choose one of {', '.join(IMAGE_ROWS)}")
    n = grid.prefix + grid.rows * grid.cols
    if rows == "cls":
        if grid.prefix == 0:
            raise ConfigError("image rows 'cls' need a CLS token, and this hookpoint's sequence "
                              "has none (only patches): use 'pooled' or 'patches'")
        return torch.zeros(1, dtype=torch.long)
    if rows == "pooled":
        return torch.full((1,), POOLED, dtype=torch.long)
    return torch.arange(grid.prefix if rows == "patches" else 0, n)


def image_rows(acts: Tensor, grid: PatchGrid, rows: ImageRows) -> Tensor:
    """The rows `rows` of hookpoint activations `acts` [B, T, d]: [B, R, d] (R as in
    `row_positions`; the pooled row is the mean of the patch tokens)."""
    if acts.dim() != 3 or acts.shape[1] != grid.prefix + grid.rows * grid.cols:
        raise ConfigError(f"a hookpoint gives activations of shape {list(acts.shape)} per batch "
                          f"of images, not a token sequence [images, {grid.prefix} + "
                          f"{grid.rows} x {grid.cols} tokens, d]; choose a block's output "
                          f"(`saelab hookpoints MODEL` lists them)")
    if rows == "pooled":
        return acts[:, grid.prefix:].mean(dim=1, keepdim=True)
    return acts[:, row_positions(grid, rows)]
