"""The spliced-loss conditions share the forward up to the hookpoint: the layers before it run
once per batch, the layers after it on the clean and replaced activations stacked, and the figures
equal those of one whole forward per condition. Where the rest of the model cannot take the
stacked batch (a module inside a residual block), each condition gets its own forward."""

from __future__ import annotations

import importlib

import pytest
import torch

import saelab
from saelab.capture.exclude import Exclusion
from saelab.evaluate import spliced_loss
from tests.conftest import tiny_llama

HP = "model.layers.1"
splice = importlib.import_module("saelab.evaluate.splice")


@pytest.fixture(scope="module")
def lm():
    return tiny_llama()


@pytest.fixture
def tokens():
    return torch.randint(2, 64, (12, 16), generator=torch.Generator().manual_seed(4))


def _rows_seen(model):
    """Batch sizes each layer ran on, recorded by forward pre-hooks."""
    seen = {i: [] for i in range(len(model.model.layers))}
    handles = [layer.register_forward_pre_hook(
        lambda mod, args, kw, i=i: seen[i].append((args[0] if args else kw["hidden_states"])
                                                  .shape[0]), with_kwargs=True)
        for i, layer in enumerate(model.model.layers)]
    return seen, handles


def _run(lm, tokens, hookpoint, dictionary, separate, monkeypatch, **kw):
    if separate:
        def refuse(*args, **kwargs):
            raise splice._NotShared("forced")
        monkeypatch.setattr(splice, "_shared_pass", refuse)
    seen, handles = _rows_seen(lm)
    try:
        return spliced_loss(lm, tokens, hookpoint, dictionary, batch_contexts=4, **kw), seen
    finally:
        for h in handles:
            h.remove()
        monkeypatch.undo()


def test_shared_forward_gives_the_figures_of_separate_forwards(lm, tokens, monkeypatch):
    torch.manual_seed(0)
    sae = saelab.create("topk", d_in=32, n_latents=64, k=4).eval()
    exclusion = Exclusion(special_ids=[2, 3], norm_factor=None)
    mean = torch.randn(32)
    shared, seen = _run(lm, tokens, HP, sae, False, monkeypatch, exclusion=exclusion, mean=mean)
    apart, seen_apart = _run(lm, tokens, HP, sae, True, monkeypatch, exclusion=exclusion,
                             mean=mean)
    # the first batch's clean forward alone (the yardstick of the speed) and its 3 conditions
    # stacked after the hookpoint; then, per batch of 4 contexts, before the hookpoint once,
    # after it on 4 stacked copies
    assert seen[0] == seen[1] == [4, 4, 4, 4] and seen[2] == seen[3] == [4, 12, 16, 16]
    assert seen_apart[0] == [4] * 12  # clean + 3 conditions, 3 batches, each whole
    assert shared.keys() == apart.keys()
    for key in (k for k in shared if not k.endswith("_per_s")):  # speeds differ
        assert shared[key] == pytest.approx(apart[key], rel=1e-5, abs=1e-6), key
    assert shared["ce_loss_spliced"] != pytest.approx(shared["ce_loss_clean"])  # not trivial
    assert shared["splice_tokens_per_s"] > 0 and shared["bare_forward_tokens_per_s"] > 0


def test_a_module_inside_a_residual_block_falls_back_to_separate_forwards(lm, tokens,
                                                                         monkeypatch):
    mlp = "model.layers.1.mlp.down_proj"
    tc = saelab.create("transcoder", d_in=64, d_out=32, n_latents=48, k=4).eval()
    res, seen = _run(lm, tokens, f"{mlp}:input", tc, False, monkeypatch, target_hookpoint=mlp)
    apart, _ = _run(lm, tokens, f"{mlp}:input", tc, True, monkeypatch, target_hookpoint=mlp)
    assert max(seen[3]) == 4  # never stacked: the residual add cannot take it
    for key in (k for k in res if not k.endswith("_per_s")):
        assert res[key] == pytest.approx(apart[key], rel=1e-6, abs=1e-7, nan_ok=True), key


def test_ablated_ce_and_kl_equal_the_formula_by_hand(lm, tokens):
    """CE of the next token and KL(clean || ablated) per predicted token, written out from two
    plain forwards (the clean one and one with the layer's output zeroed), against the figures
    of spliced_loss (every position kept)."""
    from saelab.capture import resolve
    from saelab.capture.patch import patch

    sae = saelab.create("topk", d_in=32, n_latents=64, k=4).eval()
    res = spliced_loss(lm, tokens, HP, sae, batch_contexts=5)
    with torch.no_grad():
        clean = torch.log_softmax(lm(input_ids=tokens).logits[:, :-1].float(), -1)
        with patch(lm, resolve(lm, [HP])[0], torch.zeros_like):
            ablated = torch.log_softmax(lm(input_ids=tokens).logits[:, :-1].float(), -1)
    nxt = tokens[:, 1:, None]
    ce = -ablated.gather(-1, nxt).mean()
    kl = (clean.exp() * (clean - ablated)).sum(-1).mean()
    assert res["ce_loss_clean"] == pytest.approx(float(-clean.gather(-1, nxt).mean()), rel=1e-5)
    assert res["ce_loss_ablated"] == pytest.approx(float(ce), rel=1e-5)
    assert res["kl_ablated"] == pytest.approx(float(kl), rel=1e-4)
    assert float(kl) > 1e-3  # the ablation changes the predictions: the check can fail
