"""Evaluation metrics against brute-force definitions, spliced loss, report files."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import saelab
from saelab.capture.exclude import Exclusion
from saelab.evaluate import spliced_loss


class Identity(nn.Module):
    """A 'dictionary' that reconstructs perfectly (for checking the splice plumbing)."""

    architecture = "identity"
    n_latents = 4

    def forward(self, x):
        return saelab.dictionaries.Output(x, torch.zeros(x.shape[0], 4))


def test_reconstruction_and_sparsity_match_their_definitions(planted):
    sae = saelab.create("topk", d_in=32, n_latents=64, k=3)
    x = planted.x[:3000]
    report = saelab.evaluate(sae, x, batch_size=700)
    out = sae(x)
    fvu = ((out.x_hat - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert report["fvu"] == pytest.approx(fvu.item(), rel=1e-4)
    assert report["mse"] == pytest.approx(((out.x_hat - x) ** 2).sum(-1).mean().item(), rel=1e-4)
    assert report["l0"] == pytest.approx((out.codes != 0).sum(-1).float().mean().item())
    fired = (out.codes != 0).any(0)
    assert report["dead_fraction"] == pytest.approx(1 - fired.float().mean().item())
    cos = torch.nn.functional.cosine_similarity(x, out.x_hat, dim=-1).mean()
    assert report["cosine"] == pytest.approx(cos.item(), rel=1e-4)


def test_report_and_plots_are_written(planted, tmp_path):
    sae = saelab.create("topk", d_in=32, n_latents=64, k=3)
    saelab.evaluate(sae, planted.x[:1000], out=tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert {"fvu", "l0", "dead_fraction"} <= set(report)
    for png in ("l0_hist.png", "density_hist.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def test_perfect_reconstruction_splices_to_the_clean_loss(tiny_lm, tokens):
    res = spliced_loss(tiny_lm, tokens[:4], "model.layers.1", Identity(),
                       mean=torch.zeros(32))
    assert res["ce_loss_spliced"] == pytest.approx(res["ce_loss_clean"], abs=1e-5)
    assert res["kl_spliced"] == pytest.approx(0.0, abs=1e-5)
    assert res["ce_loss_ablated"] != pytest.approx(res["ce_loss_clean"], abs=1e-3)
    assert res["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    # zero mean: mean-ablation is zero-ablation
    assert res["ce_loss_mean_ablated"] == pytest.approx(res["ce_loss_ablated"], rel=1e-6)


def test_clean_loss_is_the_models_own_next_token_loss(tiny_lm, tokens):
    res = spliced_loss(tiny_lm, tokens[:4], "model.layers.1", Identity())
    own = tiny_lm(input_ids=tokens[:4], labels=tokens[:4]).loss
    assert res["ce_loss_clean"] == pytest.approx(own.item(), rel=1e-5)


def test_excluded_positions_are_left_untouched_when_splicing(tiny_lm, tokens):
    everything_special = Exclusion(special_ids=list(range(64)), norm_factor=None)
    res = spliced_loss(tiny_lm, tokens[:4], "model.layers.1",
                       saelab.create("topk", d_in=32, n_latents=64, k=1),
                       exclusion=everything_special)
    assert res["ce_loss_spliced"] == pytest.approx(res["ce_loss_clean"], abs=1e-6)
    assert res["ce_loss_ablated"] == pytest.approx(res["ce_loss_clean"], abs=1e-6)


def test_transcoders_are_evaluated_against_their_target():
    from saelab.errors import ConfigError

    torch.manual_seed(0)
    tc = saelab.create("transcoder", d_in=8, d_out=4, n_latents=16, k=2)
    x, y = torch.randn(500, 8), torch.randn(500, 4)
    report = saelab.evaluate(tc, (x, y), batch_size=128)
    x_hat = tc(x).x_hat
    fvu = ((x_hat - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
    assert report["fvu"] == pytest.approx(fvu.item(), rel=1e-4)
    with pytest.raises(ConfigError, match="target_hookpoint"):
        saelab.evaluate(tc, x)
