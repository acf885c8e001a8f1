"""PCA (saelab.dictionaries.pca): the variance it explains is an SVD's, fitted over several
batches through saelab.fit; all d_in components reconstruct exactly; atoms beyond d_in are zero;
whitening and the input-scale fold are consistent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import saelab
from saelab.errors import DataError

D = 12


def anisotropic(n: int = 2000, d: int = D, seed: int = 0) -> torch.Tensor:
    """Rows with distinct variances along a random orthonormal basis, off the origin."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    scales = torch.linspace(0.2, 3.0, d)
    return (torch.randn(n, d, generator=g) * scales) @ basis + 1.5


def svd_of(x: torch.Tensor):
    """Explained variance (unbiased), its ratio and the directions, by NumPy's SVD."""
    xc = x.double().numpy() - x.double().numpy().mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    return s**2 / (len(xc) - 1), s**2 / (s**2).sum(), vt


def fit(x: torch.Tensor, batch_size: int = 250, **fields):
    sae = saelab.create("pca", d_in=x.shape[1], n_latents=fields.pop("n_latents", x.shape[1]),
                        **fields)
    return saelab.fit(sae, x, saelab.TrainConfig(batch_size=batch_size, epochs=1,
                                                  progress=False))


def test_pca_explains_the_same_variance_as_numpy_svd_over_several_batches():
    x = anisotropic()  # 2,000 rows: 8 batches of 250
    pca = fit(x)
    variance, ratio, vt = svd_of(x)
    np.testing.assert_allclose(pca.explained_variance.double().numpy(), variance, rtol=1e-4)
    np.testing.assert_allclose(pca.explained_variance_ratio.double().numpy(), ratio, rtol=1e-4)
    total = pca.explained_variance_ratio.double().sum().item()
    assert total == pytest.approx(ratio.sum(), rel=1e-4) and total == pytest.approx(1, rel=1e-4)
    # the same directions, up to sign
    cos = (pca.W_dec.detach().double().numpy() * vt).sum(1)
    np.testing.assert_allclose(np.abs(cos), 1, atol=1e-4)


def test_fewer_latents_than_d_in_keep_the_svds_leading_directions_exactly():
    """exact=True (default) tracks all d_in directions over the batches and keeps the leading
    n_latents, so even a truncated PCA matches the SVD (IncrementalPCA tracking only n_latents
    would drift on the smaller components)."""
    x = anisotropic(n=4000)
    pca = fit(x, n_latents=4)
    _, ratio, vt = svd_of(x)
    np.testing.assert_allclose(pca.explained_variance_ratio.double().numpy(), ratio[:4],
                               rtol=1e-4)
    np.testing.assert_allclose(np.abs((pca.W_dec.detach().double().numpy() * vt[:4]).sum(1)), 1,
                               atol=1e-4)


@pytest.mark.parametrize("whiten", [False, True])
def test_reconstruction_with_all_d_in_components_is_exact(whiten):
    x = anisotropic()
    pca = fit(x, whiten=whiten)
    with torch.no_grad():
        torch.testing.assert_close(pca(x).x_hat, x, rtol=0, atol=2e-5)


def test_whitened_codes_have_unit_variance_and_plain_codes_the_explained_variance():
    x = anisotropic()
    plain, white = fit(x), fit(x, whiten=True)
    with torch.no_grad():
        torch.testing.assert_close(white.encode(x).var(0), torch.ones(D), rtol=1e-4, atol=0)
        torch.testing.assert_close(plain.encode(x).var(0), plain.explained_variance, rtol=1e-4,
                                   atol=0)


def test_atoms_beyond_d_in_are_zero_and_the_reconstruction_stays_exact():
    x = anisotropic()
    pca = fit(x, n_latents=3 * D)
    assert torch.equal(pca.W_dec[D:], torch.zeros(2 * D, D))
    assert torch.equal(pca.explained_variance[D:], torch.zeros(2 * D))
    with torch.no_grad():
        codes = pca.encode(x)
        assert codes.shape == (len(x), 3 * D)
        assert torch.equal(codes[:, D:], torch.zeros(len(x), 2 * D))
        torch.testing.assert_close(pca.decode(codes), x, rtol=0, atol=2e-5)


def test_batches_smaller_than_the_components_are_merged_and_give_the_same_fit():
    x = anisotropic(n=600)
    pca = saelab.create("pca", d_in=D, n_latents=D)
    pca.fit(x.split(5))  # 5 rows per batch, fewer than the 12 components
    variance, _, _ = svd_of(x)
    np.testing.assert_allclose(pca.explained_variance.double().numpy(), variance, rtol=1e-4)


def test_fewer_rows_than_components_keep_as_many_directions_as_rows():
    x = anisotropic(n=5)
    pca = saelab.create("pca", d_in=D, n_latents=D)
    pca.fit([x])
    assert (pca.W_dec.norm(dim=1) > 0).sum() == 5  # rank 4 after centring, plus a null direction
    with torch.no_grad():
        torch.testing.assert_close(pca(x).x_hat, x, rtol=0, atol=2e-5)


def test_one_row_is_refused():
    with pytest.raises(DataError, match="at least 2 rows"):
        saelab.create("pca", d_in=D, n_latents=D).fit([torch.randn(1, D)])


def test_fold_input_scale_turns_a_fit_on_scaled_rows_into_the_fit_on_the_rows():
    x = anisotropic()
    on_x, on_3x = fit(x, whiten=True), fit(3 * x, whiten=True)
    on_3x.fold_input_scale(3.0)
    with torch.no_grad():
        torch.testing.assert_close(on_3x.encode(x), on_x.encode(x), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(on_3x.explained_variance, on_x.explained_variance, rtol=1e-4,
                                   atol=0)


def test_saelab_train_fits_pca_from_a_store(model_dir, tmp_path):
    """`saelab train STORE --architecture pca` makes one pass of its own fit over the store and
    saves a PCA that reconstructs the store's rows exactly."""
    from saelab.cli import main
    from saelab.store import ActivationStore

    store, out = tmp_path / "store", tmp_path / "run"
    assert main(["capture", "--model", str(model_dir), "--hookpoints", "model.layers.0",
                 "--n-tokens", "1024", "--context-len", "64", "--out", str(store),
                 "--no-progress"]) == 0
    assert main(["train", str(store), "--architecture", "pca", "--n-latents", "64",
                 "--batch-size", "128", "--out", str(out), "--no-progress"]) == 0
    pca = saelab.load(out / "sae")
    assert pca.architecture == "pca" and pca.d_in == 32
    assert (pca.explained_variance[:32] > 0).all() and (pca.explained_variance[32:] == 0).all()
    x = torch.cat([acts for acts, _ in ActivationStore(store).iter_rows()]).float()
    with torch.no_grad():
        torch.testing.assert_close(pca(x).x_hat, x, rtol=0, atol=1e-3 * x.abs().max().item())
