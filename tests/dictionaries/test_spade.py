"""SpaDE: sparsemax over negative scaled squared distances to learned prototypes, trained with
the reference's distance-weighted L1 penalty."""

from __future__ import annotations

import math

import pytest
import torch

import saelab
from saelab.dictionaries import StepState
from saelab.errors import ConfigError
from saelab.ops.sparsemax import sparsemax, sparsemax_threshold


def test_sparsemax_is_the_projection_onto_the_simplex():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(200, 12, generator=g) * 2
    p = sparsemax(s)
    assert (p >= 0).all() and torch.allclose(p.sum(-1), torch.ones(200), atol=1e-6)
    assert (p == 0).any(-1).float().mean() > 0.5  # exact zeros on most rows
    # optimality of a Euclidean projection: <s - p, q - p> <= 0 for any q on the simplex
    q = torch.rand(200, 50, 12, generator=g)
    q = q / q.sum(-1, keepdim=True)
    inner = ((s - p)[:, None, :] * (q - p[:, None, :])).sum(-1)
    assert inner.max() <= 1e-5
    # a point already on the simplex is its own projection; a constant shift changes nothing
    assert torch.allclose(sparsemax(q[:, 0]), q[:, 0], atol=1e-6)
    assert torch.allclose(sparsemax(s + 3.0), p, atol=1e-5)
    # on the support, s - p is the row's threshold tau
    tau = sparsemax_threshold(s).expand_as(s)
    assert torch.allclose((s - p)[p > 0], tau[p > 0], atol=1e-5)


def test_sparsemax_gradient_matches_autograd_of_the_closed_form():
    s = torch.randn(6, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert torch.autograd.gradcheck(sparsemax, (s.requires_grad_(),))


def make(**fields):
    torch.manual_seed(0)
    return saelab.create("spade", d_in=8, n_latents=32, **fields)


def test_codes_sum_to_one_per_input_and_have_exact_zeros():
    sae = make(init_scale=4.0)
    x = torch.randn(100, 8, generator=torch.Generator().manual_seed(1))
    sae.init_from_data(x)
    codes = sae.encode(x)
    assert (codes >= 0).all()
    assert torch.allclose(codes.sum(-1), torch.ones(100), atol=1e-5)
    assert ((codes == 0).sum(-1) > 0).all()
    assert (codes > 0).sum(-1).float().mean() < 32 / 2


def test_larger_scale_means_fewer_active_latents():
    x = torch.randn(100, 8, generator=torch.Generator().manual_seed(1))
    l0 = []
    for scale in (0.1, 1.0, 10.0):
        sae = make(init_scale=scale)
        sae.init_from_data(x)
        l0.append((sae.encode(x) > 0).sum(-1).float().mean().item())
    assert l0[0] > l0[1] > l0[2] >= 1


def test_input_scale_folds_into_prototypes_and_lambda():
    sae = make(init_scale=2.0)
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(3))
    sae.init_from_data(3.0 * x)
    scaled = sae(3.0 * x)
    sae.fold_input_scale(3.0)
    raw = sae(x)
    assert torch.allclose(raw.codes, scaled.codes, atol=1e-5)
    assert torch.allclose(raw.x_hat * 3.0, scaled.x_hat, atol=1e-4)


def ring_and_centre(n=2000, d=8, seed=0):
    """A 1-D concept (a circle of radius 2 in the first two coordinates) around a 0-D one (a
    tight cluster at its centre). The centre lies inside the ring's convex hull, so no
    half-space (a ReLU latent's receptive field) holds the cluster without ring points."""
    g = torch.Generator().manual_seed(seed)
    angle = torch.rand(n, generator=g) * 2 * math.pi
    ring = torch.zeros(n, d)
    ring[:, 0], ring[:, 1] = 2 * angle.cos(), 2 * angle.sin()
    centre = 0.05 * torch.randn(n // 4, d, generator=g)
    ring = ring + 0.05 * torch.randn(n, d, generator=g)
    return ring, centre


@pytest.fixture(scope="module")
def trained_on_ring():
    ring, centre = ring_and_centre()
    data = torch.cat([ring, centre])[torch.randperm(2500, generator=torch.Generator()
                                                    .manual_seed(1))]
    torch.manual_seed(0)
    sae = saelab.create("spade", d_in=8, n_latents=24, init_scale=4.0)
    sae = saelab.fit(sae, data, saelab.TrainConfig(steps=300, batch_size=256, seed=0,
                                                   progress=False))
    return sae, ring, centre, data


def test_spade_isolates_a_concept_that_is_not_linearly_separable(trained_on_ring):
    sae, ring, centre, _ = trained_on_ring
    on_centre = (sae.encode(centre) > 0).float().mean(0)  # [n_latents]
    on_ring = (sae.encode(ring) > 0).float().mean(0)
    # some latent fires on (nearly) every centre row and on (almost) no ring row
    isolating = (on_centre > 0.9) & (on_ring < 0.01)
    assert isolating.any(), (on_centre.max(), on_ring[on_centre.argmax()])
    # no half-space does that: in every direction some ring point projects beyond the centre
    w = torch.randn(1000, 8, generator=torch.Generator().manual_seed(2))
    assert ((ring @ w.T).max(0).values > (centre.mean(0) @ w.T)).all()


def test_number_of_active_latents_varies_with_the_input(trained_on_ring):
    sae, ring, centre, data = trained_on_ring
    l0 = (sae.encode(torch.cat([ring, centre])) > 0).sum(-1)
    # unlike TopK's fixed k, the support size adapts: some rows use one latent, others several
    assert (l0 == 1).any() and (l0 >= 3).any()
    # the penalty trades some reconstruction for sparsity (FVU 0.14 at the default gamma)
    assert saelab.evaluate(sae, data)["reconstruction"]["fvu"] < 0.2


def test_loss_reports_l0_and_active_latents():
    sae = make(init_scale=4.0)
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    sae.init_from_data(x)
    loss = sae.loss(x, StepState())
    assert loss.metrics["l0"] >= 1 and loss.active.dtype == torch.bool
    loss.total.backward()
    assert sae.lambda_pre.grad is not None and sae.W_enc.grad is not None


def test_lambda_starts_at_one_over_2d_on_the_references_standardised_data():
    d = 16
    sae = saelab.create("spade", d_in=d, n_latents=32)
    assert math.isclose(float(sae.scale.detach()), 1 / (2 * d), rel_tol=1e-5)  # softplus(lambda_pre)
    # data standardised as the reference does: mean 0, mean squared norm d
    x = torch.randn(500, d, generator=torch.Generator().manual_seed(0)) * 3 + 1
    x = x - x.mean(0)
    x = x * math.sqrt(d / x.pow(2).sum(-1).mean())
    sae.init_from_data(x)
    assert math.isclose(float(sae.scale.detach()), 1 / (2 * d), rel_tol=1e-4)
    # prototypes: N(0, 1) per coordinate there, atoms equal to prototypes, no decoder offset
    protos = sae.W_enc.detach()
    assert 0.8 < float(protos.std()) < 1.2 and abs(float(protos.mean())) < 0.1
    assert torch.equal(sae.W_enc, sae.W_dec) and (sae.b_dec == 0).all()
    # the same initial scores on data of another scale: lambda follows 1 / (2 E||x - mean||^2)
    sae.init_from_data(x / math.sqrt(d))
    assert math.isclose(float(sae.scale.detach()), 0.5, rel_tol=1e-4)
    assert math.isclose(float(saelab.create("spade", d_in=d, n_latents=8, init_scale=3.0).scale.detach()),
                        3.0, rel_tol=1e-5)


def test_penalty_is_gamma_times_code_weighted_squared_distances_to_the_prototypes():
    sae = make(gamma=0.7)
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    sae.init_from_data(x)
    loss = sae.loss(x, StepState())
    codes = sae.encode(x)
    dist = (x[:, None, :] - sae.W_enc[None]).pow(2).sum(-1)  # [B, n_latents]
    assert torch.allclose(loss.terms["distance_l1"], (codes * dist).sum(-1).mean(), rtol=1e-4)
    assert torch.allclose(loss.total, loss.terms["mse"] + 0.7 * loss.terms["distance_l1"])


def gaussian_clusters(n, d=8, n_clusters=6, seed=0):
    """Clusters of different intrinsic dimension: cluster c spreads over c + 1 random
    directions around a random centre."""
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(n_clusters, d, generator=g)
    label = torch.randint(n_clusters, (n,), generator=g)
    x = centres[label].clone()
    for c in range(n_clusters):
        rows = label == c
        basis = torch.linalg.qr(torch.randn(d, c + 1, generator=g)).Q  # [d, c + 1]
        x[rows] += torch.randn(int(rows.sum()), c + 1, generator=g) @ basis.T
    return x


def test_penalty_lowers_l0_monotonically_in_gamma():
    x = gaussian_clusters(3000)
    train, held = x[:2500], x[2500:]
    l0 = []
    for gamma in (0.0, 0.1, 1.0):
        torch.manual_seed(0)
        sae = saelab.create("spade", d_in=8, n_latents=32, gamma=gamma)
        sae = saelab.fit(sae, train, saelab.TrainConfig(steps=200, batch_size=256, seed=0,
                                                        progress=False))
        l0.append(float((sae.encode(held) > 0).sum(-1).float().mean()))
    print("held-out L0 at gamma 0, 0.1, 1:", l0)
    assert l0[0] > l0[1] > l0[2], l0
    assert l0[0] > 1.5 * l0[2], l0


def test_bad_fields_are_config_errors_naming_them():
    for field, value in [("init_scale", 0.0), ("init_scale", float("inf")),
                         ("init_noise", -1.0), ("learn_scale", 1), ("gamma", -0.1),
                         ("init", "kmeans")]:
        with pytest.raises(ConfigError, match=field):
            saelab.create("spade", d_in=8, n_latents=16, **{field: value})
