"""`saelab diffusion-capture`: a diffusion U-Net block's delta at chosen denoising steps into an
activation store (Surkov et al. 2024, "One-Step is Enough: Sparse Autoencoders for Text-to-Image
Diffusion Models"), which `saelab train` then reads like any store.

    saelab diffusion-capture deltas --model tiny-unet --images 64 --n-steps 4 --steps 1
    saelab diffusion-capture deltas --model stabilityai/sdxl-turbo --prompts prompts.txt \\
        --block down_blocks.2.attentions.1 --n-steps 1 --device cuda --torch-dtype float16
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from saelab.config import option, required
from saelab.errors import ConfigError, DataError
from saelab.models._diffusion import (TINY, encode_prompts, initial_latents, load_diffusion,
                                      random_conditioning)
from saelab.steer.diffusion_store import capture_deltas_to_store
from saelab.store.reader import ActivationStore

log = logging.getLogger(__name__)
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class DiffusionCaptureConfig:
    """Capture a diffusion U-Net block's delta (output - input) at chosen denoising steps."""

    out: str = required("Store folder to write.", positional=True)
    model: str = option(TINY, "tiny-unet (random weights, offline: the mechanics only) or a "
                              "diffusers text-to-image pipeline by Hub name or folder (e.g. "
                              "stabilityai/sdxl-turbo).")
    block: str | None = option(None, "Transformer block (module name of the U-Net, e.g. "
                                     "down_blocks.2.attentions.1); default: its first one.")
    prompts: str | None = option(None, "Text file, one prompt per line, encoded by the "
                                       "pipeline's text encoders; default: random conditioning "
                                       "(tiny-unet has no text encoder).")
    images: int = option(64, "Images to denoise when no prompts are given.")
    n_steps: int = option(4, "Denoising steps of each run (SDXL-Turbo: 1).")
    steps: list[int] | None = option(None, "Steps whose delta is captured (0: the first); "
                                           "default: every step.")
    batch_images: int = option(8, "Images denoised together.")
    seed: int = option(0, "Seed of the starting latents, the random conditioning and the "
                          "scheduler's noise.")
    device: str = option("cpu", "Device the U-Net runs on (cpu, cuda, ...).")
    torch_dtype: Literal["float32", "float16", "bfloat16"] = option(
        "float32", "Dtype the model is loaded in.")
    dtype: Literal["float32", "float16", "bfloat16"] = option("float32", "Dtype of the store.")
    overwrite: bool = option(False, "Replace a store captured with other settings.")


def run_diffusion_capture(cfg: DiffusionCaptureConfig) -> ActivationStore:
    """Load the model, make the conditioning and starting latents, capture into `cfg.out`."""
    model = load_diffusion(cfg.model, dtype=TORCH_DTYPES[cfg.torch_dtype])
    model.unet.to(cfg.device)
    if model.pipeline is not None:
        model.pipeline.to(cfg.device)
    block = cfg.block or model.blocks[0]
    if cfg.prompts is None:
        if cfg.images < 1:
            raise ConfigError(f"images must be at least 1, not {cfg.images}")
        cond = random_conditioning(model, cfg.images, seed=cfg.seed)
    else:
        if model.pipeline is None:
            raise ConfigError(f"{cfg.model} has no text encoder: leave --prompts out (random "
                              f"conditioning) or load a pipeline by name")
        cond = encode_prompts(model, read_prompts(cfg.prompts))
    latents = initial_latents(model, cond.n_images, seed=cfg.seed)
    log.info("capturing %s:delta of %s, %d images", block, cfg.model, cond.n_images)
    return capture_deltas_to_store(model, block, cond, latents, cfg.n_steps, cfg.out,
                                   steps=cfg.steps, batch_images=cfg.batch_images,
                                   dtype=cfg.dtype, seed=cfg.seed, overwrite=cfg.overwrite)


def read_prompts(path: str) -> list[str]:
    """The non-empty lines of a text file."""
    try:
        prompts = [line.strip() for line in Path(path).read_text().splitlines()]
    except OSError as e:
        raise DataError(f"cannot read prompts from {path}: {e.strerror or e}") from None
    prompts = [p for p in prompts if p]
    if not prompts:
        raise DataError(f"{path} holds no prompt (one per line)")
    return prompts
