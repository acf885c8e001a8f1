"""Parity with SAEBench's own probing and TPP functions, run on the same tensors (skipped where
sae-bench is not installed: `pip install --no-deps sae-bench==0.6.0 tabulate`; its other
dependencies are saelab's dev ones).

SAEBench balances each one-vs-rest set by drawing negatives with torch's RNG. With two classes of
equal size the balanced set is every text of both classes (only its order is random), so the two
implementations see the same rows and must agree: the latents chosen exactly, accuracies and TPP
figures to 1e-6, latent effects and ablated activations to 1e-5 (float32 sums in another order).
"""

from __future__ import annotations

import pytest
import torch

import saelab
from saelab.evaluate._probe import accuracy, fit_probe
from saelab.evaluate.sparse_probing import sparse_probes, top_k_mean_diff
from saelab.evaluate.tpp import (ablate, decoder_directions, latent_effects, select_latents,
                                 tpp_figures)

probe_training = pytest.importorskip(
    "sae_bench.evals.sparse_probing.probe_training",
    reason="sae-bench is not installed: pip install --no-deps sae-bench==0.6.0 tabulate")


def two_classes(n=60, d=24, seed=0):
    """Pooled activations of two equal classes that differ in a few dimensions."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.arange(2).repeat_interleave(n)
    acts = torch.rand(2 * n, d, generator=g)
    acts[targets == 1, :3] += torch.tensor([0.3, 0.2, 0.1])
    return acts, targets


def test_top_k_selection_matches_saebench():
    acts, targets = two_classes()
    y = targets.int()
    for k in (1, 2, 5, 20):
        mask = probe_training.get_top_k_mean_diff_mask(acts, y, k)  # False on the chosen
        assert set((~mask).nonzero()[:, 0].tolist()) == set(top_k_mean_diff(acts, y, k).tolist())


def test_sparse_probe_accuracies_match_saebench_probe_pipeline():
    """SAEBench's `train_probe_on_activations` steps one by one (prepare_probe_data,
    get_top_k_mean_diff_mask, apply_topk_mask_reduce_dim, train_sklearn_probe): the function
    itself cannot be called here, because jaxtyping 0.3 binds its dimension name
    "train_dataset_size" to the per-class size and then refuses the balanced set of twice that
    size in the nested train_sklearn_probe call."""
    acts, targets = two_classes(n=80)
    train = torch.ones(len(targets), dtype=torch.bool)
    train[torch.cat([torch.arange(0, 20), torch.arange(80, 100)])] = False  # 20 of each held out
    ours = sparse_probes(acts, acts, targets, train, ks=(1, 2, 5))
    train_d = {str(c): acts[train & (targets == c)] for c in (0, 1)}
    test_d = {str(c): acts[~train & (targets == c)] for c in (0, 1)}
    for row, c in enumerate(ours.classes):
        tr_x, tr_y = probe_training.prepare_probe_data(train_d, str(c))
        te_x, te_y = probe_training.prepare_probe_data(test_d, str(c))
        for j, k in enumerate((1, 2, 5)):
            mask = probe_training.get_top_k_mean_diff_mask(tr_x, tr_y, k)
            _, theirs = probe_training.train_sklearn_probe(
                probe_training.apply_topk_mask_reduce_dim(tr_x, mask), tr_y,
                probe_training.apply_topk_mask_reduce_dim(te_x, mask), te_y)
            assert ours.sparse[row, j].item() == pytest.approx(theirs, abs=1e-6), (c, k)


def test_probe_accuracy_matches_saebench_train_sklearn_probe():
    acts, targets = two_classes()
    y = targets.int()
    _, theirs = probe_training.train_sklearn_probe(acts[::2], y[::2], acts[1::2], y[1::2])
    ours = accuracy(fit_probe(acts[::2], targets[::2]), acts[1::2], targets[1::2])
    assert ours == pytest.approx(theirs, abs=1e-6)


# --- TPP -------------------------------------------------------------------------------------
tpp_main = pytest.importorskip("sae_bench.evals.scr_and_tpp.main")


class TokenSAE:
    """A saelab SAE as SAEBench calls one: encode and decode on [B, L, D], W_dec [F, D]."""

    def __init__(self, sae):
        self.sae, self.W_dec = sae, sae.W_dec

    def encode(self, x):
        return self.sae.encode(x.flatten(0, -2)).view(*x.shape[:-1], -1)

    def decode(self, f):
        return self.sae.decode(f.flatten(0, -2)).view(*f.shape[:-1], -1)


@pytest.fixture(scope="module")
def token_acts():
    """Token activations [texts, tokens, d] of two equal classes, and an SAE on them."""
    g = torch.Generator().manual_seed(3)
    acts = torch.randn(2, 30, 6, 16, generator=g)
    acts[1, :, :, :4] += 1.0  # class "1" is shifted along a few dimensions
    sae = saelab.create("topk", d_in=16, n_latents=64, k=8, seed=0)
    return {"0": acts[0], "1": acts[1]}, sae


def test_latent_effects_match_saebench(token_acts):
    acts, sae = token_acts
    probe = probe_training.Probe(16, torch.float32)
    weight = torch.randn(16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        probe.net.weight.copy_(weight[None])
        theirs = tpp_main.get_effects_per_class_precomputed_acts(
            TokenSAE(sae), probe, "1", acts, perform_scr=False, sae_batch_size=7)
        pooled = {c: sae.encode(a.flatten(0, 1)).view(30, 6, -1).mean(1) for c, a in acts.items()}
    codes = torch.cat([pooled["1"], pooled["0"]])
    y = torch.cat([torch.ones(30), torch.zeros(30)]).long()
    ours = latent_effects(codes, y, weight, decoder_directions(sae))
    assert torch.allclose(ours, theirs, atol=1e-5)
    for n in (2, 5, 20):
        chosen = tpp_main.select_top_n_features(theirs, n, "1")
        assert set(chosen.nonzero()[:, 0].tolist()) == set(select_latents(ours, n).tolist())


def test_pooled_ablation_matches_saebench(token_acts):
    acts, sae = token_acts
    x = acts["1"]
    mask = torch.zeros(64, dtype=torch.bool)
    mask[[1, 7, 30, 63]] = True
    with torch.no_grad():
        theirs = tpp_main.ablated_precomputed_activations(x, TokenSAE(sae), mask, 7)
        codes = sae.encode(x.flatten(0, 1)).view(30, 6, -1).mean(1)
        ours = ablate(x.mean(1), codes, decoder_directions(sae), mask.nonzero()[:, 0])
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_tpp_figures_match_saebench_create_tpp_plotting_dict():
    g = torch.Generator().manual_seed(5)
    names, thresholds = ["a", "b", "c"], (2, 20)
    clean = 0.7 + 0.3 * torch.rand(3, generator=g)
    ablated = 0.5 + 0.5 * torch.rand(2, 3, 3, generator=g)
    class_acc = {names[i]: {n: {names[j]: float(ablated[t, i, j]) for j in range(3)}
                            for t, n in enumerate(thresholds)} for i in range(3)}
    theirs, _ = tpp_main.create_tpp_plotting_dict(
        class_acc, {names[i]: float(clean[i]) for i in range(3)})
    ours = tpp_figures(clean, ablated, thresholds)
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key
