"""Affine maps: least squares recovers a planted map, held-out figures measure what they name,
ridge shrinks, and a stitch survives a save/load round trip."""

from __future__ import annotations

import pytest
import torch

from saelab.errors import DataError, FormatError
from saelab.transfer import AffineMap, Stitch, fit_affine, fit_stitch, measure


def planted(n: int = 4000, d_a: int = 12, d_b: int = 16, noise: float = 0.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_a, generator=g) * 3 + 1
    true = AffineMap(torch.randn(d_b, d_a, generator=g), torch.randn(d_b, generator=g))
    y = true(x) + noise * torch.randn(n, d_b, generator=g)
    doc = torch.arange(n) // 40  # 100 documents of 40 rows
    return x, y, doc, true


def test_least_squares_recovers_a_planted_affine_map() -> None:
    x, y, _, true = planted()
    f = fit_affine(x, y)
    assert torch.allclose(f.weight, true.weight, atol=1e-4)
    assert torch.allclose(f.bias, true.bias, atol=1e-4)


def test_r2_is_one_minus_fvu_and_cosine_is_the_mean_row_cosine() -> None:
    x, y, _, true = planted(noise=1.0)
    figures = measure(true, x, y)
    fvu = (true(x) - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum()
    cos = torch.nn.functional.cosine_similarity(true(x), y, dim=-1).mean()
    assert figures.r2 == pytest.approx(1 - float(fvu), abs=1e-5)
    assert figures.cosine == pytest.approx(float(cos), abs=1e-5)
    assert figures.rows == len(x)


def test_stitch_is_measured_on_held_out_documents_both_ways() -> None:
    x, y, doc, _ = planted(noise=0.5)
    stitch = fit_stitch(x, y, doc, holdout=0.25)
    assert stitch.info["heldout_rows"] == 1000 and stitch.info["fit_rows"] == 3000
    figures = stitch.figures()
    assert 0.9 < figures["a_to_b"]["r2"] < 1 and figures["b_to_a"]["r2"] > 0.9
    assert (stitch.a_to_b.d_in, stitch.a_to_b.d_out) == (12, 16)
    assert (stitch.b_to_a.d_in, stitch.b_to_a.d_out) == (16, 12)


def test_ridge_shrinks_the_map() -> None:
    x, y, _, _ = planted(noise=2.0)
    plain, ridged = fit_affine(x, y), fit_affine(x, y, ridge=1.0)
    assert ridged.weight.norm() < 0.8 * plain.weight.norm()


def test_too_few_rows_for_an_exact_fit_are_refused() -> None:
    x, y, _, _ = planted(n=10)
    with pytest.raises(DataError, match="ridge"):
        fit_affine(x, y)
    fit_affine(x, y, ridge=0.1)  # a ridge makes it well posed


def test_stitch_round_trips_through_safetensors_and_json(tmp_path) -> None:
    x, y, doc, _ = planted()
    stitch = fit_stitch(x, y, doc, info={"model_a": "a", "hookpoint_a": "h"})
    stitch.save(tmp_path / "map")
    back = Stitch.load(tmp_path / "map")
    assert torch.equal(back.a_to_b.weight, stitch.a_to_b.weight)
    assert torch.equal(back.b_to_a.bias, stitch.b_to_a.bias)
    assert back.info["model_a"] == "a" and back.figures() == stitch.figures()
    with pytest.raises(FormatError, match="map.safetensors"):
        Stitch.load(tmp_path)
