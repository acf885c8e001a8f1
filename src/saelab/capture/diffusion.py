"""Capture inside a diffusion U-Net: a block's activation at chosen denoising steps, one row per
spatial position.

Surkov et al. 2024 ("One-Step is Enough: Sparse Autoencoders for Text-to-Image Diffusion
Models"; reference: github.com/surkovv/sdxl-unbox, `scripts/collect_latents_dataset.py`, which
saves `output - input` of each hooked block of SDXL's U-Net, channels last) train on the update a
transformer block adds to its input (`delta` site), one row per position of the block's feature
map. A U-Net runs once per denoising step, so the step is the number of U-Net calls made since
the context was entered (`StepCounter`): enter one context per denoising run.

    >>> with DeltaCapture(unet, "down_blocks.0.attentions.0", steps=[1]) as cap:
    ...     denoise(model, cond, latents, n_steps=4)
    >>> rows = cap.rows()      # DeltaRows: x [N * H * W, C], image, step, position, grid

Blocks whose activation is a feature map [B, C, H, W] (diffusers' `Transformer2DModel`) and
blocks on token sequences [B, H * W, C] (`BasicTransformerBlock`) both give rows [B, P, C]
(`to_rows`), P positions in row-major order (position = y * W + x).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from saelab.capture import SITES, Hookpoint, first_tensor, module_input, resolve
from saelab.errors import ConfigError


def to_rows(act: Tensor) -> Tensor:
    """Rows [B, P, C] of an activation: [B, C, H, W] channels last and flattened (P = H * W,
    row-major), or [B, T, C] as it is."""
    if act.ndim == 4:
        return act.permute(0, 2, 3, 1).reshape(act.shape[0], -1, act.shape[1])
    if act.ndim == 3:
        return act
    raise ConfigError(f"a diffusion block's activation has shape {tuple(act.shape)}; expected "
                      f"a feature map [B, C, H, W] or a sequence [B, T, C]")


def from_rows(rows_BPC: Tensor, like: Tensor) -> Tensor:
    """The inverse of `to_rows`: rows [B, P, C] back in the layout of `like`."""
    if like.ndim == 4:
        b, c, h, w = like.shape
        return rows_BPC.reshape(b, h, w, c).permute(0, 3, 1, 2)
    return rows_BPC


def grid_of(act: Tensor) -> tuple[int, int]:
    """(H, W) of a feature map; (T, 1) of a token sequence."""
    return (act.shape[2], act.shape[3]) if act.ndim == 4 else (act.shape[1], 1)


def single_module(unet: nn.Module, block: str, site: str) -> Hookpoint:
    """The one module `block` names in `unet`, at `site` (a ConfigError lists the U-Net's
    transformer blocks when the name is unknown or matches several)."""
    if site not in SITES:
        raise ConfigError(f"unknown site {site!r}; sites: {', '.join(SITES)}")
    try:
        found = resolve(unet, [Hookpoint(block, site)])
    except ConfigError:
        blocks = [n for n, m in unet.named_modules() if type(m).__name__ == "Transformer2DModel"]
        raise ConfigError(f"the U-Net has no block {block!r}; its transformer blocks: "
                          f"{', '.join(blocks) or 'none'}") from None
    if len(found) != 1:
        raise ConfigError(f"{block!r} matches {len(found)} modules; name one block")
    return found[0]


class StepCounter:
    """Counts the U-Net's calls while active: `step` is the index of the call running now
    (-1 before the first), i.e. the denoising step for schedulers with one call per step."""

    def __init__(self, unet: nn.Module):
        self.unet = unet
        self.step = -1
        self._handle = None

    def __enter__(self) -> "StepCounter":
        self.step = -1
        self._handle = self.unet.register_forward_pre_hook(self._tick)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _tick(self, module, args) -> None:
        self.step += 1


class DeltaRows(NamedTuple):
    """Rows captured from a diffusion block, with where each came from."""

    x: Tensor
    """Activations [N, C] (on the CPU), one row per (image, step, position)."""
    image: Tensor
    """Image index [N] within the denoising run's batch (plus any offset given)."""
    step: Tensor
    """Denoising step [N] (0: the first U-Net call)."""
    position: Tensor
    """Spatial position [N] in the block's feature map, y * W + x."""
    grid: tuple[int, int]
    """(H, W) of the block's feature map."""
    hookpoint: str
    """The block and site read (`down_blocks.0.attentions.0:delta`)."""

    def training_data(self) -> dict[str, Tensor]:
        """`{hookpoint: x}`: data for `saelab.fit` with `TrainConfig(hookpoint=rows.hookpoint)`,
        which records the hookpoint in the dictionary's provenance (steering then finds its
        block by itself)."""
        return {self.hookpoint: self.x}


class DeltaCapture:
    """Records `site` (default `delta`: output - input) of one U-Net block at chosen denoising
    steps (None: every step) while active. `rows()` gives them as DeltaRows."""

    def __init__(self, unet: nn.Module, block: str, steps: Iterable[int] | None = None,
                 site: str = "delta"):
        self.unet = unet
        self.hookpoint = single_module(unet, block, site)
        self.steps = None if steps is None else sorted({int(s) for s in steps})
        if self.steps is not None and (not self.steps or self.steps[0] < 0):
            raise ConfigError(f"steps must be non-negative step indices, not {steps!r}")
        self.counter = StepCounter(unet)
        self.captured: dict[int, Tensor] = {}
        self.grid: tuple[int, int] | None = None
        self._handle = None

    def __enter__(self) -> "DeltaCapture":
        self.captured = {}
        self.counter.__enter__()
        module = dict(self.unet.named_modules())[self.hookpoint.module]
        self._handle = module.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.counter.__exit__(*exc)

    def _hook(self, module, args, kwargs, output) -> None:
        step = self.counter.step
        if self.steps is not None and step not in self.steps:
            return
        out, inp = first_tensor(output), module_input(args, kwargs)
        site = self.hookpoint.site
        if site == "delta" and out.shape != inp.shape:
            raise ConfigError(f"site 'delta' needs a block whose output has its input's shape; "
                              f"{self.hookpoint.module!r} maps {tuple(inp.shape)} to "
                              f"{tuple(out.shape)}")
        value = out if site == "output" else inp if site == "input" else out - inp
        self.grid = grid_of(value)
        self.captured[step] = to_rows(value.detach()).to("cpu", copy=True)  # [B, P, C]

    def rows(self, image_offset: int = 0) -> DeltaRows:
        """Every captured row, by step, then image, then position."""
        wanted = self.steps if self.steps is not None else sorted(self.captured)
        missing = [s for s in wanted if s not in self.captured]
        if not wanted:
            raise ConfigError(f"block {self.hookpoint.module!r} never ran: run a denoising "
                              f"inside the capture")
        if missing:
            raise ConfigError(f"steps {missing} never ran: the U-Net was called "
                              f"{self.counter.step + 1} times (steps 0 to {self.counter.step}); "
                              f"choose steps below the number of denoising steps")
        xs, images, steps, positions = [], [], [], []
        for s in wanted:
            rows_BPC = self.captured[s]
            b, p, _ = rows_BPC.shape
            xs.append(rows_BPC.reshape(b * p, -1))
            images.append(torch.arange(b).repeat_interleave(p) + image_offset)
            steps.append(torch.full((b * p,), s, dtype=torch.long))
            positions.append(torch.arange(p).repeat(b))
        assert self.grid is not None
        return DeltaRows(torch.cat(xs), torch.cat(images), torch.cat(steps),
                         torch.cat(positions), self.grid, self.hookpoint.key)
