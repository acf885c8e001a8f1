"""SDXL's code path offline: a tiny StableDiffusionXLPipeline (random weights, two tiny CLIP
text encoders, a character tokenizer, SDXL-Turbo's scheduler: Euler ancestral with trailing
timesteps). saelab's prompt encoding (hidden states, pooled embedding, size and crop ids) and
denoising loop give the pipeline's own latents bit for bit; capture and steering work on a
U-Net with SDXL's extra conditioning and a stochastic scheduler."""

from __future__ import annotations

import json

import pytest
import torch

from saelab.steer.diffusion import (capture_deltas, denoise, encode_prompts, from_pipeline,
                                    initial_latents, steered_denoise)
from saelab.steer.edits import add

PROMPTS = ["a cat", "a dog on a sofa"]
BLOCK = "down_blocks.0.attentions.0"


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    from diffusers import (AutoencoderKL, EulerAncestralDiscreteScheduler,
                           StableDiffusionXLPipeline, UNet2DConditionModel)
    from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection,
                              CLIPTokenizer)

    folder = tmp_path_factory.mktemp("tokenizer")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                              model_max_length=77)
    torch.manual_seed(0)
    text = CLIPTextConfig(bos_token_id=0, eos_token_id=1, hidden_size=32, intermediate_size=37,
                          num_attention_heads=4, num_hidden_layers=2, vocab_size=len(vocab),
                          max_position_embeddings=77, projection_dim=32)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, norm_num_groups=16,
        block_out_channels=(32, 64), attention_head_dim=8, cross_attention_dim=64,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32))
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(text), text_encoder_2=CLIPTextModelWithProjection(text),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
        scheduler=EulerAncestralDiscreteScheduler(timestep_spacing="trailing"))
    pipe.set_progress_bar_config(disable=True)
    return from_pipeline(pipe, "tiny-sdxl")


def test_prompts_are_encoded_with_sdxls_extra_conditioning(sdxl):
    cond = encode_prompts(sdxl, PROMPTS)
    assert cond.text_NSE.shape == (2, 77, 64)  # both encoders' hidden states, concatenated
    assert cond.added["text_embeds"].shape == (2, 32)
    # original size, crop top-left, target size: the 16x16 latents are 32x32 pixels here
    assert cond.added["time_ids"].tolist() == [[32, 32, 0, 0, 32, 32]] * 2


@pytest.mark.parametrize("n_steps", [1, 2])
def test_denoise_gives_the_sdxl_pipelines_latents_bit_for_bit(sdxl, n_steps):
    latents = initial_latents(sdxl, 2)
    ours = denoise(sdxl, encode_prompts(sdxl, PROMPTS), latents, n_steps, seed=3).latents
    theirs = sdxl.pipeline(prompt=PROMPTS, latents=latents, num_inference_steps=n_steps,
                           guidance_scale=0.0, output_type="latent", height=32, width=32,
                           generator=torch.Generator().manual_seed(3)).images
    assert torch.equal(ours, theirs)


def test_capture_and_steering_with_a_stochastic_scheduler(sdxl):
    import saelab

    cond, latents = encode_prompts(sdxl, PROMPTS), initial_latents(sdxl, 2)
    rows = capture_deltas(sdxl, BLOCK, cond, latents, n_steps=2, steps=[0])
    assert rows.x.shape == (2 * 256, 32)
    sae = saelab.create("topk", d_in=32, n_latents=64, k=4, seed=0)
    clean = denoise(sdxl, cond, latents, 2)
    zero = steered_denoise(sdxl, sae, [add(5, 0.0)], cond, latents, 2, block=BLOCK)
    assert all(torch.equal(a, b) for a, b in zip(zero.trace, clean.trace))
    late = steered_denoise(sdxl, sae, [add(5, 4.0)], cond, latents, 2, steps=[1], block=BLOCK)
    assert torch.equal(late.trace[0], clean.trace[0])
    assert not torch.equal(late.latents, clean.latents)
