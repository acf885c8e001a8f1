"""The tiny random U-Net (diffusers), conditionings, starting latents, and a TopK SAE trained
on the delta of its first transformer block at step 1."""

from __future__ import annotations

import importlib.util

import pytest

if importlib.util.find_spec("diffusers") is None:  # the `diffusion` extra is not installed
    collect_ignore_glob = ["test_*.py"]

BLOCK = "down_blocks.0.attentions.0"
"""A cross-attention transformer block at the latents' resolution (16x16, 32 channels)."""
N_STEPS = 4


@pytest.fixture(scope="package")
def model():
    from saelab.models._diffusion import tiny_unet

    return tiny_unet()


@pytest.fixture(scope="package")
def inputs(model):
    """Conditioning and starting latents of 2 images."""
    from saelab.models._diffusion import initial_latents, random_conditioning

    return random_conditioning(model, 2, seed=1), initial_latents(model, 2, seed=1)


@pytest.fixture(scope="package")
def clean(model, inputs):
    from saelab.models._diffusion import denoise

    return denoise(model, *inputs, n_steps=N_STEPS)


@pytest.fixture(scope="package")
def sae(model):
    import saelab
    from saelab.models._diffusion import initial_latents, random_conditioning
    from saelab.steer.diffusion import capture_deltas

    rows = capture_deltas(model, BLOCK, random_conditioning(model, 8), initial_latents(model, 8),
                          N_STEPS, steps=[1, 2])
    dictionary = saelab.create("topk", d_in=rows.x.shape[1], n_latents=128, k=4, seed=0)
    # keyed by hookpoint: the provenance records the block, and steering finds it by itself
    return saelab.fit(dictionary, rows.training_data(), saelab.TrainConfig(
        epochs=10, batch_size=256, seed=0, progress=False, hookpoint=rows.hookpoint))
