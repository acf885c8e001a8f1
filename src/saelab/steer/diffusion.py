"""Capture and steering inside a diffusion U-Net's denoising loop, with a dictionary trained on a
transformer block's update (`delta` site).

Surkov et al. 2024, "One-Step is Enough: Sparse Autoencoders for Text-to-Image Diffusion
Models" (reference: github.com/surkovv/sdxl-unbox, `hooks/sdxl.py` and `model_interfaces.py`),
encode a block's output - input with the SAE and add a feature's decoder direction to the
block's output on a chosen area of the feature map (`add_feature_on_area_turbo`), at SDXL-Turbo's
one step. saelab does the same with any edit of `saelab.steer.edits` (add, clamp, scale,
ablate), at chosen steps and positions, and keeps the dictionary's error term as its text
steering does: the block's output becomes output + decode(edited codes) - decode(codes) at the
chosen positions and steps, and stays bit for bit what it was everywhere else (and everywhere
when the edits change no code). Where it departs from the reference: the reference's add
does not depend on the codes (it adds the feature's decoder direction times a value map, which
is what an `add` does here, the decoder being linear), and its `replace` variant returns the
block's input plus the feature's direction alone, dropping the block's own update.

This module is saelab's whole diffusion API (the model side is re-exported from
`saelab.models._diffusion`):

    >>> model = tiny_unet()                # or load_diffusion("stabilityai/sdxl-turbo")
    >>> cond, latents = random_conditioning(model, 16), initial_latents(model, 16)
    >>> rows = capture_deltas(model, "down_blocks.0.attentions.0", cond, latents, n_steps=4,
    ...                       steps=[1])                     # DeltaRows for saelab.fit
    >>> sae = saelab.fit(saelab.create("topk", d_in=32, n_latents=128, k=4),
    ...                  rows.training_data(), saelab.TrainConfig(hookpoint=rows.hookpoint))
    >>> run = steered_denoise(model, sae, [add(12, 8.0)], cond, latents, n_steps=4,
    ...                       steps=[2], positions=[0, 1, 16, 17])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from saelab.capture import module_input
from saelab.capture.diffusion import (DeltaCapture, DeltaRows, StepCounter, from_rows, grid_of,
                                      single_module, to_rows)
from saelab.capture.patch import patch
from saelab.errors import ConfigError
from saelab.models._diffusion import (SDXL_TURBO, TINY, Conditioning, Denoising, DiffusionModel,
                                      denoise, encode_prompts, from_pipeline, initial_latents,
                                      load_diffusion, random_conditioning, tiny_unet)
from saelab.steer.edits import CodeEdit, check_features
from saelab.steer.intervene import check_steerable, to_dictionary

__all__ = ["SDXL_TURBO", "TINY", "Conditioning", "DeltaCapture", "DeltaRows", "Denoising",
           "DiffusionModel", "DiffusionSteering", "capture_deltas", "denoise", "encode_prompts",
           "from_pipeline", "initial_latents", "load_diffusion", "random_conditioning",
           "steered_denoise", "tiny_unet"]

Positions = Sequence[int] | Tensor | None
"""Spatial positions of a block's feature map: flat indices y * W + x, a bool mask [H, W], a
float weight map [H, W] (the change each position gets is the edit's times its weight; 0: left
untouched), or None for every position."""


def check_steps(steps: Iterable[int] | None, n_steps: int) -> list[int] | None:
    """Sorted step indices, refused (ConfigError) when one is outside [0, n_steps)."""
    if steps is None:
        return None
    chosen = sorted({int(s) for s in steps})
    if not chosen:
        raise ConfigError("no step chosen: give at least one step, or None for every step")
    bad = [s for s in chosen if not 0 <= s < n_steps]
    if bad:
        raise ConfigError(f"steps {bad} are out of range: a run of {n_steps} "
                          f"denoising steps has steps 0 to {n_steps - 1}")
    return chosen


def capture_deltas(model: DiffusionModel, block: str, cond: Conditioning, latents: Tensor,
                   n_steps: int, steps: Iterable[int] | None = None, batch_images: int = 8,
                   seed: int = 0, site: str = "delta") -> DeltaRows:
    """Denoise `latents` [N, C, H, W] for `n_steps` and return the `site` of `block` (default:
    its delta, output - input) at `steps` (None: all) as rows with (image, step, position)."""
    chosen = check_steps(steps, n_steps)
    parts = []
    for start in range(0, latents.shape[0], batch_images):
        stop = min(start + batch_images, latents.shape[0])
        with DeltaCapture(model.unet, block, chosen, site) as cap:
            denoise(model, cond.rows(start, stop), latents[start:stop], n_steps,
                    seed=seed + start)
        parts.append(cap.rows(image_offset=start))
    return DeltaRows(*(torch.cat([getattr(p, f) for p in parts]) for f in DeltaRows._fields[:4]),
                     parts[0].grid, parts[0].hookpoint)


def position_index(positions: Positions, grid: tuple[int, int]
                   ) -> tuple[Tensor | None, Tensor | None]:
    """Flat position indices [K] into a feature map of `grid` (H, W), None for all; and the
    weight [K] of each for a weight map (None otherwise)."""
    if positions is None:
        return None, None
    n = grid[0] * grid[1]
    if isinstance(positions, Tensor) and positions.ndim == 2:
        if tuple(positions.shape) != tuple(grid):
            raise ConfigError(f"a position mask has shape {tuple(positions.shape)}, but the "
                              f"block's feature map is {grid[0]}x{grid[1]}")
        flat = positions.reshape(-1)
        index = flat.nonzero().squeeze(1)
        if not index.numel():
            raise ConfigError("the position mask selects no position")
        return index, None if flat.dtype == torch.bool else flat[index].float()
    index = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
    bad = index[(index < 0) | (index >= n)]
    if bad.numel() or not index.numel():
        raise ConfigError(f"positions {bad.tolist() or 'none'} are out of range: the block's "
                          f"feature map is {grid[0]}x{grid[1]}, positions 0 to {n - 1} "
                          f"(y * {grid[1]} + x)")
    return index.unique(), None


def block_of(dictionary, block: str | None) -> str:
    """The block a dictionary steers: `block`, else its provenance's `delta` hookpoint."""
    if block is not None:
        return block
    spec = getattr(dictionary, "provenance", {}).get("hookpoint")
    if spec is None:
        raise ConfigError("the dictionary records no hookpoint: pass block='...', the U-Net "
                          "block whose delta it was trained on")
    module, _, site = spec.partition(":")
    if site != "delta":
        raise ConfigError(f"the dictionary was trained on {spec!r}, not a block's delta; "
                          f"diffusion steering edits a block's update (site 'delta')")
    return module


class DiffusionSteering:
    """While active, `edits` change the dictionary's codes of `block`'s delta at `steps` (None:
    every step) and `positions` (None: all) of every image; the block's output keeps the
    dictionary's error term. `applied` lists the steps where an edit changed something."""

    def __init__(self, model: DiffusionModel | nn.Module, dictionary,
                 edits: Sequence[CodeEdit], block: str | None = None,
                 steps: Iterable[int] | None = None, positions: Positions = None):
        self.unet = model.unet if isinstance(model, DiffusionModel) else model
        check_steerable(dictionary)
        self.edits = list(edits)
        check_features((f for e in self.edits for f in e.features), dictionary.n_latents)
        self.dictionary = dictionary
        self.hookpoint = single_module(self.unet, block_of(dictionary, block), "output")
        self.steps = None if steps is None else {int(s) for s in steps}
        self.positions = positions
        self.counter = StepCounter(self.unet)
        self.applied: list[int] = []
        self._input: Tensor | None = None
        self._stack: list = []

    def __enter__(self) -> "DiffusionSteering":
        self.applied = []
        self.counter.__enter__()
        module = dict(self.unet.named_modules())[self.hookpoint.module]
        self._stack = [module.register_forward_pre_hook(self._keep_input, with_kwargs=True)]
        context = patch(self.unet, self.hookpoint, self._replace)
        context.__enter__()
        self._stack.append(context)
        return self

    def __exit__(self, *exc) -> None:
        self._stack.pop().__exit__(*exc)
        self._stack.pop().remove()
        self.counter.__exit__(*exc)
        self._input = None

    def _keep_input(self, module, args, kwargs) -> None:
        self._input = module_input(args, kwargs)

    @torch.no_grad()
    def _replace(self, out: Tensor) -> Tensor:
        if self.steps is not None and self.counter.step not in self.steps:
            return out
        assert self._input is not None
        delta_BPC = to_rows(out - self._input)
        if delta_BPC.shape[-1] != self.dictionary.d_in:
            raise ConfigError(f"the dictionary reads {self.dictionary.d_in} dimensions, but the "
                              f"delta of {self.hookpoint.module!r} has {delta_BPC.shape[-1]}")
        index, weight = position_index(self.positions, grid_of(out))
        index = None if index is None else index.to(out.device)
        chosen_BKC = delta_BPC if index is None else delta_BPC[:, index]
        b, k, c = chosen_BKC.shape
        rows_NC = to_dictionary(self.dictionary, chosen_BKC.reshape(b * k, c))
        codes_NL = self.dictionary.encode(rows_NC)
        edited_NL = codes_NL
        for edit in self.edits:
            edited_NL = edit.apply(edited_NL)
        if torch.equal(edited_NL, codes_NL):
            return out  # nothing changed: the clean output, bit for bit
        change_BKC = (self.dictionary.decode(edited_NL)
                      - self.dictionary.decode(codes_NL)).reshape(b, k, c).to(out)
        if weight is not None:  # a weight map: each position's share of the change
            change_BKC = change_BKC * weight.to(out)[None, :, None]
        out_BPC = to_rows(out).clone()
        where = slice(None) if index is None else index
        out_BPC[:, where] += change_BKC
        self.applied.append(self.counter.step)
        return from_rows(out_BPC, out).contiguous()


def steered_denoise(model: DiffusionModel, dictionary, edits: Sequence[CodeEdit],
                    cond: Conditioning, latents: Tensor, n_steps: int, *,
                    steps: Iterable[int] | None = None, positions: Positions = None,
                    block: str | None = None, seed: int = 0) -> Denoising:
    """`denoise` with `DiffusionSteering` active: the edits at `steps` (checked against
    `n_steps`) and `positions` of `block` (default: the dictionary's provenance)."""
    chosen = check_steps(steps, n_steps)
    with DiffusionSteering(model, dictionary, edits, block, chosen, positions):
        return denoise(model, cond, latents, n_steps, seed=seed)
