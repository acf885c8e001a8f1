"""MP-SAE: matching pursuit in the encoder (Costa et al. 2025) — orthogonal residuals, monotone
reconstruction, adaptive sparsity at inference, and hierarchical recovery against TopK."""

from __future__ import annotations

import itertools

import pytest
import torch

import saelab
from saelab.data.synthetic import planted
from saelab.dictionaries import StepState
from saelab.errors import ConfigError
from saelab.ops import sparse_decode


def make(**fields):
    torch.manual_seed(0)
    sae = saelab.create("mp", **{"d_in": 16, "n_latents": 64, "k": 8, **fields})
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.1)
    return sae


def residuals_after_each_step(sae, x, steps):
    """Residual [steps, B, d] after each pursuit step, and the atom chosen at each step
    [steps, B]. MP is greedy, so the first t steps of a k-step pursuit are the t-step pursuit."""
    codes = sae.pursue(x, k=steps).codes
    out = []
    for t in range(1, steps + 1):
        part = sparse_decode(codes.values[:, :t], codes.indices[:, :t], sae.W_dec)
        out.append(x - sae.b_dec - part)
    return torch.stack(out), codes.indices.T


@pytest.mark.parametrize("selection", ["positive", "absolute"])
@torch.no_grad()
def test_residual_after_each_step_is_orthogonal_to_the_atom_chosen(selection):
    sae = make(selection=selection)
    x = torch.randn(200, 16)
    residuals, chosen = residuals_after_each_step(sae, x, 8)
    atoms = sae.W_dec[chosen]  # [steps, B, d]
    dots = torch.linalg.vecdot(residuals, atoms)  # [steps, B]
    assert dots.abs().max() < 1e-5 * x.norm(dim=1).max()
    # and the step is not trivial: the atom was aligned with the residual before the step
    before = torch.cat([(x - sae.b_dec)[None], residuals[:-1]])
    assert torch.linalg.vecdot(before, atoms).abs().mean() > 0.1


@torch.no_grad()
def test_residual_norm_never_increases():
    sae = make(k=16)
    x = torch.randn(300, 16) * 3
    residuals, _ = residuals_after_each_step(sae, x, 16)
    norms = torch.cat([(x - sae.b_dec).norm(dim=-1)[None], residuals.norm(dim=-1)])  # [17, B]
    assert (norms[1:] <= norms[:-1] + 1e-5).all()
    assert (norms[-1] < norms[0]).all()


def test_more_steps_at_inference_lower_the_reconstruction_error(planted):
    sae = saelab.fit(saelab.create("mp", d_in=32, n_latents=128, k=3), planted.x,
                     saelab.TrainConfig(steps=60, batch_size=512, progress=False))
    x = planted.x[:2000]
    with torch.no_grad():
        errors = [(sae(x, k=k).x_hat - x).pow(2).sum(-1).mean().item()
                  for k in (1, 2, 3, 6, 12)]
        l0 = [(sae.encode(x, k=k) != 0).sum(-1).float().mean().item() for k in (1, 12)]
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    assert l0[0] <= 1 and l0[1] > 3


@torch.no_grad()
def test_codes_are_inner_products_with_the_residual_and_accumulate_on_repeats():
    torch.manual_seed(0)
    sae = saelab.create("mp", d_in=2, n_latents=3, k=3, selection="absolute")
    with torch.no_grad():  # three atoms in a plane: pursuit comes back to earlier atoms
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]))
        sae.b_dec.zero_()
    x = torch.randn(500, 2)
    codes, residual = sae.pursue(x, k=10)
    r = x.clone()
    for t in range(10):  # a plain, loop-by-loop matching pursuit
        atom = sae.W_dec[codes.indices[:, t]]
        assert torch.allclose(codes.values[:, t], torch.linalg.vecdot(atom, r), atol=1e-5)
        r = r - codes.values[:, t, None] * atom
    assert torch.allclose(residual, r, atol=1e-5)
    repeats = [len(set(row.tolist())) < 10 for row in codes.indices]
    assert all(repeats)
    dense = sae.encode(x, k=10)
    expected = torch.zeros(500, 3).index_put_((torch.arange(500)[:, None].expand(-1, 10),
                                               codes.indices), codes.values, accumulate=True)
    assert torch.allclose(dense, expected, atol=1e-6)
    assert torch.allclose(sae(x, k=10).x_hat, x - residual, atol=1e-5)


@torch.no_grad()
def test_positive_selection_gives_non_negative_codes_absolute_gives_signed():
    x = torch.randn(300, 16)
    assert (make(selection="positive").encode(x) >= 0).all()
    assert (make(selection="absolute").encode(x) < 0).any()


@torch.no_grad()
def test_residual_tol_stops_each_row_once_its_residual_is_small_enough():
    sae = make(k=20)
    x = torch.randn(300, 16)
    full = sae.pursue(x)
    early = sae.pursue(x, tol=0.5)
    start = (x - sae.b_dec).norm(dim=1)
    # every step taken was taken while the residual was still above the tolerance
    residuals, _ = residuals_after_each_step(sae, x, 20)
    taken = early.codes.values != 0  # [B, steps]
    before = torch.cat([start[None], residuals[:-1].norm(dim=-1)]).T  # [B, steps]
    assert (before[taken] > 0.5 * start[:, None].expand_as(before)[taken] - 1e-5).all()
    # and a row stops only when it is there: the others took every step
    reached = early.residual.norm(dim=1) <= 0.5 * start + 1e-5
    assert taken[~reached].all()
    assert reached.float().mean() > 0.5 and taken.sum() < (full.codes.values != 0).sum()


def test_gradient_through_the_unrolled_steps_matches_finite_differences():
    torch.manual_seed(0)
    sae = saelab.create("mp", d_in=6, n_latents=12, k=4).double()
    x = torch.randn(5, 6, dtype=torch.float64)

    def f(W_dec, b_dec):  # the chosen atoms are constant near W, b: only the codes move
        out = torch.func.functional_call(sae, {"W_dec": W_dec, "b_dec": b_dec}, (x,))
        return (out.x_hat - x).pow(2).sum() + out.codes.sum()

    W = sae.W_dec.detach().clone().requires_grad_()
    b = (torch.randn(6, dtype=torch.float64) * 0.1).requires_grad_()
    assert torch.autograd.gradcheck(f, (W, b), eps=1e-6, atol=1e-6)


def test_auxk_sends_gradient_only_to_dead_atoms():
    sae = make()
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:10] = True
    loss = sae.loss(torch.randn(256, 16), StepState(dead_mask=dead))
    assert loss.terms["auxk"] > 0
    loss.terms["auxk"].backward()
    touched = sae.W_dec.grad.abs().sum(1) > 0
    assert touched[:10].any() and not touched[10:].any()


def test_loss_trains_the_dictionary_and_reports_l0(planted):
    sae = saelab.create("mp", d_in=32, n_latents=128, k=3)
    loss = sae.loss(planted.x[:512], StepState())
    assert 0 < loss.metrics["l0"] <= 3 and loss.active.sum() > 0
    loss.total.backward()
    assert sae.W_dec.grad.abs().sum() > 0 and sae.b_dec.grad.abs().sum() > 0


@torch.no_grad()
def test_folding_the_input_scale_gives_the_same_dictionary_on_raw_inputs():
    sae = make()
    x, s = torch.randn(50, 16) * 7 + 2, 0.13
    scaled = sae(x * s)
    sae.fold_input_scale(s)
    out = sae(x)
    assert torch.allclose(out.x_hat, scaled.x_hat / s, atol=1e-4)
    assert torch.allclose(out.codes, scaled.codes / s, atol=1e-4)


def test_mp_recovers_parent_child_pairs_at_least_as_well_as_topk():
    data = planted(n=20_000, d=32, n_atoms=128, mean_active=3, n_parents=16,
                   children_per_parent=2, seed=0)
    child = data.parents >= 0
    result = {}
    for name in ("topk", "mp"):
        torch.manual_seed(0)
        sae = saelab.create(name, d_in=32, n_latents=256, k=4)
        sae = saelab.fit(sae, data.x, saelab.TrainConfig(steps=500, batch_size=512, lr=4e-3,
                                                         progress=False))
        learned = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
        found = (data.atoms @ learned.T).max(1).values > 0.9
        result[name] = ((found[data.parents[child]] & found[child]).float().mean().item(),
                        found.float().mean().item())
    assert result["mp"][0] >= result["topk"][0], result  # parent/child pairs
    assert result["mp"][1] >= result["topk"][1], result  # all planted directions


def test_config_and_inference_arguments_are_validated():
    with pytest.raises(ConfigError, match="k"):
        saelab.create("mp", d_in=8, n_latents=16, k=17)
    with pytest.raises(ConfigError, match="selection"):
        saelab.create("mp", d_in=8, n_latents=16, k=4, selection="largest")
    with pytest.raises(ConfigError, match="residual_tol"):
        saelab.create("mp", d_in=8, n_latents=16, k=4, residual_tol=1.0)
    with pytest.raises(ConfigError, match="d_out"):
        saelab.create("mp", d_in=8, n_latents=16, k=4, d_out=4)
    sae = saelab.create("mp", d_in=8, n_latents=16, k=4)
    with pytest.raises(ConfigError, match="k"):
        sae.encode(torch.randn(3, 8), k=0)
    with pytest.raises(ConfigError, match="tol"):
        sae(torch.randn(3, 8), tol=-0.1)


@pytest.mark.parametrize("selection", ["positive", "absolute"])
def test_gram_matrix_updates_choose_the_same_atoms_as_recomputed_scores(selection):
    """The fast path (scores updated through the atoms' Gram matrix) is the same pursuit."""
    from saelab.ops.matching_pursuit import matching_pursuit

    torch.manual_seed(0)
    W = torch.randn(256, 32)  # rows of unequal norms: codes are <W_i, r> / |W_i|^2
    xc = torch.randn(300, 32)
    direct = matching_pursuit(xc, W, 12, selection == "absolute", 0.0, gram=False)
    gram = matching_pursuit(xc, W, 12, selection == "absolute", 0.0, gram=True)
    assert torch.equal(direct.indices, gram.indices)
    assert torch.allclose(direct.values, gram.values, atol=1e-5)
