"""The `similarity` family on dictionaries whose answer is known: a dictionary against itself and a
permuted copy (everything 1), against a random dictionary (chance level), against a half-shared
copy; the unbiased CKA of independent codes (about 0); bad input refused before any work; the
command line's --other."""

from __future__ import annotations

import json
import math

import pytest
import torch

import saelab
from saelab.errors import ConfigError
from saelab.evaluate.similarity import linear_cka
from tests.conftest import planted_data
from tests.evaluate.test_families import Watched

D, N_LATENTS = 64, 256


def permuted(sae, perm: torch.Tensor):
    """A copy of `sae` whose latents are reordered by `perm` (signs kept): every parameter with a
    leading latent axis is permuted along it."""
    copy = saelab.create(sae.architecture, d_in=sae.d_in, n_latents=sae.n_latents, k=sae.cfg.k)
    state = {name: (t[perm] if t.ndim and t.shape[0] == sae.n_latents else t)
             for name, t in sae.state_dict().items()}
    copy.load_state_dict(state)
    return copy


def unit_gaussian_rows(n: int, d: int, seed: int) -> torch.Tensor:
    w = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return w / w.norm(dim=1, keepdim=True)


@pytest.fixture(scope="module")
def setup():
    """Planted data (sparse combinations of 256 unit directions in 64 dimensions) and a TopK
    dictionary whose decoder and encoder are the planted directions."""
    data = planted_data(n=1500, d=D, n_atoms=N_LATENTS, active=3)
    sae = saelab.create("topk", d_in=D, n_latents=N_LATENTS, k=3, seed=1)
    with torch.no_grad():
        sae.W_dec.copy_(data.atoms)
        sae.W_enc.copy_(data.atoms)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae, data.x


def similarity(sae, x, other) -> dict:
    return saelab.evaluate(sae, x, metrics=("similarity",), other=other, seed=0)["similarity"]


def test_a_dictionary_and_its_permuted_copy_match_exactly(setup):
    sae, x = setup
    perm = torch.randperm(N_LATENTS, generator=torch.Generator().manual_seed(3))
    for other in (sae, permuted(sae, perm)):
        figures = similarity(sae, x, other)
        assert figures["mmcs"] == pytest.approx(1, abs=1e-9)
        assert figures["matched_above_0_9"] == 1 and figures["max_cosine_mean"] == \
            pytest.approx(1, abs=1e-9)
        assert figures["cka"] == pytest.approx(1, abs=1e-9)
        assert figures["svcca"] == pytest.approx(1, abs=1e-4)
        assert figures["sample_rows"] == len(x) and math.isnan(figures["itda_jaccard"])


def test_a_random_dictionary_matches_at_chance_level(setup):
    """Chance level for the matching: for independent uniform unit vectors in d dimensions the
    cosine is sub-Gaussian with variance proxy 1/d, so an atom's best cosine among n random atoms
    has expectation at most sqrt(2 ln(2n) / d) (0.44 at d=64, n=256), and a one-to-one matched
    cosine is at most the best one; no pair comes near 0.9 (P < 2 exp(-d 0.81 / 2) per pair).
    The codes of two dictionaries of the same data are never independent (both are functions of
    x), so their CKA and SVCCA are not 0, but far below the 1 of a shared dictionary."""
    sae, x = setup
    other = saelab.create("topk", d_in=D, n_latents=N_LATENTS, k=3, seed=7)
    with torch.no_grad():
        other.W_dec.copy_(unit_gaussian_rows(N_LATENTS, D, seed=11))
    figures = similarity(sae, x, other)
    bound = math.sqrt(2 * math.log(2 * N_LATENTS) / D)
    assert 0 < figures["mmcs"] <= figures["max_cosine_mean"] < bound
    assert figures["matched_above_0_9"] == 0
    assert figures["cka"] < 0.5 and figures["svcca"] < 0.5


def test_a_half_shared_dictionary_has_half_its_matches_above_0_9(setup):
    sae, x = setup
    other = permuted(sae, torch.arange(N_LATENTS))
    with torch.no_grad():
        other.W_dec[N_LATENTS // 2:] = unit_gaussian_rows(N_LATENTS // 2, D, seed=5)
    figures = similarity(sae, x, other)
    assert figures["matched_above_0_9"] == pytest.approx(0.5)
    chance = math.sqrt(2 * math.log(2 * (N_LATENTS // 2)) / D)  # 128 random atoms left
    assert 0.5 < figures["mmcs"] < 0.5 + 0.5 * chance


def test_unbiased_cka_of_independent_codes_is_near_zero_where_the_biased_one_is_not():
    """Codes wider than the sample has rows: Kornblith et al.'s biased CKA of two independent
    representations is far from 0 (about sqrt(p q) / n), the unbiased one is about 0."""
    g = torch.Generator().manual_seed(0)
    a = torch.relu(torch.randn(500, 2000, generator=g, dtype=torch.float64))
    b = torch.relu(torch.randn(500, 2000, generator=g, dtype=torch.float64))
    k, m = a @ a.T, b @ b.T
    assert abs(linear_cka(k, m)) < 0.02
    assert linear_cka(k, k) == pytest.approx(1)
    centre = torch.eye(500, dtype=torch.float64) - 1 / 500
    kc, mc = centre @ k @ centre, centre @ m @ centre
    biased = float((kc * mc).sum() / (kc.norm() * mc.norm()))
    assert biased > 0.3


def test_similarity_without_other_is_refused_before_any_work(setup):
    sae, x = setup
    watched = Watched(x)
    with pytest.raises(ConfigError, match="other") as err:
        saelab.evaluate(sae, watched, metrics=("similarity",))
    assert "--other" in str(err.value) and not watched.read


def test_dictionaries_of_different_widths_are_refused_before_any_work(setup):
    sae, x = setup
    watched = Watched(x)
    narrow = saelab.create("topk", d_in=D // 2, n_latents=N_LATENTS, k=3)
    with pytest.raises(ConfigError, match="d_in") as err:
        saelab.evaluate(sae, watched, metrics=("similarity",), other=narrow)
    assert str(D) in str(err.value) and str(D // 2) in str(err.value) and not watched.read


def test_other_can_be_a_saved_folder_and_the_report_says_what_it_was(setup, tmp_path):
    sae, x = setup
    saved = permuted(sae, torch.arange(N_LATENTS))
    saved.provenance["hookpoint"] = "model.layers.3"
    saved.save(tmp_path / "sae")
    report = saelab.evaluate(sae, x[:200], metrics=("similarity",), other=str(tmp_path / "sae"))
    assert report["similarity"]["mmcs"] == pytest.approx(1)
    other = report["meta"]["other"]
    assert (other["architecture"], other["n_latents"]) == ("topk", N_LATENTS)
    assert other["provenance"]["hookpoint"] == "model.layers.3"
    assert saelab.evaluate(sae, x[:200], metrics=("sparsity",))["meta"]["other"] is None


@pytest.mark.skipif("itda" not in saelab.architectures(), reason="ITDA is not registered")
def test_two_itda_dictionaries_get_their_jaccard_index():
    from saelab.dictionaries.itda import itda_jaccard

    x = planted_data(n=600, d=16, n_atoms=32, active=2).x
    a = saelab.create("itda", d_in=16, n_latents=256, k=4)
    b = saelab.create("itda", d_in=16, n_latents=256, k=4, loss_threshold=0.05)  # fewer atoms
    a.fit(x.split(100))
    b.fit(x.split(100))
    assert similarity(a, x, a)["itda_jaccard"] == 1
    expected = itda_jaccard(a, b)
    assert 0 < expected < 1
    assert similarity(a, x, b)["itda_jaccard"] == pytest.approx(expected)


def test_eval_command_compares_with_other_without_loading_the_model(model_dir, tmp_path, capsys,
                                                                    monkeypatch):
    import saelab.models
    from saelab.cli import main

    store = tmp_path / "store"
    assert main(["capture", "--model", str(model_dir), "--hookpoints", "model.layers.0",
                 "--n-tokens", "512", "--context-len", "64", "--out", str(store),
                 "--no-progress"]) == 0
    sae = saelab.create("topk", d_in=32, n_latents=64, k=4, seed=1)
    sae.provenance["hookpoint"] = "model.layers.0"
    sae.save(tmp_path / "sae")
    monkeypatch.setattr(saelab.models, "load", lambda *a, **k: pytest.fail("model loaded"))
    args = ["eval", str(tmp_path / "sae"), str(store), "--metrics", "similarity",
            "--out", str(tmp_path / "eval")]
    assert main([*args, "--other", str(tmp_path / "sae")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["similarity"]["mmcs"] == pytest.approx(1)
    assert report["similarity"]["cka"] == pytest.approx(1)
    capsys.readouterr()
    assert main(args) != 0
    assert "--other" in capsys.readouterr().err


def test_zero_atoms_and_dead_latents_leave_the_figures_finite(setup):
    sae, x = setup
    other = permuted(sae, torch.arange(N_LATENTS))
    with torch.no_grad():
        other.W_dec[:32] = 0  # atoms never found (an ITDA or PCA beyond its rank)
        other.b_enc[32:64] = -1e6  # latents that never fire
    figures = similarity(sae, x, other)
    assert all(math.isfinite(v) for k, v in figures.items() if k != "itda_jaccard")
    assert figures["matched_above_0_9"] == pytest.approx(1 - 32 / N_LATENTS)


def test_a_batch_with_nan_is_refused_naming_its_row(setup):
    sae, x = setup
    bad = x[:300].clone()
    bad[123, 5] = float("nan")
    with pytest.raises(saelab.errors.DataError, match="row 123"):
        saelab.evaluate(sae, bad, metrics=("similarity",), other=sae)
