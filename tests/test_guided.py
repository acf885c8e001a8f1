"""G-SAE (`guided`): the guided latents predict their concept labels, the supervised term is what
makes them do so, labels reach the loss through `fit(sae, Labelled(x, labels))`, and plain
activations are refused while the guidance is on."""

from __future__ import annotations

import pytest
import torch

import saelab
from saelab.dictionaries import StepState
from saelab.dictionaries.guided import detection_auc, row_labels
from saelab.errors import ConfigError, DataError
from saelab.train.data import Labelled

D, N_ATOMS, GROUP, N_GUIDED = 64, 128, 4, 4


def concept_data(n: int = 8000, seed: int = 0):
    """Planted data (3 of 128 unit atoms per row, magnitudes 0.5-1.5) and concept labels:
    concept c is present when any atom of group c (atoms GROUP*c .. GROUP*c+GROUP-1) is active,
    a topic spread over several directions, which no single dictionary atom captures."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(N_ATOMS, D, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    idx = torch.stack([torch.randperm(N_ATOMS, generator=g)[:3] for _ in range(n)])
    mags = torch.rand(n, 3, generator=g) + 0.5
    codes = torch.zeros(n, N_ATOMS).scatter_(1, idx, mags)
    labels = torch.stack([(codes[:, GROUP * c:GROUP * (c + 1)] > 0).any(1)
                          for c in range(N_GUIDED)], 1).float()
    return codes @ atoms, labels


def test_plain_activations_are_refused_while_guidance_is_on():
    x, _ = concept_data(600)
    sae = saelab.create("guided", d_in=D, n_latents=32, k=4, n_guided=N_GUIDED)
    cfg = saelab.TrainConfig(steps=2, batch_size=128, progress=False)
    with pytest.raises(ConfigError, match="labels"):
        saelab.fit(sae, x, cfg)
    off = saelab.create("guided", d_in=D, n_latents=32, k=4, n_guided=N_GUIDED, guide_coeff=0.0)
    saelab.fit(off, x, cfg)  # no guidance: plain activations are fine


def test_config_fields_are_validated_by_name():
    with pytest.raises(ConfigError, match="n_guided"):
        saelab.create("guided", d_in=D, n_latents=32, k=4, n_guided=33)
    with pytest.raises(ConfigError, match="guide_coeff"):
        saelab.create("guided", d_in=D, n_latents=32, k=4, n_guided=2, guide_coeff=-1.0)
    with pytest.raises(ConfigError, match="k"):
        saelab.create("guided", d_in=D, n_latents=32, k=31, n_guided=2)


def train(x, labels, guide_coeff: float, steps: int = 500, n_latents: int = 64, k: int = 4):
    torch.manual_seed(0)
    sae = saelab.create("guided", d_in=D, n_latents=n_latents, k=k, n_guided=N_GUIDED,
                        guide_coeff=guide_coeff)
    cfg = saelab.TrainConfig(steps=steps, batch_size=256, lr=4e-3, progress=False)
    return saelab.fit(sae, Labelled(x, labels), cfg)


def test_guided_latents_detect_their_concepts_better_than_any_topk_latent():
    x, labels = concept_data()
    train_x, test_x, test_y = x[:6000], x[6000:], labels[6000:]
    guided = train(train_x, labels[:6000], guide_coeff=1.0)
    torch.manual_seed(0)
    topk = saelab.create("topk", d_in=D, n_latents=64, k=4)
    saelab.fit(topk, train_x, saelab.TrainConfig(steps=500, batch_size=256, lr=4e-3,
                                                 progress=False))
    with torch.no_grad():  # each latent's score: its encoder output before the sparsity
        s_guided, s_topk = guided.concept_scores(test_x), topk.pre_activations(test_x)
    for c in range(N_GUIDED):
        own = detection_auc(s_guided[:, c:c + 1], test_y[:, c]).item()
        best_topk = detection_auc(s_topk, test_y[:, c]).max().item()
        assert own > 0.85, (c, own)
        assert own > best_topk + 0.1, (c, own, best_topk)


def test_the_supervised_term_is_what_guides_the_latents():
    x, labels = concept_data(4000)
    on = train(x[:3000], labels[:3000], guide_coeff=1.0, steps=300)
    off = train(x[:3000], labels[:3000], guide_coeff=0.0, steps=300)
    with torch.no_grad():
        auc_on = detection_auc(on.concept_scores(x[3000:]), labels[3000:, 0])[0].item()
        auc_off = detection_auc(off.concept_scores(x[3000:]), labels[3000:, 0])[0].item()
    assert auc_on > auc_off + 0.2, (auc_on, auc_off)
    # the term's gradient reaches the guided encoder rows only
    sae = saelab.create("guided", d_in=D, n_latents=32, k=4, n_guided=N_GUIDED)
    xb = x[:64] / x[:64].pow(2).sum(-1).mean().sqrt()
    grads = []
    for extra in ({}, {"labels": labels[:64]}):
        sae.zero_grad()
        sae.loss(xb, StepState(extra=extra)).total.backward()
        grads.append(sae.W_enc.grad.clone())
    diff = (grads[1] - grads[0]).abs().sum(1)
    assert (diff[:N_GUIDED] > 0).all() and torch.equal(diff[N_GUIDED:], torch.zeros(32 - N_GUIDED))


def test_labels_of_the_wrong_shape_are_refused():
    x, labels = concept_data(600)
    sae = saelab.create("guided", d_in=D, n_latents=32, k=4, n_guided=N_GUIDED)
    with pytest.raises(DataError, match="n_guided"):
        sae.loss(x[:8], StepState(extra={"labels": labels[:8, :2]}))
    cfg = saelab.TrainConfig(steps=2, batch_size=128, progress=False)
    with pytest.raises(DataError, match="labels"):
        saelab.fit(sae, Labelled(x, labels[:10]), cfg)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        saelab.fit(sae, Labelled(x, labels * 2), cfg)


def test_row_labels_from_document_topics():
    doc_ids = torch.tensor([-1, 0, 0, 1, 2, 2, 3])
    labels, concepts = row_labels(doc_ids, ["People", "Mathematics", None, "People"])
    assert concepts == ["Mathematics", "People"]
    assert labels.tolist() == [[0, 0], [0, 1], [0, 1], [1, 0], [0, 0], [0, 0], [0, 1]]
    only, _ = row_labels(doc_ids, ["People", "Mathematics", None, "People"], ["People"])
    assert only[:, 0].tolist() == [0, 1, 1, 0, 0, 0, 1]
