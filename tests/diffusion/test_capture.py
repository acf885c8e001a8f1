"""The delta capture inside the denoising loop: exactly the block's output minus its input,
at the chosen step, one row per spatial position with (image, step, position)."""

from __future__ import annotations

import pytest
import torch

from saelab.capture import first_tensor
from saelab.capture.diffusion import DeltaCapture, to_rows
from saelab.errors import ConfigError
from saelab.models._diffusion import denoise
from saelab.steer.diffusion import capture_deltas
from tests.diffusion.conftest import BLOCK, N_STEPS


def block_call_at(model, block: str, step: int):
    """Records the (args, kwargs) the block is called with during U-Net call `step`."""
    module = dict(model.unet.named_modules())[block]
    calls: list = []
    seen = {"unet": -1}

    def count(mod, args):
        seen["unet"] += 1

    def keep(mod, args, kwargs):
        if seen["unet"] == step:
            calls.append((args, kwargs))

    return module, calls, [model.unet.register_forward_pre_hook(count),
                           module.register_forward_pre_hook(keep, with_kwargs=True)]


@pytest.mark.parametrize("block", [BLOCK, "mid_block.attentions.0",
                                   f"{BLOCK}.transformer_blocks.0"])
def test_delta_equals_the_blocks_own_forward_output_minus_input(model, inputs, block):
    module, calls, handles = block_call_at(model, block, step=2)
    try:
        with DeltaCapture(model.unet, block, steps=[2]) as cap:
            denoise(model, *inputs, n_steps=N_STEPS)
    finally:
        for h in handles:
            h.remove()
    ((args, kwargs),) = calls
    with torch.no_grad():  # the block's own forward on the input it received at step 2
        x_in = args[0] if args else kwargs["hidden_states"]
        expected = to_rows(first_tensor(module(*args, **kwargs)) - x_in)
    rows = cap.rows()
    assert torch.equal(rows.x, expected.reshape(-1, expected.shape[-1]))
    assert rows.x.abs().max() > 0 and not torch.equal(rows.x, to_rows(x_in).reshape_as(rows.x))


def test_rows_carry_image_step_and_spatial_position(model, inputs):
    with DeltaCapture(model.unet, BLOCK, steps=[1, 3]) as cap:
        denoise(model, *inputs, n_steps=N_STEPS)
    with DeltaCapture(model.unet, BLOCK, steps=[3]) as one:
        denoise(model, *inputs, n_steps=N_STEPS)
    rows, grid = cap.rows(image_offset=10), one.grid
    h, w = grid
    assert rows.grid == (16, 16) and rows.x.shape == (2 * 2 * h * w, 32)
    assert set(rows.step.tolist()) == {1, 3} and set(rows.image.tolist()) == {10, 11}
    # the row of (image 11, step 3, position y * W + x) is the delta map's [C] vector there
    delta_map = one.captured[3].reshape(2, h, w, -1)
    for y, x in [(0, 0), (5, 9), (15, 15)]:
        (row,) = ((rows.image == 11) & (rows.step == 3)
                  & (rows.position == y * w + x)).nonzero()[:, 0].tolist()
        assert torch.equal(rows.x[row], delta_map[1, y, x])


def test_capture_in_batches_gives_the_same_rows_as_one_batch(model, inputs):
    one = capture_deltas(model, BLOCK, *inputs, n_steps=N_STEPS, steps=[0], batch_images=2)
    split = capture_deltas(model, BLOCK, *inputs, n_steps=N_STEPS, steps=[0], batch_images=1)
    order = lambda r: torch.argsort(r.image * 10_000 + r.position)  # noqa: E731
    assert torch.allclose(one.x[order(one)], split.x[order(split)], atol=1e-5)
    assert torch.equal(one.image[order(one)], split.image[order(split)])


def test_unknown_block_is_refused_with_the_blocks_listed(model):
    with pytest.raises(ConfigError, match="mid_block.attentions.0"):
        DeltaCapture(model.unet, "down_blocks.9.attentions.0")


def test_step_out_of_range_is_refused_before_and_after_a_run(model, inputs):
    with pytest.raises(ConfigError, match="steps 0 to 3"):
        capture_deltas(model, BLOCK, *inputs, n_steps=N_STEPS, steps=[4])
    with DeltaCapture(model.unet, BLOCK, steps=[7]) as cap:
        denoise(model, *inputs, n_steps=N_STEPS)
    with pytest.raises(ConfigError, match=r"steps \[7\] never ran"):
        cap.rows()


def test_delta_of_a_block_that_changes_shape_is_refused(model, inputs):
    with pytest.raises(ConfigError, match="input's shape"):
        capture_deltas(model, "down_blocks.0.downsamplers.0", *inputs, n_steps=1)
