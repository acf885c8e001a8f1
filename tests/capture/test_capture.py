"""Capture hooks: sites, patterns, early stop, patching."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from saelab.capture import Capture, Hookpoint, capture, resolve
from saelab.capture.exclude import Exclusion
from saelab.capture.patch import patch
from saelab.errors import ConfigError


def test_sites_output_input_and_delta_agree(tiny_lm, tokens):
    acts = capture(tiny_lm, ["model.layers.1", "model.layers.1:input", "model.layers.1:delta"],
                   tokens[:2])
    assert acts["model.layers.1"].shape == (2, 16, 32)
    assert torch.allclose(acts["model.layers.1:delta"],
                          acts["model.layers.1"] - acts["model.layers.1:input"])
    # the input of block 1 is the output of block 0
    block0 = capture(tiny_lm, ["model.layers.0"], tokens[:2])["model.layers.0"]
    assert torch.allclose(acts["model.layers.1:input"], block0)


def test_output_matches_the_models_own_hidden_states(tiny_lm, tokens):
    acts = capture(tiny_lm, ["model.layers.2"], tokens[:2])
    hidden = tiny_lm(input_ids=tokens[:2], output_hidden_states=True).hidden_states
    assert torch.allclose(acts["model.layers.2"], hidden[3], atol=1e-6)


def test_patterns_match_one_dotted_part_per_star(tiny_lm):
    hps = resolve(tiny_lm, ["model.layers.*"])
    assert [h.module for h in hps] == [f"model.layers.{i}" for i in range(4)]
    deep = resolve(tiny_lm, ["model.layers.0.**_proj"])
    assert all(h.module.startswith("model.layers.0.") and h.module.endswith("_proj")
               for h in deep) and len(deep) == 7


def test_unknown_module_and_site_are_clear_errors(tiny_lm):
    with pytest.raises(ConfigError, match="no module"):
        resolve(tiny_lm, ["model.layer.3"])
    with pytest.raises(ConfigError, match="site"):
        Hookpoint.parse("model.layers.1:middle")


def test_forward_stops_after_the_last_hookpoint(tiny_lm, tokens):
    ran = []
    handle = tiny_lm.model.layers[3].register_forward_hook(lambda *a: ran.append(3))
    try:
        capture(tiny_lm, ["model.layers.1"], tokens[:1])
        assert ran == []
        capture(tiny_lm, ["model.layers.1"], tokens[:1], stop_early=False)
        assert ran == [3]
    finally:
        handle.remove()


def test_modules_returning_tuples_are_handled():
    class Block(nn.Module):
        def forward(self, x):
            return x * 2, "extra"

    model = nn.Sequential(Block(), nn.Identity())
    with Capture(model, ["0"]) as cap:
        acts = cap.run(torch.ones(1, 3, 4))
    assert torch.equal(acts["0"], torch.full((1, 3, 4), 2.0))


def test_identity_patch_leaves_logits_unchanged_and_zero_patch_changes_them(tiny_lm, tokens):
    clean = tiny_lm(input_ids=tokens[:2]).logits
    with patch(tiny_lm, "model.layers.1", lambda a: a):
        same = tiny_lm(input_ids=tokens[:2]).logits
    with patch(tiny_lm, "model.layers.1", torch.zeros_like):
        other = tiny_lm(input_ids=tokens[:2]).logits
    assert torch.allclose(clean, same) and not torch.allclose(clean, other)
    assert torch.allclose(tiny_lm(input_ids=tokens[:2]).logits, clean)  # hook removed


def test_delta_patch_keeps_the_input():
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin)
    x = torch.randn(2, 4)
    with patch(model, "0:delta", torch.zeros_like):
        assert torch.allclose(model(x), x)


def test_exclusion_drops_special_tokens_and_massive_norms():
    tokens = torch.tensor([[0, 5, 6, 7, 8, 9]])
    acts = torch.ones(1, 6, 4)
    acts[0, 4] *= 1000  # a massive activation
    rule = Exclusion(special_ids=[0], norm_factor=5.0)
    rule.calibrate(tokens, {"h": acts})
    keep = rule.keep_mask(tokens, {"h": acts})
    assert keep.tolist() == [[False, True, True, True, False, True]]
    assert rule.norm_threshold["h"] == pytest.approx(5 * 2.0)
