"""Generation side by side on the real SmolLM2: per-token activations as the clean model reads
them, the tiers of aggressiveness, and `saelab steer` on the command line."""

from __future__ import annotations

import json
import math

import pytest
import torch

from saelab.capture import capture
from saelab.steer import TIERS, add, compare, compare_tiers, read
from tests.steer.conftest import HOOKPOINT

pytestmark = pytest.mark.slow
PROMPT = "My favourite thing about the sea is"


@torch.no_grad()
def test_activations_on_generated_tokens_are_the_clean_models_codes(lm, sae) -> None:
    c = compare(lm, sae, PROMPT, [add(3, 40.0)], max_new_tokens=6)
    assert c.steered.tokens != c.clean.tokens  # a strong addition changes the text
    g = c.steered
    ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids
    full = torch.cat([ids, torch.tensor([g.tokens])], dim=1)
    codes = sae.encode(capture(lm.model, [HOOKPOINT], full)[HOOKPOINT][0])[:, 3]
    assert len(g.activations) == len(g.tokens) == len(g.str_tokens)
    assert torch.allclose(torch.tensor(g.activations), codes[ids.shape[1]:], atol=1e-4)
    assert math.isfinite(g.perplexity) and g.perplexity > 1
    assert read(lm, lm.tokenizer, sae, PROMPT, g.tokens, 3).perplexity == pytest.approx(
        g.perplexity)


def test_tiers_report_concept_and_fluency_next_to_the_clean_model(lm, sae) -> None:
    """The `active` tier edits only tokens where the feature fires: for a feature that never
    fires on the clean continuation, its text is the clean one; `every` changes it."""
    clean = compare(lm, sae, PROMPT, [add(0, 0.0)], max_new_tokens=5)
    ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids
    full = torch.cat([ids, torch.tensor([clean.clean.tokens])], dim=1)
    codes = sae.encode(capture(lm.model, [HOOKPOINT], full)[HOOKPOINT][0])
    silent = int((codes > 0).sum(0).argmin())
    assert not (codes[:, silent] > 0).any()
    rows = compare_tiers(lm, sae, silent, [PROMPT], strength=60.0, clamp_value=60.0,
                         probe=lambda texts: [float("sea" in t) for t in texts],
                         max_new_tokens=5)
    by = {r.tier: r for r in rows}
    assert [r.tier for r in rows] == ["clean", *TIERS]
    assert by["active"].texts == by["clean"].texts and by["active"].activation_reduction == 0
    assert by["every"].texts != by["clean"].texts
    for r in rows:
        assert math.isfinite(r.perplexity) and 0 <= r.probe <= 1
        assert r.activation_reduction == pytest.approx(by["clean"].activation - r.activation)


def test_saelab_steer_prints_clean_and_steered_as_json(lm, sae, tmp_path, capsys) -> None:
    from saelab.cli import main

    sae.save(tmp_path / "sae")
    args = ["steer", str(tmp_path / "sae"), "--feature", "3", "--prompt", PROMPT,
            "--max-new-tokens", "4", "--json"]
    assert main(args + ["--strength", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["clean"] == out["steered"] and out["feature"] == 3
    assert len(out["steered_detail"]["activations"]) == len(out["steered_detail"]["tokens"])
    assert main(args + ["--strength", "40"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["clean"] != out["steered"]
    assert main(args[:-1] + ["--mode", "clamp", "--strength", "40"]) == 0  # the table
    table = capsys.readouterr().out
    assert "clean (mean activation" in table and "steered (mean activation" in table
    assert main(["steer", str(tmp_path / "sae"), "--feature", "256", "--prompt", "x"]) == 2
    assert "feature 256 is out of range" in capsys.readouterr().err
