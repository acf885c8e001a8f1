"""ITDA (Leask et al. 2025): atoms are rows of the data chosen by the reference's rules (recurring
rows first, then rows matching pursuit over the atoms approximates worse than the threshold),
each atom names its row, encoding is classic matching pursuit with k steps, and the Jaccard
similarity of the atoms' rows compares two dictionaries."""

from __future__ import annotations

import pytest
import torch

import saelab
from saelab.dictionaries.itda import ITDA, itda_jaccard
from saelab.errors import ConfigError, DataError


def make(d_in: int = 32, n_latents: int = 512, **fields) -> ITDA:
    return saelab.create("itda", d_in=d_in, n_latents=n_latents, **fields)


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def recurring_planted(seed: int, n: int = 2048, d: int = 32, p: int = 8):
    """Rows [n, d]: a quarter are planted points themselves (the same vector recurring, as the
    activation of a repeated context does), the rest positive combinations of 2 or 3 of them."""
    g = torch.Generator().manual_seed(seed)
    points = unit(torch.randn(p, d, generator=g))
    rank = torch.rand(n, p, generator=g).argsort(1).argsort(1)  # a random order per row
    active = rank < torch.randint(2, 4, (n, 1), generator=g)  # 2 or 3 points per row
    x = (active * (0.5 + torch.rand(n, p, generator=g))) @ points
    pure = torch.rand(n, generator=g) < 0.25
    x[pure] = points[torch.randint(0, p, (int(pure.sum()),), generator=g)]
    return x, points


def low_rank(seed: int, n: int = 4096, d: int = 32, rank: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, rank, generator=g) @ torch.randn(rank, d, generator=g)


def naive_matching_pursuit(x: torch.Tensor, atoms: torch.Tensor, k: int) -> torch.Tensor:
    """Classic MP written plainly (dense scores each step, largest |inner product|, signed codes
    accumulated): dense codes [B, n_atoms] over unit atoms."""
    residual = x.clone()
    codes = torch.zeros(x.shape[0], atoms.shape[0], dtype=x.dtype)
    rows = torch.arange(x.shape[0])
    for _ in range(k):
        scores = residual @ atoms.T
        best = scores.abs().argmax(dim=1)
        a = scores[rows, best]
        codes[rows, best] += a
        residual -= a[:, None] * atoms[best]
    return codes


# --- fitting ----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recurring_planted_points_are_recovered_as_atoms(seed):
    x, points = recurring_planted(seed)
    d = make()
    d.fit(x.split(256))
    cos = points @ d.W_dec[:d.n_atoms].T  # [p, n_atoms]
    assert cos.max(dim=1).values.min() > 0.99
    assert d.n_atoms < x.shape[0] // 2  # selective: most rows are not atoms


def test_each_atom_is_the_row_it_names_scaled_to_unit_norm_and_unfilled_atoms_are_empty():
    x = low_rank(0, n=1000, rank=24)
    d = make(n_latents=256)
    d.fit(x.split(100))  # row indices must count across batches
    n = d.n_atoms
    assert 0 < n <= 256 and (d.atom_rows[:n] >= 0).all()
    rows = d.atom_rows[:n]
    assert rows.unique().numel() == n and rows.max() < 1000
    torch.testing.assert_close(d.W_dec[:n], unit(x[rows]))
    assert (d.W_dec[n:] == 0).all() and (d.atom_rows[n:] == -1).all()


def test_a_second_fit_continues_the_row_numbering_and_the_dictionary():
    x = low_rank(1, n=1200, rank=24)
    once = make(n_latents=2048)
    once.fit(x.split(200))
    twice = make(n_latents=2048)
    twice.fit(x[:600].split(200))
    twice.fit(x[600:].split(200))
    assert int(twice.rows_seen) == 1200
    assert torch.equal(once.atom_rows, twice.atom_rows) and torch.equal(once.W_dec, twice.W_dec)


def axes_0_to_7() -> torch.Tensor:
    """16 distinct rows [16, 16] along the first 8 axes (3 e_i and 5 e_i): a first batch that
    fills the d_in = 16 atoms of the frequency step with those axes only."""
    basis = torch.eye(16)[:8]
    return torch.cat([3 * basis, 5 * basis])


def test_a_row_the_atoms_cannot_approximate_is_added_and_one_they_can_is_not():
    d = make(d_in=16, n_latents=64, k=4, loss_threshold=1e-4)
    d.fit([axes_0_to_7()])
    assert d.n_atoms == 16  # the first batch's 16 distinct rows (up to d_in: all of them)
    basis = torch.eye(16)
    inside = (basis[0] + 2 * basis[3]).unsqueeze(0)  # 2 atoms reproduce it exactly
    outside = (basis[0] + basis[12]).unsqueeze(0)  # half of it is on an axis no atom covers
    d.fit([torch.cat([inside, outside])])
    assert d.n_atoms == 17
    assert d.atom_rows[16] == 16 + 1  # the second row of the second batch
    torch.testing.assert_close(d.W_dec[16], unit(outside[0]))


def test_when_free_atoms_run_short_the_worst_approximated_rows_are_added_first():
    d = make(d_in=16, n_latents=17, k=1, loss_threshold=1e-4)
    d.fit([axes_0_to_7()])
    basis = torch.eye(16)
    slightly = unit(basis[0] + 0.2 * basis[12]).unsqueeze(0)  # cos 0.98 with an atom
    badly = unit(basis[0] + basis[13]).unsqueeze(0)  # cos 0.71
    d.fit([torch.cat([slightly, badly])])  # one free atom, two rows above the threshold
    assert d.n_atoms == 17 and int(d.atom_rows[16]) == 16 + 1
    torch.testing.assert_close(d.W_dec[16], badly[0])


def test_fit_stops_reading_once_the_dictionary_is_full():
    read = []

    def batches():
        for i, b in enumerate(torch.randn(10, 64, 16).unbind(0)):
            read.append(i)
            yield b

    d = make(d_in=16, n_latents=32)
    d.fit(batches())
    assert d.n_atoms == 32 and len(read) < 10


def test_fit_through_saelab_fit_is_deterministic():
    x = low_rank(2, n=2048, rank=24)
    cfg = saelab.TrainConfig(steps=6, batch_size=256, seed=3, progress=False)
    a = saelab.fit(make(n_latents=256), x, cfg)
    b = saelab.fit(make(n_latents=256), x, cfg)
    assert a.n_atoms > 32
    for (name, t1), t2 in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(t1, t2), name


def test_bad_batches_are_refused_with_a_data_error():
    d = make(d_in=16, n_latents=32)
    with pytest.raises(DataError, match="d_in=16"):
        d.fit([torch.randn(8, 15)])
    bad = torch.randn(8, 16)
    bad[3, 2] = float("nan")
    with pytest.raises(DataError, match="non-finite"):
        d.fit([bad])


def test_config_checks_name_the_field():
    with pytest.raises(ConfigError, match="loss_threshold"):
        make(loss_threshold=-1.0)
    with pytest.raises(ConfigError, match="k"):
        make(k=0)
    with pytest.raises(ConfigError, match="d_out"):
        saelab.create("itda", d_in=16, n_latents=32, d_out=8)


# --- encoding ---------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3, 7])
def test_encode_uses_at_most_k_atoms_per_row(k):
    d = make(n_latents=256, k=k)
    d.fit(low_rank(3, n=2048, rank=24).split(256))
    assert d.n_atoms > 3 * k
    codes = d.encode(low_rank(4, n=300, rank=24))
    active = (codes != 0).sum(dim=1)
    assert active.max() <= k and active.max() == k  # the bound is reached, not just respected
    assert (codes[:, d.n_atoms:] == 0).all()  # unfilled atoms are never selected
    assert ((d.encode(low_rank(4, n=300, rank=24), k=1) != 0).sum(dim=1) <= 1).all()


def test_encode_is_classic_matching_pursuit_over_the_unit_atoms():
    d = make(n_latents=256, k=8)
    d.fit(low_rank(5, n=2048, rank=24).split(256))
    x = low_rank(6, n=200, rank=24)
    expected = naive_matching_pursuit(x, d.W_dec[:d.n_atoms], 8)
    codes = d.encode(x)
    torch.testing.assert_close(codes[:, :d.n_atoms], expected, rtol=1e-4, atol=1e-4)
    assert (codes < 0).any()  # signed codes, as the authors' encoder
    torch.testing.assert_close(d(x).x_hat, expected @ d.W_dec[:d.n_atoms], rtol=1e-4, atol=1e-4)


def test_an_empty_dictionary_encodes_to_zero():
    d = make(d_in=16, n_latents=32)
    x = torch.randn(5, 16)
    assert (d.encode(x) == 0).all() and (d(x).x_hat == 0).all()


# --- Jaccard similarity -----------------------------------------------------------------------
def with_novel_rows(seed: int, n: int = 4096, d: int = 32, novel: float = 0.02) -> torch.Tensor:
    """Rank-8 rows, 2% of them replaced by full-rank ones of the same size: the rows a dictionary
    has to add as it reads (at positions that differ between two such datasets)."""
    g = torch.Generator().manual_seed(seed)
    x = low_rank(seed, n, d)
    odd = torch.rand(n, generator=g) < novel
    x[odd] = torch.randn(int(odd.sum()), d, generator=g) * x.norm(dim=1).mean() / d ** 0.5
    return x


def fitted(x: torch.Tensor) -> ITDA:
    d = make(n_latents=1024)
    d.fit(x.split(512))
    assert 64 < d.n_atoms < 1024  # grew past the first batch's d_in rows, never full
    return d


def test_jaccard_of_a_dictionary_with_itself_is_one():
    d = fitted(with_novel_rows(7))
    assert itda_jaccard(d, d) == 1.0


def test_jaccard_with_a_dictionary_of_the_same_rows_rescaled_is_one():
    """The threshold compares directions, so doubling every activation picks the same rows."""
    x = with_novel_rows(8)
    assert itda_jaccard(fitted(x), fitted(2 * x)) == 1.0


def test_jaccard_with_a_dictionary_of_the_same_rows_plus_small_noise_is_high():
    x = with_novel_rows(9)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g) * 0.01 * x.norm(dim=1).mean() / x.shape[1] ** 0.5
    assert itda_jaccard(fitted(x), fitted(x + noise)) > 0.7


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_jaccard_with_a_dictionary_of_unrelated_activations_is_near_zero(seed):
    assert itda_jaccard(fitted(with_novel_rows(10 + seed)), fitted(with_novel_rows(100 + seed))) \
        < 0.1


def test_jaccard_of_sequences_compares_the_unions_of_their_rows():
    a, b = fitted(with_novel_rows(20)), fitted(with_novel_rows(21))
    A = {int(r) for r in a.atom_rows if r >= 0}
    B = {int(r) for r in b.atom_rows if r >= 0}
    assert itda_jaccard([a, b], [b, a]) == 1.0
    assert itda_jaccard([a], [a, b]) == pytest.approx(len(A) / len(A | B))


def test_jaccard_refuses_other_dictionaries_and_empty_ones():
    topk = saelab.create("topk", d_in=32, n_latents=64, k=4)
    with pytest.raises(ConfigError, match="ITDA"):
        itda_jaccard(fitted(with_novel_rows(30)), topk)
    with pytest.raises(DataError, match="fit"):
        itda_jaccard(make(), make())
