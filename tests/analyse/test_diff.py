"""`saelab.analyse.diff` on planted presence: the planted latent is found, the correction keeps
the null latents out, too-small corpora and incomparable embeddings are refused."""

from __future__ import annotations

import numpy as np
import pytest

from saelab.analyse import diff, format_diff
from saelab.analyse.stats import adjust, fisher_p
from saelab.errors import ConfigError, DataError
from tests.analyse.synthetic import embeddings_of, planted_pair


def test_diff_finds_the_planted_latent_first_and_significant() -> None:
    a, b = planted_pair()
    result = diff(a, b, top=5)
    first = result.more_in_a[0]
    assert first.latent == 7
    assert first.q_value < 1e-10 and first.cohens_h > 1 and first.log_odds > 2
    assert abs(first.freq_a - 0.8) < 0.1 and abs(first.freq_b - 0.1) < 0.1
    assert "«w7»" in first.examples_a[0]  # the example marks where the latent peaked


def test_correction_makes_the_null_latents_non_significant() -> None:
    a, b = planted_pair()
    result = diff(a, b, top=200)
    nulls = [r for r in result.more_in_a + result.more_in_b if r.latent != 7]
    raw = sum(r.p_value < 0.05 for r in nulls)
    assert raw >= 3, "the planted data should give some raw p < 0.05 by chance"
    assert all(r.q_value >= 0.05 for r in nulls)
    assert result.n_significant == 1


def test_planted_latent_more_frequent_in_b_is_listed_the_other_way() -> None:
    a, b = planted_pair(rate_a=0.05, rate_b=0.7)
    result = diff(a, b, top=3)
    assert result.more_in_b[0].latent == 7 and result.more_in_b[0].difference < -0.5
    assert all(r.latent != 7 for r in result.more_in_a)


def test_bonferroni_is_stricter_than_bh() -> None:
    p = np.array([0.001, 0.01, 0.02, 0.03, 0.5])
    assert (adjust(p, "bonferroni") >= adjust(p, "bh")).all()
    assert adjust(p, "bh", n_tests=50)[0] == pytest.approx(0.05)  # untested latents count


def test_fisher_p_matches_scipy_per_table() -> None:
    from scipy.stats import fisher_exact

    p = fisher_p(np.array([8, 8, 0]), 10, np.array([1, 1, 5]), 12)
    assert p[0] == p[1] == pytest.approx(fisher_exact([[8, 2], [1, 11]]).pvalue)
    assert p[2] == pytest.approx(fisher_exact([[0, 10], [5, 7]]).pvalue)


def test_corpora_too_small_for_the_test_are_refused_with_the_size_needed() -> None:
    a, b = planted_pair(n=3, n_latents=400)
    with pytest.raises(DataError, match=r"too small.*3 documents.*at least \d+ documents"):
        diff(a, b)


def test_embeddings_of_different_dictionaries_are_refused() -> None:
    a, _ = planted_pair()
    other = embeddings_of(np.ones((5, 200), bool), {"dictionary": "e" * 64})
    with pytest.raises(ConfigError, match="dictionary"):
        diff(a, other)


def test_format_and_json_carry_the_figures(tmp_path) -> None:
    a, b = planted_pair()
    result = diff(a, b, top=2, name_a="left", name_b="right")
    text = format_diff(result)
    assert "left (200 documents) vs right (200)" in text and "«w7»" in text
    saved = result.save(tmp_path / "diff.json")
    import json

    data = json.loads(saved.read_text())
    assert data["more_in_a"][0]["latent"] == 7 and data["n_significant"] == 1
