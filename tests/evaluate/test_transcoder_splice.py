"""Spliced loss for transcoders: the target activation is replaced by transcoder(source) during
the forward that computes the source, and the ablations are those of the target. An exact
transcoder gives the clean loss, a zero one the zero-ablation loss, a trained one is reported by
`saelab eval`, and a source that comes after its target is a clear error."""

from __future__ import annotations

import json
import math

import pytest
import torch

import saelab
from saelab.capture.patch import patch
from saelab.errors import ConfigError
from saelab.evaluate import spliced_loss
from tests.conftest import tiny_llama

MLP = "model.layers.1.mlp.down_proj"  # a Linear without bias: 64 -> 32


@pytest.fixture(scope="module")
def lm():
    """A tiny Llama whose layer-1 down projection is scaled up so that ablating it matters."""
    model = tiny_llama()
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(100)
    return model


@pytest.fixture
def tokens():
    return torch.randint(2, 64, (8, 16), generator=torch.Generator().manual_seed(1))


def exact_transcoder(name: str, W: torch.Tensor):
    """A transcoder whose output is x @ W.T exactly: the skip term W, or for the plain form
    2 d_in latents reading +x_i and -x_i (all active, k = n_latents) with atoms +W_i and -W_i."""
    d_out, d_in = W.shape
    tc = saelab.create(name, d_in=d_in, d_out=d_out, n_latents=2 * d_in, k=2 * d_in)
    eye = torch.eye(d_in)
    with torch.no_grad():
        for p in tc.parameters():
            p.zero_()
        if name == "skip_transcoder":
            tc.W_skip.copy_(W)
        else:
            tc.W_enc.copy_(torch.cat([eye, -eye]))  # [2 d_in, d_in]
            tc.W_dec.copy_(torch.cat([W.T, -W.T]))  # [2 d_in, d_out]
    return tc.eval()


def ce_with(model, tokens, hookpoint, fn) -> float:
    with patch(model, hookpoint, fn):
        return model(input_ids=tokens, labels=tokens).loss.item()


@pytest.mark.parametrize("name", ["transcoder", "skip_transcoder"])
def test_transcoder_equal_to_the_module_splices_to_the_clean_loss(lm, tokens, name):
    tc = exact_transcoder(name, lm.model.layers[1].mlp.down_proj.weight)
    res = spliced_loss(lm, tokens, f"{MLP}:input", tc, target_hookpoint=MLP)
    assert res["ce_loss_spliced"] == pytest.approx(res["ce_loss_clean"], abs=1e-5)
    assert res["kl_spliced"] == pytest.approx(0.0, abs=1e-6)
    assert abs(res["ce_loss_ablated"] - res["ce_loss_clean"]) > 1e-3  # the test can tell apart
    assert res["ce_loss_recovered"] == pytest.approx(1.0, abs=0.01)


def test_source_and_target_in_different_modules(lm, tokens):
    """Layer 0's output is layer 1's input: the identity reading one and replacing the other."""
    identity = exact_transcoder("transcoder", torch.eye(32))
    res = spliced_loss(lm, tokens, "model.layers.0", identity,
                       target_hookpoint="model.layers.1:input")
    assert res["ce_loss_spliced"] == pytest.approx(res["ce_loss_clean"], abs=1e-5)
    assert res["ce_loss_ablated"] == pytest.approx(
        ce_with(lm, tokens, "model.layers.1:input", torch.zeros_like), abs=1e-5)


def test_zero_transcoder_gives_the_zero_ablation_of_the_target(lm, tokens):
    tc = saelab.create("transcoder", d_in=64, d_out=32, n_latents=16, k=2)
    with torch.no_grad():
        tc.W_dec.zero_()  # b_dec starts at zero: the prediction is 0
    res = spliced_loss(lm, tokens, f"{MLP}:input", tc, target_hookpoint=MLP)
    assert res["ce_loss_spliced"] == pytest.approx(res["ce_loss_ablated"], abs=1e-6)
    assert res["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-3)
    # the ablation is of the target (the module's output), not of the source
    assert res["ce_loss_ablated"] == pytest.approx(ce_with(lm, tokens, MLP, torch.zeros_like),
                                                   abs=1e-5)


def test_evaluate_reports_the_spliced_loss_of_a_transcoder_with_the_targets_mean(lm, tokens):
    from saelab.capture import capture

    acts = capture(lm, [f"{MLP}:input", MLP], tokens)
    x, y = acts[f"{MLP}:input"].flatten(0, 1), acts[MLP].flatten(0, 1)
    tc = exact_transcoder("skip_transcoder", lm.model.layers[1].mlp.down_proj.weight)
    report = saelab.evaluate(tc, (x, y), model=lm, tokens=tokens, hookpoint=f"{MLP}:input",
                             target_hookpoint=MLP)
    splice = report["splice"]
    assert report["reconstruction"]["fvu"] == pytest.approx(0.0, abs=1e-6)
    assert splice["ce_loss_spliced"] == pytest.approx(splice["ce_loss_clean"], abs=1e-5)
    mean = y.mean(0)
    assert splice["ce_loss_mean_ablated"] == pytest.approx(
        ce_with(lm, tokens, MLP, lambda a: mean.expand_as(a)), abs=1e-5)
    with pytest.raises(ConfigError, match="target_hookpoint"):
        saelab.evaluate(tc, (x, y), model=lm, tokens=tokens, hookpoint=f"{MLP}:input")


@pytest.mark.parametrize("source, target", [
    ("model.layers.2", "model.layers.1"),         # source later in the forward
    ("model.layers.1.mlp", MLP),                  # source is computed from the target
    (f"{MLP}", f"{MLP}:input"),                   # a module's output to predict its own input
])
def test_a_source_after_its_target_is_a_clear_error(lm, tokens, source, target):
    d_out = 64 if target == f"{MLP}:input" else 32
    tc = saelab.create("transcoder", d_in=32, d_out=d_out, n_latents=16, k=2)
    with pytest.raises(ConfigError, match="comes before its target"):
        spliced_loss(lm, tokens, source, tc, target_hookpoint=target)


def test_a_transcoder_of_the_wrong_width_is_a_clear_error(lm, tokens):
    tc = saelab.create("transcoder", d_in=64, d_out=16, n_latents=16, k=2)
    with pytest.raises(ConfigError, match="predicts 16 dimensions.*has 32"):
        spliced_loss(lm, tokens, f"{MLP}:input", tc, target_hookpoint=MLP)


def test_saelab_eval_reports_the_spliced_loss_of_a_trained_transcoder(model_dir, tmp_path):
    from saelab.cli import main

    store, runs, site = tmp_path / "store", tmp_path / "run", "model.layers.0.mlp"
    assert main(["capture", "--model", str(model_dir), "--hookpoints", f"{site}:input", site,
                 "--n-tokens", "4096", "--context-len", "64", "--out", str(store),
                 "--no-progress"]) == 0
    assert main(["train", str(store), "--architecture", "skip_transcoder", "--n-latents", "64",
                 "--k", "4", "--batch-size", "256", "--steps", "60", "--hookpoint",
                 f"{site}:input", "--target-hookpoint", site, "--out", str(runs),
                 "--no-progress"]) == 0
    assert main(["eval", str(runs / "sae"), str(store), "--splice-tokens", "256",
                 "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert "fvu" in report["reconstruction"]
    splice = report["splice"]
    assert all(math.isfinite(splice[k]) for k in ("ce_loss_clean", "ce_loss_spliced",
                                                  "ce_loss_ablated", "ce_loss_mean_ablated",
                                                  "ce_loss_recovered", "kl_spliced"))
    assert splice["splice_tokens"] == 4 * 63
    assert report["meta"]["hookpoint"] == f"{site}:input"
    assert report["meta"]["target_hookpoint"] == site
