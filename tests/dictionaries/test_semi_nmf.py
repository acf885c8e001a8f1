"""semi_nmf: the full-batch solver never raises its objective (Ding et al.'s updates), codes are
non-negative, features keep their winner-take-all sparsity, an exact semi-NMF product is
recovered, and fit reads no more than max_rows rows."""

from __future__ import annotations

import itertools

import pytest
import torch

import saelab
from saelab.dictionaries.semi_nmf import nonnegative_codes, semi_nmf_solve
from saelab.errors import ConfigError


def planted_product(n: int = 400, d: int = 24, k: int = 6, seed: int = 0,
                    dtype=torch.float64) -> torch.Tensor:
    """X = Z W with Z >= 0 sparse [n, k] and W of any sign [k, d]: an exact semi-NMF."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(k, d, generator=g)  # first: the same features for any n
    Z = torch.rand(n, k, generator=g) * (torch.rand(n, k, generator=g) < 0.4)
    return (Z @ W).to(dtype)


def fvu(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    return ((x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()


def test_objective_never_rises_on_the_full_batch_solver():
    X = planted_product() + 0.1 * torch.randn(400, 24, generator=torch.Generator().manual_seed(5),
                                              dtype=torch.float64)
    result = semi_nmf_solve(X, 8, iterations=150, ridge=0.0,
                            generator=torch.Generator().manual_seed(0))
    obj = torch.tensor(result.objectives, dtype=torch.float64)
    assert len(obj) == 150
    assert (obj[1:] <= obj[:-1] * (1 + 1e-10)).all(), (obj[1:] - obj[:-1]).max()
    assert obj[-1] < 0.5 * obj[0]  # and it does descend
    direct = (X - result.codes @ result.features).pow(2).sum().item()
    assert direct == pytest.approx(obj.min().item(), rel=1e-8)


def test_fit_history_never_rises_for_plain_semi_nmf_and_codes_are_nonnegative():
    X = planted_product(seed=1)
    sae = saelab.create("semi_nmf", 24, 8, sparsity=1.0, iterations=100, patience=100).double()
    sae.fit(X.split(100))
    history = torch.tensor(sae.history, dtype=torch.float64)
    assert (history[1:] <= history[:-1] * (1 + 1e-7)).all()
    with torch.no_grad():
        codes = sae.encode(X)
    assert (codes >= 0).all() and (codes > 0).any()


def test_exact_semi_nmf_data_is_reconstructed_by_fit_and_encode():
    X = planted_product(seed=2)
    sae = saelab.create("semi_nmf", 24, 6, sparsity=1.0).double()
    sae.fit([X])
    with torch.no_grad():
        assert fvu(sae(X).x_hat, X) < 1e-3
        new = planted_product(n=50, seed=2)  # same features, fresh rows: encode solves for them
        assert fvu(sae(new).x_hat, new) < 1e-3


def test_features_keep_their_share_of_neurons_and_codes_stay_nonnegative_with_sparsity():
    X = planted_product(n=300, d=40, k=6, seed=3, dtype=torch.float32)
    sae = saelab.create("semi_nmf", 40, 10, sparsity=0.1, min_neurons=2, iterations=60)
    sae.fit(X.split(64))
    assert sae.cfg.neurons_per_feature() == 4
    assert ((sae.W_dec != 0).sum(-1) <= 4).all()
    result = semi_nmf_solve(X, 10, keep=4, iterations=30, generator=torch.Generator())
    assert (result.codes >= 0).all()
    assert (nonnegative_codes(X, sae.W_dec, 20) >= 0).all()


def test_fit_reads_no_more_than_max_rows():
    X = planted_product(n=1000, dtype=torch.float32)
    batches = iter(X.split(100))
    sae = saelab.create("semi_nmf", 24, 6, max_rows=250, iterations=5)
    sae.fit(batches)
    assert len(list(batches)) == 7  # 3 of 10 batches read (the third in part)


def test_the_creation_seed_decides_the_fit():
    X = planted_product(n=200, dtype=torch.float32)
    fits = [saelab.create("semi_nmf", 24, 6, seed=s, iterations=20) for s in (0, 0, 1)]
    for sae in fits:
        sae.fit([X])
    assert torch.equal(fits[0].W_dec, fits[1].W_dec)
    assert not torch.equal(fits[0].W_dec, fits[2].W_dec)


def test_bad_fields_and_data_are_refused_naming_them():
    with pytest.raises(ConfigError, match="sparsity"):
        saelab.create("semi_nmf", 8, 4, sparsity=0.0)
    with pytest.raises(ConfigError, match="d_out"):
        saelab.create("semi_nmf", 8, 4, d_out=6)
    with pytest.raises(saelab.errors.DataError, match="width 5"):
        saelab.create("semi_nmf", 8, 4).fit([torch.randn(10, 5)])
    with pytest.raises(saelab.errors.DataError, match="no rows"):
        saelab.create("semi_nmf", 8, 4).fit(itertools.chain())
