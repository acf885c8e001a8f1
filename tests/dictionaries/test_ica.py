"""ICA (saelab.dictionaries.ica): unmixes a planted mixture of independent non-Gaussian sources,
reads at most max_rows rows, is seeded by create's seed, and keeps the reconstruction exact with
unit atoms."""

from __future__ import annotations

import pytest
import torch

import saelab
from saelab.dictionaries import Rows
from saelab.errors import ConfigError


def mixture(n: int = 6000, d: int = 10, seed: int = 0):
    """(rows [n, d], sources [n, 4], mixing [4, d]): two Laplace and two uniform sources, mixed by
    a random matrix, off the origin."""
    g = torch.Generator().manual_seed(seed)
    laplace = -torch.log(torch.rand(n, 2, generator=g)) * torch.where(
        torch.rand(n, 2, generator=g) < 0.5, -1.0, 1.0)
    uniform = torch.rand(n, 2, generator=g) * 2 - 1
    sources = torch.cat([laplace, uniform], 1)
    mixing = torch.randn(4, d, generator=g)
    return sources @ mixing + 0.7, sources, mixing


def abs_corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|Pearson correlation| of every column of a with every column of b [a_cols, b_cols]."""
    a = (a - a.mean(0)) / a.std(0)
    b = (b - b.mean(0)) / b.std(0).clamp_min(1e-12)
    return (a.T @ b / (len(a) - 1)).abs()


def fitted(x: torch.Tensor, n_latents: int, seed: int = 0, **fields):
    sae = saelab.create("ica", d_in=x.shape[1], n_latents=n_latents, seed=seed, **fields)
    return saelab.fit(sae, x, saelab.TrainConfig(batch_size=500, epochs=1, progress=False))


def test_ica_unmixes_a_planted_mixture_of_independent_sources():
    x, sources, mixing = mixture()
    ica = fitted(x, n_latents=4)
    with torch.no_grad():
        codes = ica.encode(x)
    match = abs_corr(sources, codes).max(dim=1).values  # best latent for each source
    assert (match > 0.95).all(), match
    # and the atoms are the mixing rows, up to sign and scale
    unit = mixing / mixing.norm(dim=1, keepdim=True)
    assert ((unit @ ica.W_dec.detach().T).abs().max(dim=1).values > 0.95).all()


def test_atoms_are_unit_norm_ordered_by_code_spread_and_the_reconstruction_is_exact():
    x, _, _ = mixture(d=4)  # a square mixing: full rank
    ica = fitted(x, n_latents=4)
    with torch.no_grad():
        torch.testing.assert_close(ica.W_dec.norm(dim=1), torch.ones(4), rtol=1e-5, atol=0)
        spread = ica.encode(x).std(0)
        assert (spread[:-1] >= spread[1:]).all(), spread
        torch.testing.assert_close(ica(x).x_hat, x, rtol=0, atol=1e-4)


def test_latents_beyond_d_in_are_zero():
    x, _, _ = mixture(d=4)
    ica = fitted(x, n_latents=16)
    assert torch.equal(ica.W_dec[4:], torch.zeros(12, 4))
    assert torch.equal(ica.W_enc[4:], torch.zeros(12, 4))
    with torch.no_grad():
        torch.testing.assert_close(ica(x).x_hat, x, rtol=0, atol=1e-4)


def test_fit_reads_at_most_max_rows_rows_and_stops_there():
    x, _, _ = mixture()
    read = []

    def batches():
        for chunk in x.split(100):
            read.append(len(chunk))
            yield Rows(chunk)

    ica = saelab.create("ica", d_in=x.shape[1], n_latents=4, max_rows=1050)
    ica.fit(batches())
    assert sum(read) == 1100  # the 11th batch gives the last 50 rows; no 12th is read


def test_the_seed_of_create_decides_fasticas_random_state_and_the_weights():
    x, _, _ = mixture(n=2000)
    a, b, c = (fitted(x, 4, seed=s) for s in (0, 0, 1))
    assert int(a.random_state) == int(b.random_state) != int(c.random_state)
    for t1, t2 in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(t1, t2)


def test_the_random_state_is_saved_and_loaded(tmp_path):
    ica = saelab.create("ica", d_in=6, n_latents=4, seed=5)
    ica.save(tmp_path / "ica")
    assert int(saelab.load(tmp_path / "ica").random_state) == int(ica.random_state)


def test_a_bad_contrast_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match="fun"):
        saelab.create("ica", d_in=6, n_latents=4, fun="tanh")
