"""VL-SAE (Shen et al. 2025): the shared encoder reads only the input's direction (2 minus the
distance of unit vectors), each modality is reconstructed by its own decoder, modality labels
are checked, training on two modalities gives a concept's image and text the same latents, and
the alignment step brings paired rows of two unrelated spaces together."""

from __future__ import annotations

import pytest
import torch

import saelab
from saelab.dictionaries import StepState
from saelab.dictionaries.vl_sae import (Alignment, distance_activations, fit_alignment,
                                       modality_labels)
from saelab.errors import DataError
from saelab.evaluate.vl_pairs import codes_of, concept_consistency


def make(**kw):
    return saelab.create("vl_sae", **{"d_in": 16, "n_latents": 64, "k": 4, "seed": 0, **kw})


def test_codes_are_the_top_k_of_two_minus_the_distance_of_unit_vectors_whatever_the_norm():
    sae = make()
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(5))
    unit_x = torch.nn.functional.normalize(x.double(), dim=1)
    unit_w = torch.nn.functional.normalize(sae.W_enc.detach().double(), dim=1)
    expected = (2 - (unit_x[:, None] - unit_w[None]).norm(dim=-1)).float()  # [5, 64]
    torch.testing.assert_close(distance_activations(x, sae.W_enc), expected, atol=1e-5, rtol=0)
    codes = sae.encode(x)
    assert ((codes != 0).sum(1) == 4).all()
    kept = codes != 0
    torch.testing.assert_close(codes[kept], expected[kept], atol=1e-5, rtol=0)
    assert (codes[kept].min() >= expected.topk(4, dim=1).values.min(1).values.min() - 1e-6)
    torch.testing.assert_close(sae.encode(7.5 * x), codes)  # the norm does not matter


def test_rows_labelled_text_are_reconstructed_by_the_text_decoder_only():
    sae = make()
    with torch.no_grad():
        sae.W_dec_text.zero_()
        sae.b_dec_text.fill_(3.0)
    x = torch.randn(6, 16, generator=torch.Generator().manual_seed(1))
    modality = torch.tensor([0, 1, 0, 1, 1, 0])
    loss = sae.loss(x, StepState(extra={"labels": modality.float()}))
    text_error = (x[modality == 1] - 3.0).pow(2).sum(1).mean()
    image_error = (sae(x[modality == 0]).x_hat - x[modality == 0]).pow(2).sum(1).mean()
    torch.testing.assert_close(loss.terms["mse_text"], text_error)
    torch.testing.assert_close(loss.terms["mse_image"], image_error)
    torch.testing.assert_close(sae.decode_as(sae.encode(x), modality.bool())[1],
                               torch.full((16,), 3.0))


def test_labels_other_than_one_modality_per_row_are_refused():
    sae = make()
    x = torch.randn(4, 16)
    for labels in (torch.tensor([0.0, 2.0, 1.0, 0.0]), torch.zeros(4, 2), torch.zeros(3)):
        with pytest.raises(DataError, match="modality, 0 \\(image\\) or 1 \\(text\\)"):
            sae.loss(x, StepState(extra={"labels": labels}))


def concept_pairs(n: int, seed: int):
    """Images and texts of 8 concepts: each side a concept direction plus that modality's own
    offset and noise, the text's concept directions a fixed rotation of the image's."""
    g = torch.Generator().manual_seed(seed)
    concepts = torch.randint(0, 8, (n,), generator=g)
    centres = torch.randn(8, 16, generator=torch.Generator().manual_seed(99)) * 2
    image = centres[concepts] + torch.randn(n, 16, generator=g) * 0.3 + 1.0
    text = centres[concepts] + torch.randn(n, 16, generator=g) * 0.3 - 1.0
    return image, text, [str(int(c)) for c in concepts]


def test_training_on_both_modalities_gives_a_concepts_image_and_text_shared_latents():
    image, text, concepts = concept_pairs(1024, 0)
    data = saelab.train.Labelled(torch.cat([image, text]), modality_labels(len(image), len(text)))
    sae = saelab.fit(make(k=4), data, saelab.TrainConfig(steps=300, batch_size=256, lr=1e-2,
                                                         seed=0, progress=False))
    held_image, held_text, held_concepts = concept_pairs(256, 1)
    c = concept_consistency(codes_of(sae, held_image), codes_of(sae, held_text), held_concepts)
    assert c.matched > 2 * c.other_concepts and c.matched > 2 * c.random_latents, c
    with torch.no_grad():  # each decoder reconstructs its own modality better than the other
        codes = sae.encode(held_text)
        own = (sae.decode_text(codes) - held_text).pow(2).sum(1).mean()
        other = (sae.decode(codes) - held_text).pow(2).sum(1).mean()
    assert own < other


def test_alignment_brings_the_pairs_of_two_unrelated_spaces_together_and_saves(tmp_path):
    image, _, concepts = concept_pairs(512, 2)
    rotation = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(3)))[0]
    text = image @ rotation * 5 + 2  # the same content in another basis, scale and offset
    fit = fit_alignment(image, text, concepts, steps=150, batch_size=128, lr=1e-2)
    zi = torch.nn.functional.normalize(fit.alignment.project_image(image), dim=1)
    zt = torch.nn.functional.normalize(fit.alignment.project_text(text), dim=1)
    same = torch.tensor([[a == b for b in concepts] for a in concepts])
    sim = zi @ zt.T
    before = torch.nn.functional.normalize(image, dim=1) @ torch.nn.functional.normalize(text,
                                                                                          dim=1).T
    assert sim[same].mean() - sim[~same].mean() > 0.5
    assert sim[same].mean() - sim[~same].mean() > before[same].mean() - before[~same].mean() + 0.3
    path = tmp_path / "alignment.safetensors"
    fit.alignment.save(path)
    back = Alignment.load(path)
    assert torch.equal(back.project_text(text), fit.alignment.project_text(text))
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(DataError, match="not an alignment written by Alignment.save"):
        Alignment.load(tmp_path / "junk.safetensors")
