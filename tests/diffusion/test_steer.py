"""Interventions during denoising: a TopK SAE trained on the block's delta, its codes edited at
chosen steps and spatial positions with the error term kept."""

from __future__ import annotations

import pytest
import torch

import saelab
from saelab.capture.diffusion import DeltaCapture
from saelab.errors import ConfigError
from saelab.steer.diffusion import DiffusionSteering, steered_denoise
from saelab.steer.edits import ablate, add, scale
from tests.diffusion.conftest import BLOCK, N_STEPS

STEP = 2
P = [0, 1, 17, 40, 200]
"""Positions y * 16 + x of the block's 16x16 feature map (the latents' grid too)."""


def block_outputs(model, inputs, steering=None):
    """The block's output rows [B, P, C] at every step, and the run (steered if given)."""
    from saelab.models._diffusion import denoise

    if steering is None:
        with DeltaCapture(model.unet, BLOCK, site="output") as cap:
            run = denoise(model, *inputs, n_steps=N_STEPS)
    else:
        with steering, DeltaCapture(model.unet, BLOCK, site="output") as cap:
            run = denoise(model, *inputs, n_steps=N_STEPS)
    return cap.captured, run


def test_the_sae_records_the_blocks_delta_as_its_hookpoint(sae):
    assert sae.provenance["hookpoint"] == f"{BLOCK}:delta"


def test_the_sae_learns_the_delta(model, sae):
    from saelab.models._diffusion import initial_latents, random_conditioning
    from saelab.steer.diffusion import capture_deltas

    x = capture_deltas(model, BLOCK, random_conditioning(model, 2, seed=5),
                       initial_latents(model, 2, seed=5), N_STEPS, steps=[1]).x
    untrained = saelab.create("topk", d_in=32, n_latents=128, k=4, seed=0)
    fvu = lambda d: float((d(x).x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())  # noqa
    with torch.no_grad():
        assert fvu(sae) < 0.5 < fvu(untrained)


@pytest.mark.parametrize("edit", [add(3, 0.0), scale([3, 5], 1.0)], ids=["add0", "scale1"])
def test_zero_strength_gives_the_clean_run_bit_for_bit(model, inputs, clean, sae, edit):
    run = steered_denoise(model, sae, [edit], *inputs, n_steps=N_STEPS)
    assert all(torch.equal(a, b) for a, b in zip(run.trace, clean.trace))


def test_intervention_changes_nothing_before_its_step_and_only_its_positions_there(
        model, inputs, clean, sae):
    outside = torch.ones(256, dtype=torch.bool)
    outside[P] = False
    clean_out, _ = block_outputs(model, inputs)
    steering = DiffusionSteering(model, sae, [add(7, 6.0)], steps=[STEP], positions=P)
    steered_out, run = block_outputs(model, inputs, steering)
    assert steering.applied == [STEP]
    # before the step: every block output and the latents after each step, bit for bit
    for s in range(STEP):
        assert torch.equal(steered_out[s], clean_out[s])
        assert torch.equal(run.trace[s], clean.trace[s])
    # at the step, the block's output: unchanged outside P, changed at every position of P
    assert torch.equal(steered_out[STEP][:, outside], clean_out[STEP][:, outside])
    assert (steered_out[STEP][:, P] != clean_out[STEP][:, P]).any(-1).all()
    # after the block, the rest of the U-Net (convolutions, attention) spreads the edit: the
    # latents of that step differ outside P too, and so does every later step's block output
    latent_change = (run.trace[STEP] != clean.trace[STEP]).any(1).reshape(2, 256)
    assert latent_change[:, outside].any()
    later = (steered_out[STEP + 1] != clean_out[STEP + 1]).any(-1)
    assert later.float().mean() > 0.9


@pytest.mark.parametrize("make", [ablate, lambda f: scale(f, 3.0)], ids=["ablate", "scale3"])
def test_ablating_or_scaling_changes_only_positions_where_the_feature_fired(model, inputs, sae,
                                                                            make):
    with DeltaCapture(model.unet, BLOCK, steps=[STEP]) as cap:
        from saelab.models._diffusion import denoise
        denoise(model, *inputs, n_steps=N_STEPS)
    with torch.no_grad():
        codes = sae.encode(cap.captured[STEP].reshape(-1, 32)).reshape(2, 256, -1)
    feature = int((codes[:, P] > 0).sum((0, 1)).argmax())  # fires at some of P
    fired = codes[:, :, feature] > 0
    clean_out, _ = block_outputs(model, inputs)
    steering = DiffusionSteering(model, sae, [make(feature)], steps=[STEP], positions=P)
    steered_out, _ = block_outputs(model, inputs, steering)
    changed = (steered_out[STEP] != clean_out[STEP]).any(-1)  # [B, 256]
    in_p = torch.zeros(2, 256, dtype=torch.bool)
    in_p[:, P] = True
    assert fired[in_p].any()
    assert torch.equal(changed, fired & in_p)


def test_a_mask_of_positions_equals_their_indices(model, inputs, sae):
    mask = torch.zeros(16, 16, dtype=torch.bool)
    for p in P:
        mask[p // 16, p % 16] = True
    by_index = steered_denoise(model, sae, [add(7, 6.0)], *inputs, n_steps=N_STEPS,
                               steps=[STEP], positions=P)
    by_mask = steered_denoise(model, sae, [add(7, 6.0)], *inputs, n_steps=N_STEPS,
                              steps=[STEP], positions=mask)
    assert torch.equal(by_index.latents, by_mask.latents)


def test_a_weight_map_scales_the_change_at_each_position(model, inputs, sae):
    weights = torch.zeros(16, 16)
    weights[0, 0], weights[0, 1] = 1.0, 0.5  # positions 0 and 1
    clean_out, _ = block_outputs(model, inputs)
    full, _ = block_outputs(model, inputs, DiffusionSteering(
        model, sae, [add(7, 6.0)], steps=[STEP], positions=[0, 1]))
    mapped, _ = block_outputs(model, inputs, DiffusionSteering(
        model, sae, [add(7, 6.0)], steps=[STEP], positions=weights))
    change_full = full[STEP] - clean_out[STEP]
    change_mapped = mapped[STEP] - clean_out[STEP]
    assert torch.allclose(change_mapped[:, 0], change_full[:, 0], atol=1e-5)
    assert torch.allclose(change_mapped[:, 1], 0.5 * change_full[:, 1], atol=1e-5)
    assert torch.equal(mapped[STEP][:, 2:], clean_out[STEP][:, 2:])


def test_bad_steering_input_is_refused(model, inputs, sae):
    with pytest.raises(ConfigError, match="steps 0 to 3"):
        steered_denoise(model, sae, [add(7, 1.0)], *inputs, n_steps=N_STEPS, steps=[4])
    with pytest.raises(ConfigError, match="positions 0 to 255"):
        steered_denoise(model, sae, [add(7, 1.0)], *inputs, n_steps=N_STEPS, positions=[256])
    with pytest.raises(ConfigError, match="out of range"):
        steered_denoise(model, sae, [add(999, 1.0)], *inputs, n_steps=N_STEPS)
    with pytest.raises(ConfigError, match="transformer blocks"):
        DiffusionSteering(model, sae, [add(7, 1.0)], block="down_blocks.7")
    wide = saelab.create("topk", d_in=64, n_latents=16, k=2, seed=0)
    with pytest.raises(ConfigError, match="reads 64 dimensions"):
        steered_denoise(model, wide, [add(1, 1.0)], *inputs, n_steps=N_STEPS, block=BLOCK)
