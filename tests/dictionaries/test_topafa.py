"""Top-AFA SAE: the number of active latents is chosen per input by matching the code's norm to
the input's (the AFA), within the AFA bound; and the AFA evaluation of activation norms."""

from __future__ import annotations

import pytest
import torch

import saelab
from saelab.errors import ConfigError
from saelab.evaluate.afa import afa_report
from saelab.ops.afa import afa_bounds, coherence, top_afa_counts


def orthonormal_sae(d: int = 16, seed: int = 0):
    """A top-AFA SAE whose atoms are an orthonormal basis (eps = 0), encoder tied, biases 0."""
    torch.manual_seed(seed)
    sae = saelab.create("topafa", d_in=d, n_latents=d)
    Q = torch.linalg.qr(torch.randn(d, d)).Q  # orthonormal columns
    with torch.no_grad():
        sae.W_dec.copy_(Q.T)
        sae.W_enc.copy_(Q.T)
    return sae.eval()


def sparse_inputs(sae, n: int = 200, seed: int = 1):
    """Rows with 1 to 6 atoms active, positive magnitudes in [0.5, 1.5]; and their codes."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.zeros(n, sae.n_latents)
    support = torch.randint(1, 7, (n,), generator=g)
    for i, s in enumerate(support.tolist()):
        idx = torch.randperm(sae.n_latents, generator=g)[:s]
        codes[i, idx] = torch.rand(s, generator=g) + 0.5
    return codes @ sae.W_dec.detach(), codes, support


def test_topafa_active_count_varies_with_the_input_and_finds_the_true_support():
    sae = orthonormal_sae()
    x, true_codes, support = sparse_inputs(sae)
    codes = sae.encode(x)
    l0 = (codes != 0).sum(-1)
    assert len(set(l0.tolist())) >= 5  # no fixed k: 1 to 6 latents, as the inputs need
    assert torch.equal(l0, support)
    assert torch.allclose(codes, true_codes, atol=1e-5)


def test_topafa_choice_is_the_prefix_whose_norm_is_closest_to_the_input_norm():
    torch.manual_seed(0)
    sae = saelab.create("topafa", d_in=16, n_latents=64)
    x = torch.randn(100, 16) * torch.linspace(0.1, 3, 100)[:, None]
    pre = sae.pre_activations(x).detach()
    z_norm = (x - sae.b_dec).norm(dim=-1)
    codes = sae.encode(x)
    contrib = torch.sort(pre.clamp_min(0).pow(2), descending=True).values  # unit atoms
    prefix_norms = contrib.cumsum(-1).sqrt()  # [B, n]: norm of the first j latents
    for b in range(100):
        j = int((codes[b] != 0).sum())
        best = (prefix_norms[b] - z_norm[b]).abs()
        assert best[j - 1] <= best.min() + 1e-5  # brute force agrees with the selection
    l0 = (codes != 0).sum(-1)
    assert l0.max() > l0.min()


def test_afa_bounds_hold_for_quasi_orthogonal_atoms():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(512, 256, generator=g)
    W = W / W.norm(dim=1, keepdim=True)
    eps = coherence(W)
    assert 0 < eps < 0.5
    for k in (1, 2, 3):
        f = torch.zeros(1000, 512)
        for i in range(1000):
            f[i, torch.randperm(512, generator=g)[:k]] = torch.randn(k, generator=g)
        z_norm = (f @ W).norm(dim=-1)
        lower, upper = afa_bounds(z_norm, eps, k)
        f_norm = f.norm(dim=-1)
        assert (f_norm >= lower - 1e-5).all() and (f_norm <= upper + 1e-5).all()
    # and the bound is a real constraint: a code twice too large falls outside it
    lower, upper = afa_bounds(z_norm, eps, 3)
    assert (2 * f_norm > upper).all()


def test_top_afa_counts_ignore_latents_that_do_not_fire():
    pre = torch.tensor([[3.0, -1.0, -2.0, 0.0]])
    _, count = top_afa_counts(pre, torch.tensor([100.0]), torch.ones(4), k_max=4)
    assert int(count) == 1  # the norm target is far away, but only one latent is positive


def test_afa_report_sees_over_activation():
    """A TopK SAE (fixed k, so it cannot adapt its codes' norm) on an orthonormal basis: codes
    match the AFA; doubling the encoder makes them twice too large, outside the AFA bound."""
    torch.manual_seed(0)
    ref = orthonormal_sae()
    sae = saelab.create("topk", d_in=16, n_latents=16, k=6)
    sae.load_state_dict({k: v for k, v in ref.state_dict().items()})
    x, _, _ = sparse_inputs(ref)
    r = afa_report(sae, x)
    assert r["afa_ratio_median"] == pytest.approx(1.0, abs=1e-4)
    assert r["afa_over"] == 0 and r["afa_under"] == 0
    assert r["decoder_coherence"] < 1e-5 and r["epsilon_lbo_max"] < 1e-3
    with torch.no_grad():
        sae.W_enc.mul_(2)  # codes twice as large ...
        sae.W_dec.div_(2)  # ... on atoms half as long: f counted in unit atoms is unchanged
    assert afa_report(sae, x)["afa_ratio_median"] == pytest.approx(1.0, abs=1e-4)
    with torch.no_grad():
        sae.W_dec.mul_(2)  # now the codes really are over-activated
    r = afa_report(sae, x)
    assert r["afa_ratio_median"] == pytest.approx(2.0, rel=1e-3) and r["afa_over"] == 1.0


def test_afa_is_a_metric_family_of_evaluate():
    torch.manual_seed(0)
    ref = orthonormal_sae()
    sae = saelab.create("topk", d_in=16, n_latents=16, k=6)
    sae.load_state_dict(ref.state_dict())
    with torch.no_grad():
        sae.W_dec.mul_(2)  # over-activated codes, so the figures are not all trivial
    x, _, _ = sparse_inputs(ref)
    report = saelab.evaluate(sae, x, batch_size=7, metrics=("reconstruction", "sparsity", "afa"))
    expected = afa_report(sae, x)
    assert expected["afa_over"] == 1.0
    for key, value in expected.items():  # streamed over batches of 7 = all rows at once
        assert report["afa"][key] == pytest.approx(value, rel=1e-6), key
    assert "afa" not in saelab.evaluate(sae, x)  # not a default family


def closest_prefix_holds(sae, x) -> bool:
    """Whether every row's active count is a prefix length whose norm is closest to ||z||."""
    pre = sae.pre_activations(x).detach()
    z_norm = (x - sae.b_dec).detach().norm(dim=-1)
    l0 = (sae.encode(x) != 0).sum(-1)
    contrib = torch.sort((pre.clamp_min(0) * sae.W_dec.detach().norm(dim=-1)).pow(2),
                         descending=True).values
    dist = (contrib.cumsum(-1).sqrt() - z_norm[:, None]).abs()  # [B, n] per prefix length
    chosen = dist.gather(1, (l0 - 1).clamp_min(0)[:, None]).squeeze(1)
    return bool((chosen <= dist.min(-1).values + 1e-5 * z_norm + 1e-6).all())


def test_trained_topafa_still_follows_the_afa_with_a_variable_l0(planted):
    x = planted.x[:6144]
    sae = saelab.fit(saelab.create("topafa", d_in=32, n_latents=128), x[:4096],
                     saelab.TrainConfig(steps=200, batch_size=256, seed=0, progress=False))
    l0 = (sae.encode(x[4096:]) != 0).sum(-1)
    assert l0.max() >= l0.min() + 3  # varies with the input
    assert closest_prefix_holds(sae, x[4096:])


def test_afa_loss_is_the_authors_formula_by_hand():
    # Lee et al.'s training/sae.py: l2 = mean over rows and features of the squared error,
    # afa = afa_coeff * mean over rows of (||f|| - ||x||)^2, with x the input (not x - b_dec);
    # saelab's MSE sums over features, so the same objective is d_out x (l2 + afa)
    sae = orthonormal_sae(d=4)
    with torch.no_grad():
        sae.b_dec.copy_(torch.tensor([0.5, -0.5, 0.0, 1.0]))
    sae.cfg.auxk_coeff = 0.0
    x = torch.tensor([[2.0, 0.0, 1.0, 3.0], [0.0, 1.0, -1.0, 0.5]])
    out = sae.train().loss(x, saelab.dictionaries.StepState())
    codes = sae.encode(x).detach()  # the top-AFA selection, ReLU'd pre-activations
    x_hat = codes @ sae.W_dec.detach() + sae.b_dec.detach()
    l2 = (x_hat - x).pow(2).mean()
    afa = (codes.norm(dim=-1) - x.norm(dim=-1)).pow(2).mean()
    coeff = sae.cfg.afa_coeff
    torch.testing.assert_close(out.terms["afa"], afa)
    torch.testing.assert_close(out.total, 4 * (l2 + coeff * afa))
    # saelab's options: target ||x - b_dec||, and afa_coeff against the summed MSE
    sae.cfg.afa_target, sae.cfg.afa_weight = "centered", "summed_mse"
    out = sae.loss(x, saelab.dictionaries.StepState())
    centered = (codes.norm(dim=-1) - (x - sae.b_dec.detach()).norm(dim=-1)).pow(2).mean()
    torch.testing.assert_close(out.total, 4 * l2 + coeff * centered)


@pytest.mark.parametrize("field,value", [("k_max", 0), ("k_max", 65), ("afa_coeff", -1.0),
                                         ("afa_target", "x"), ("afa_weight", "mean")])
def test_topafa_bad_fields_are_named(field, value):
    with pytest.raises(ConfigError, match=field):
        saelab.create("topafa", d_in=16, n_latents=64, **{field: value})
