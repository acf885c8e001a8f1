"""Interventions on the real SmolLM2: exact at zero strength, the error term kept, edits
composed, bad input refused with errors that name it."""

from __future__ import annotations

import pytest
import torch

from saelab.capture import capture
from saelab.capture.exclude import Exclusion
from saelab.errors import ConfigError
from saelab.steer import Steering, ablate, add, clamp, compare, scale, steer
from tests.steer.conftest import HOOKPOINT

pytestmark = pytest.mark.slow
PROMPT = "The old lighthouse keeper walked down to the harbour and"


@pytest.fixture(scope="module")
def ids(lm):
    return lm.tokenizer(PROMPT, return_tensors="pt").input_ids


@torch.no_grad()
def test_zero_strength_and_unit_scale_give_the_clean_output_exactly(lm, sae, ids) -> None:
    clean = lm.model(input_ids=ids).logits
    for edit in (add(5, 0.0), scale([5, 9], 1.0)):
        with steer(lm, sae, edit):
            assert torch.equal(lm.model(input_ids=ids).logits, clean)
    with steer(lm, sae, add(5, 20.0)):  # the check above is not vacuous
        assert not torch.equal(lm.model(input_ids=ids).logits, clean)
    c = compare(lm, sae, PROMPT, [add(5, 0.0)], max_new_tokens=8)
    assert c.steered.tokens == c.clean.tokens and c.steered.text == c.clean.text


@torch.no_grad()
def test_the_error_term_is_kept_so_only_the_named_direction_is_added(lm, sae, ids) -> None:
    """x_steered - x_clean is exactly strength x the decoder row at the hookpoint (not the
    reconstruction error x_hat - x as well)."""
    clean = capture(lm.model, [HOOKPOINT], ids)[HOOKPOINT]
    with steer(lm, sae, add(5, 3.0)):
        steered = capture(lm.model, [HOOKPOINT], ids)[HOOKPOINT]
    expected = 3.0 * sae.W_dec[5]
    assert torch.allclose(steered - clean, expected.expand_as(clean), atol=1e-3)


@torch.no_grad()
def test_edits_of_one_intervention_compose_on_the_same_codes(lm, sae, ids) -> None:
    clean = capture(lm.model, [HOOKPOINT], ids)[HOOKPOINT][0]  # [T, d]
    codes = sae.encode(clean)
    fired = int(codes[-1].argmax())
    with steer(lm, sae, add(5, 2.0), ablate(fired)):
        steered = capture(lm.model, [HOOKPOINT], ids)[HOOKPOINT][0]
    expected = 2.0 * sae.W_dec[5] - codes[-1, fired] * sae.W_dec[fired]
    assert codes[-1, fired] > 0
    assert torch.allclose(steered[-1] - clean[-1], expected, atol=1e-3)


@torch.no_grad()
def test_positions_the_exclusion_rule_drops_are_left_untouched(lm, sae, ids) -> None:
    clean = capture(lm.model, [HOOKPOINT], ids)[HOOKPOINT][0]
    limit = float(clean.norm(dim=-1)[1:].max()) * 2  # position 0 (massive norm) is above it
    rule = Exclusion(norm_factor=5.0, norm_threshold={HOOKPOINT: limit})
    with Steering(lm, sae, [clamp(5, 10.0)], exclusion=rule) as steering:
        steered = capture(lm.model, [HOOKPOINT], ids)[HOOKPOINT][0]
    assert clean[0].norm() > limit
    assert torch.equal(steered[0], clean[0])
    assert not torch.equal(steered[1], clean[1])
    assert steering.readings[0][0, 0, 0] == 0  # no reading where nothing is edited


def test_a_feature_out_of_range_is_a_config_error_naming_it(lm, sae) -> None:
    with pytest.raises(ConfigError, match="feature 256 is out of range.*256 latents"):
        steer(lm, sae, add(256, 1.0))
    with pytest.raises(ConfigError, match="feature 999 is out of range"):
        compare(lm, sae, PROMPT, [add(1, 1.0)], feature=999, max_new_tokens=1)


def test_a_hookpoint_the_model_lacks_is_a_config_error_naming_it(lm) -> None:
    import saelab

    other = saelab.create("topk", d_in=576, n_latents=16, k=2, seed=0)
    other.provenance.update({"model": "gpt2", "hookpoint": "transformer.h.5"})
    with pytest.raises(ConfigError, match="'transformer.h.5' \\(trained on gpt2\\), which this "
                                          "model lacks"):
        steer(lm, other, add(0, 1.0))
    wide = saelab.create("topk", d_in=64, n_latents=16, k=2, seed=0)
    wide.provenance["hookpoint"] = HOOKPOINT
    with pytest.raises(ConfigError, match="reads 64 dimensions.*has 576"):
        compare(lm, wide, PROMPT, [add(0, 1.0)], max_new_tokens=1)


@torch.no_grad()
def test_nested_interventions_on_the_same_hookpoint_both_apply(lm, sae, ids) -> None:
    clean = capture(lm.model, [HOOKPOINT], ids)[HOOKPOINT]
    with steer(lm, sae, add(5, 2.0)), steer(lm, sae, add(9, 3.0)):
        steered = capture(lm.model, [HOOKPOINT], ids)[HOOKPOINT]
    expected = 2.0 * sae.W_dec[5] + 3.0 * sae.W_dec[9]
    assert torch.allclose(steered - clean, expected.expand_as(clean), atol=1e-3)


def test_a_transcoder_is_refused_for_steering(lm) -> None:
    import saelab

    transcoder = saelab.create("transcoder", d_in=576, d_out=576, n_latents=16, k=2, seed=0)
    transcoder.provenance["hookpoint"] = HOOKPOINT
    with pytest.raises(ConfigError, match="reconstructs its input"):
        steer(lm, transcoder, add(0, 1.0))
