"""Text-to-image diffusion U-Nets (diffusers) and a denoising loop whose steps saelab controls.

Surkov et al. 2024, "One-Step is Enough: Sparse Autoencoders for Text-to-Image Diffusion Models",
train SAEs on the update that a cross-attention transformer block of SDXL-Turbo's U-Net
(a diffusers `Transformer2DModel`, e.g. `down_blocks.2.attentions.1`) adds to its input, one
row per spatial position, and steer generation by editing those codes. Their reference code
(github.com/surkovv/sdxl-unbox: `hooks/sdxl.py`, `model_interfaces.py`,
`scripts/collect_latents_dataset.py`) hooks the blocks of a diffusers pipeline and takes
output - input of each.

Here the U-Net is any diffusers `UNet2DConditionModel`:

    >>> model = tiny_unet()                        # random weights, built from a config: offline
    >>> cond = random_conditioning(model, 4)       # stands in for the text encoder's output
    >>> run = denoise(model, cond, initial_latents(model, 4), n_steps=4)
    >>> run.latents, run.trace                     # denoised latents, latents after every step

    >>> model = load_diffusion("stabilityai/sdxl-turbo")   # with a network (not run here)
    >>> cond = encode_prompts(model, ["a cat on a sofa"])   # SDXL's two text encoders

The tiny U-Net proves the mechanics (capture, training, interventions) without a network; its
random weights mean nothing. Where saelab departs from the paper: the loop runs without
classifier-free guidance (SDXL-Turbo's own setting, guidance 0), and the VAE decoder is not
run: the denoised output is the latents.
"""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from saelab.errors import ConfigError, MissingDependencyError
from saelab.models._hub import from_pretrained_kwargs, load_error

TINY = "tiny-unet"
"""Alias of the small random U-Net built from a config (`tiny_unet()`)."""
SDXL_TURBO = "stabilityai/sdxl-turbo"
"""The paper's model (Hub name; needs a network and about 7 GB)."""
BLOCK_CLASSES = ("Transformer2DModel",)
"""Module classes counted as a U-Net's transformer blocks (the paper's unit)."""


class DiffusionModel(NamedTuple):
    """A diffusion U-Net with its scheduler and what saelab needs to know about it."""

    unet: nn.Module
    """The `UNet2DConditionModel`, in eval mode, requires_grad off."""
    scheduler: Any
    """The diffusers scheduler that turns the U-Net's noise prediction into the next latents."""
    name: str
    """The alias or the Hub name / folder it was loaded from."""
    blocks: tuple[str, ...]
    """Module names of its transformer blocks (`Transformer2DModel`), in module order."""
    latent_shape: tuple[int, int, int]
    """Channels, height, width of the latents the U-Net denoises."""
    cross_attention_dim: int
    """Width of the text conditioning (the text encoder's hidden states)."""
    pipeline: Any = None
    """The whole diffusers pipeline (text encoders, VAE) when loaded by name; None otherwise."""


class Conditioning(NamedTuple):
    """What the U-Net is conditioned on, one entry per image."""

    text_NSE: Tensor
    """Text encoder hidden states [N, S, E] (the cross-attention keys and values)."""
    added: dict[str, Tensor] | None = None
    """SDXL's extra conditioning (`text_embeds` [N, 1280], `time_ids` [N, 6]); None for U-Nets
    that take none."""

    @property
    def n_images(self) -> int:
        """How many images it conditions (a NamedTuple's len() stays its field count)."""
        return int(self.text_NSE.shape[0])

    def rows(self, start: int, stop: int) -> "Conditioning":
        """The conditioning of images [start, stop)."""
        return Conditioning(self.text_NSE[start:stop], None if self.added is None else
                            {k: v[start:stop] for k, v in self.added.items()})


class Denoising(NamedTuple):
    """The result of a denoising run."""

    latents: Tensor
    """The denoised latents [N, C, H, W] after the last step."""
    trace: list[Tensor]
    """The latents after each step, `trace[i]` after step i (the last one is `latents`)."""


def _diffusers() -> Any:
    try:
        import diffusers
    except ImportError:
        raise MissingDependencyError("diffusion U-Nets need diffusers: pip install "
                                     "'saelab[diffusion]' (or pip install diffusers)") from None
    return diffusers


def tiny_unet(seed: int = 0, sample_size: int = 16) -> DiffusionModel:
    """A small `UNet2DConditionModel` with random weights (about 0.8M parameters) and a DDIM
    scheduler with Stable Diffusion's settings: two resolutions (32 then 64 channels), cross-attention transformer blocks at
    `down_blocks.0.attentions.0` (sample_size^2 positions, 32 channels), `mid_block.attentions.0`
    and `up_blocks.1.attentions.{0,1}`; text conditioning of width 32."""
    diffusers = _diffusers()
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), norm_num_groups=16, cross_attention_dim=32,
        attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn")
    scheduler = diffusers.DDIMScheduler(  # Stable Diffusion's settings
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
        beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return describe(unet, scheduler, TINY)


def load_diffusion(name: str, dtype: torch.dtype = torch.float32) -> DiffusionModel:
    """`tiny-unet`, or a diffusers text-to-image pipeline by Hub name or folder (e.g.
    `stabilityai/sdxl-turbo`, the paper's model): its U-Net and scheduler, the whole pipeline
    kept for `encode_prompts`. A ConfigError says when the name cannot be loaded (offline and
    not in the local Hugging Face cache, or not a diffusers pipeline)."""
    if name == TINY:
        return tiny_unet()
    diffusers = _diffusers()
    kwargs = from_pretrained_kwargs(name)
    try:
        pipe = diffusers.AutoPipelineForText2Image.from_pretrained(name, torch_dtype=dtype,
                                                                   **kwargs)
    except (OSError, ValueError) as e:
        raise load_error(name, e, offline=bool(kwargs.get("local_files_only"))) from None
    return from_pipeline(pipe, name)


def from_pipeline(pipe: Any, name: str) -> DiffusionModel:
    """A diffusers pipeline already in hand (its U-Net, scheduler and text encoders) as a
    DiffusionModel named `name`."""
    if not hasattr(pipe, "unet") or not hasattr(pipe, "scheduler"):
        raise ConfigError(f"{name!r} is a diffusers pipeline without a U-Net "
                          f"({type(pipe).__name__}); saelab's diffusion capture reads U-Nets")
    return describe(pipe.unet, pipe.scheduler, name)._replace(pipeline=pipe)


def describe(unet: nn.Module, scheduler: Any, name: str) -> DiffusionModel:
    """Wrap a U-Net and its scheduler (eval mode, gradients off) as a DiffusionModel."""
    unet.eval().requires_grad_(False)
    blocks = tuple(n for n, m in unet.named_modules() if type(m).__name__ in BLOCK_CLASSES)
    if not blocks:
        raise ConfigError(f"{name!r} has no transformer blocks ({', '.join(BLOCK_CLASSES)}): "
                          f"the delta capture reads a U-Net's cross-attention blocks")
    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    return DiffusionModel(unet, scheduler, name, blocks, (cfg.in_channels, size, size),
                          int(cfg.cross_attention_dim))


def random_conditioning(model: DiffusionModel, n: int, seq_len: int = 8, seed: int = 0
                        ) -> Conditioning:
    """N random text conditionings [N, seq_len, E] (unit Gaussian): a stand-in for a text
    encoder where none is loaded (the tiny U-Net)."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(n, seq_len, model.cross_attention_dim, generator=g)
    return Conditioning(_like_unet(text, model.unet))


def encode_prompts(model: DiffusionModel, prompts: list[str]) -> Conditioning:
    """The conditioning of `prompts` through the pipeline's own text encoders (a model loaded
    by name): SDXL gives the hidden states, the pooled text embedding and the size/crop ids."""
    pipe = model.pipeline
    if pipe is None:
        raise ConfigError(f"{model.name!r} was built without text encoders: use "
                          f"random_conditioning(), or load a pipeline by name")
    device = next(model.unet.parameters()).device
    out = pipe.encode_prompt(prompt=prompts, device=device, num_images_per_prompt=1,
                             do_classifier_free_guidance=False)
    if getattr(model.unet.config, "addition_embed_type", None) != "text_time":
        return Conditioning(out[0])
    _, height, width = model.latent_shape
    scale = getattr(pipe, "vae_scale_factor", 8)
    size = [height * scale, width * scale]  # original size, crop (0, 0), target size
    time_ids = torch.tensor([size + [0, 0] + size], dtype=out[0].dtype, device=device)
    return Conditioning(out[0], {"text_embeds": out[2],
                                 "time_ids": time_ids.repeat(len(prompts), 1)})


def initial_latents(model: DiffusionModel, n: int, seed: int = 0) -> Tensor:
    """Gaussian starting latents [N, C, H, W] from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return _like_unet(torch.randn(n, *model.latent_shape, generator=g), model.unet)


@torch.no_grad()
def denoise(model: DiffusionModel, cond: Conditioning, latents: Tensor, n_steps: int,
            seed: int = 0) -> Denoising:
    """Run `n_steps` denoising steps from `latents` [N, C, H, W]: one U-Net call per step
    (step i is the i-th call, which is what step-aware hooks count). `seed` seeds the noise
    of stochastic schedulers (Euler ancestral), so that two runs match step for step."""
    if n_steps < 1:
        raise ConfigError(f"n_steps must be at least 1, not {n_steps}")
    if latents.shape[0] != cond.n_images:
        raise ConfigError(f"{latents.shape[0]} latents but {cond.n_images} conditionings: give one "
                          f"conditioning per image")
    scheduler = model.scheduler
    scheduler.set_timesteps(n_steps)
    step_kwargs = {}
    if "generator" in inspect.signature(scheduler.step).parameters:
        step_kwargs["generator"] = torch.Generator().manual_seed(seed)
    x = latents * scheduler.init_noise_sigma
    trace = []
    for t in scheduler.timesteps:
        noise = model.unet(scheduler.scale_model_input(x, t), t,
                           encoder_hidden_states=cond.text_NSE,
                           added_cond_kwargs=cond.added).sample
        x = scheduler.step(noise, t, x, **step_kwargs).prev_sample
        trace.append(x)
    return Denoising(x, trace)


def _like_unet(x: Tensor, unet: nn.Module) -> Tensor:
    """`x` on the U-Net's device, in its dtype."""
    held = next(unet.parameters())
    return x.to(device=held.device, dtype=held.dtype)
