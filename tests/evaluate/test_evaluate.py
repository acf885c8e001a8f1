"""Evaluation metrics against brute-force definitions, spliced loss, the report's shape, files
and summary, and the choice of families."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import saelab
from saelab.capture.exclude import Exclusion
from saelab.errors import ConfigError, DataError
from saelab.evaluate import family, figures, format_report, headline, spliced_loss


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
    rec, sp = report["reconstruction"], report["sparsity"]
    out = sae(x)
    fvu = ((out.x_hat - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert rec["fvu"] == pytest.approx(fvu.item(), rel=1e-4)
    assert rec["mse"] == pytest.approx(((out.x_hat - x) ** 2).sum(-1).mean().item(), rel=1e-4)
    assert sp["l0"] == pytest.approx((out.codes != 0).sum(-1).float().mean().item())
    fired = (out.codes != 0).any(0)
    assert sp["dead_fraction"] == pytest.approx(1 - fired.float().mean().item())
    cos = torch.nn.functional.cosine_similarity(x, out.x_hat, dim=-1).mean()
    assert rec["cosine"] == pytest.approx(cos.item(), rel=1e-4)
    assert sp["n_inputs"] == 3000


def test_report_is_keyed_by_family_with_a_meta_entry(planted):
    sae = saelab.create("topk", d_in=32, n_latents=64, k=3)
    sae.provenance["hookpoint"] = "model.layers.3"
    report = saelab.evaluate(sae, planted.x[:500], metrics=("sparsity", "afa"), seed=3)
    assert list(report) == ["sparsity", "afa", "meta"]
    meta = report["meta"]
    assert (meta["architecture"], meta["n_latents"], meta["d_in"]) == ("topk", 64, 32)
    assert meta["provenance"]["hookpoint"] == "model.layers.3"
    assert meta["data"] == {"kind": "tensor", "rows": 500}
    assert meta["families"] == ["sparsity", "afa"] and meta["seed"] == 3
    assert meta["versions"]["torch"] == torch.__version__ and meta["versions"]["saelab"]
    assert {"sparsity", "afa", "activations_pass"} == set(meta["seconds"])


def test_seed_leaves_the_callers_random_state_alone(planted):
    sae = saelab.create("topk", d_in=32, n_latents=64, k=3)
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    saelab.evaluate(sae, planted.x[:100], seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_report_and_plots_are_written(planted, tmp_path):
    sae = saelab.create("topk", d_in=32, n_latents=64, k=3)
    returned = saelab.evaluate(sae, planted.x[:1000], out=tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report == json.loads(json.dumps(returned))
    assert {"fvu", "cosine"} <= set(report["reconstruction"])
    assert {"l0", "dead_fraction"} <= set(report["sparsity"])
    for png in ("l0_hist.png", "density_hist.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def test_summary_shows_each_familys_headline_figures():
    report = {"reconstruction": {"fvu": 0.25, "mse": 9.5, "cosine": float("nan")},
              "afa": {"afa_ratio_median": 1.5, "decoder_coherence": 0.75},
              "meta": {"architecture": "topk", "seconds": {"afa": 2.0}},
              "added_by_a_caller": {"rows": 7.0}}
    lines = format_report(report).splitlines()
    assert lines == ["reconstruction", f"  {'fvu':<28} 0.2500",
                     "afa", f"  {'afa_ratio_median':<28} 1.5000"]
    assert headline(report) == {"fvu": 0.25, "afa_ratio_median": 1.5}
    assert "fvu" in family("reconstruction").headline  # what the summary shows comes from it
    assert "mse" not in family("reconstruction").headline


def test_figures_flattens_every_figure_and_names_shared_ones_by_family():
    report = {"reconstruction": {"fvu": 0.25, "mse": 9.5, "cosine": float("nan")},
              "sparsity": {"l0": 4.0, "dead_fraction": 0.5},
              "afa": {"afa_ratio_median": 1.5, "l0": 3.0},
              "meta": {"architecture": "topk"}}
    assert figures(report) == {"fvu": 0.25, "mse": 9.5, "sparsity.l0": 4.0,
                               "dead_fraction": 0.5, "afa_ratio_median": 1.5, "afa.l0": 3.0}


def test_default_families_add_the_spliced_loss_when_a_model_and_tokens_are_given(tiny_lm,
                                                                                  tokens):
    sae = saelab.create("topk", d_in=32, n_latents=64, k=3)
    x = torch.randn(200, 32)
    assert set(saelab.evaluate(sae, x)) == {"reconstruction", "sparsity", "meta"}
    with_lm = saelab.evaluate(sae, x, model=tiny_lm, tokens=tokens[:2], hookpoint="model.layers.1")
    assert set(with_lm) == {"reconstruction", "sparsity", "splice", "meta"}
    only_splice = saelab.evaluate(sae, model=tiny_lm, tokens=tokens[:2],
                                  hookpoint="model.layers.1")
    assert set(only_splice) == {"splice", "meta"}
    assert only_splice["splice"]["ce_loss_spliced"] == with_lm["splice"]["ce_loss_spliced"]
    assert math.isnan(only_splice["splice"]["ce_loss_mean_ablated"])  # no data, no mean
    assert not math.isnan(with_lm["splice"]["ce_loss_mean_ablated"])


def test_explicit_families_run_exactly_and_unknown_ones_are_refused(tiny_lm, tokens):
    sae = saelab.create("topk", d_in=32, n_latents=64, k=3)
    report = saelab.evaluate(sae, torch.randn(50, 32), metrics=("reconstruction",),
                             model=tiny_lm, tokens=tokens[:2], hookpoint="model.layers.1")
    assert set(report) == {"reconstruction", "meta"}
    with pytest.raises(ConfigError, match="Did you mean 'sparsity'"):
        saelab.evaluate(sae, torch.randn(50, 32), metrics=("sparsty",))
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        saelab.evaluate(sae)
    with pytest.raises(ConfigError, match="metrics is empty"):
        saelab.evaluate(sae, torch.randn(50, 32), metrics=())


def test_streaming_families_share_one_forward_per_batch(planted):
    sae = saelab.create("topk", d_in=32, n_latents=64, k=3)
    forwards = []
    sae.register_forward_pre_hook(lambda *_: forwards.append(1))
    report = saelab.evaluate(sae, planted.x[:1000], batch_size=300,
                             metrics=("reconstruction", "sparsity", "afa"))
    assert len(forwards) == 4  # ceil(1000 / 300) batches, not 4 per family
    assert report["sparsity"]["n_inputs"] == 1000


def test_the_spliced_loss_needs_the_hookpoint_before_any_work(tiny_lm, tokens):
    sae = saelab.create("topk", d_in=32, n_latents=64, k=3)
    with pytest.raises(ConfigError, match="splice.*pass hookpoint"):
        saelab.evaluate(sae, torch.randn(50, 32), model=tiny_lm, tokens=tokens[:2])


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
    torch.manual_seed(0)
    tc = saelab.create("transcoder", d_in=8, d_out=4, n_latents=16, k=2)
    x, y = torch.randn(500, 8), torch.randn(500, 4)
    report = saelab.evaluate(tc, (x, y), batch_size=128)
    x_hat = tc(x).x_hat
    fvu = ((x_hat - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
    assert report["reconstruction"]["fvu"] == pytest.approx(fvu.item(), rel=1e-4)
    with pytest.raises(ConfigError, match="target_hookpoint"):
        saelab.evaluate(tc, x)


def test_non_finite_activations_are_refused_naming_the_first_bad_row(planted):
    sae = saelab.create("topk", d_in=32, n_latents=64, k=3)
    x = planted.x[:3000].clone()
    x[2345, 7] = float("nan")
    x[2900, 1] = float("inf")
    with pytest.raises(DataError, match="NaN or inf at row 2345"):
        saelab.evaluate(sae, x, batch_size=1000)


def test_activations_of_another_width_are_refused_with_a_message():
    sae = saelab.create("topk", d_in=32, n_latents=64, k=3)
    with pytest.raises(DataError, match=r"shape \(100, 576\).*expects \[rows, 32\]"):
        saelab.evaluate(sae, torch.randn(100, 576))


def test_report_json_is_strict_json_when_a_figure_is_nan(tiny_lm, tokens, tmp_path):
    sae = saelab.create("topk", d_in=32, n_latents=64, k=3)
    hp = "model.layers.1"
    report = saelab.evaluate(sae, None, model=tiny_lm, tokens=tokens, hookpoint=hp,
                             out=tmp_path)  # no data: no mean, so mean-ablated figures are NaN
    assert math.isnan(report["splice"]["ce_loss_mean_ablated"])

    def refuse(name):
        raise ValueError(f"bare {name} in report.json")

    written = json.loads((tmp_path / "report.json").read_text(), parse_constant=refuse)
    assert written["splice"]["ce_loss_mean_ablated"] is None
    assert written["splice"]["ce_loss_clean"] == pytest.approx(report["splice"]["ce_loss_clean"])
