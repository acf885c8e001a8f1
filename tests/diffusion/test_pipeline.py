"""saelab's denoising loop against diffusers' own pipeline, and the capture and steering
contexts inside that pipeline (they count U-Net calls, so any loop works)."""

from __future__ import annotations

import pytest
import torch

from saelab.capture.diffusion import DeltaCapture
from saelab.steer.diffusion import DiffusionSteering, steered_denoise
from saelab.steer.edits import add
from tests.diffusion.conftest import BLOCK, N_STEPS


@pytest.fixture(scope="module")
def pipe(model):
    """A StableDiffusionPipeline around the tiny U-Net and a tiny random VAE; no text encoder
    (the conditioning goes in as `prompt_embeds`)."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32))
    return StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=model.unet,
                                   scheduler=model.scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def run_pipe(pipe, inputs):
    cond, latents = inputs
    size = latents.shape[-1] * pipe.vae_scale_factor
    return pipe(prompt_embeds=cond.text_NSE, latents=latents, num_inference_steps=N_STEPS,
                guidance_scale=1.0, height=size, width=size, output_type="latent").images


def test_denoise_gives_the_pipelines_latents_bit_for_bit(pipe, inputs, clean):
    pipe.set_progress_bar_config(disable=True)
    assert torch.equal(run_pipe(pipe, inputs), clean.latents)


def test_capture_and_steering_inside_the_pipeline_match_saelabs_loop(model, pipe, inputs, sae):
    from saelab.steer.diffusion import capture_deltas

    pipe.set_progress_bar_config(disable=True)
    with DeltaCapture(model.unet, BLOCK, steps=[1]) as cap:
        run_pipe(pipe, inputs)
    ours = capture_deltas(model, BLOCK, *inputs, n_steps=N_STEPS, steps=[1])
    assert torch.equal(cap.rows().x, ours.x)
    with DiffusionSteering(model, sae, [add(7, 6.0)], steps=[2], positions=[0, 5]):
        steered = run_pipe(pipe, inputs)
    expected = steered_denoise(model, sae, [add(7, 6.0)], *inputs, n_steps=N_STEPS, steps=[2],
                               positions=[0, 5]).latents
    assert torch.equal(steered, expected)
