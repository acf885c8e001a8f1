"""SAE-V pair scores (Lou et al. 2025) and the pairs they are measured on: a latent firing on the
same pairs on both sides weighs 1, one silent on a side 0; co-occurrence counts the latents
active on both sides; filtering keeps the best-scored pairs; separation is the AUROC of matched
over shuffled pairs; shuffled pairs give every text to an image of another concept; concept
consistency counts an image's latents that fire on its own concept's text against the others'."""

from __future__ import annotations

import pytest
import torch

from saelab.data.paired import label_sentence, paired_images, shuffled
from saelab.errors import DataError
from saelab.evaluate.sae_v import (cross_modal_weights, filter_pairs, sae_v_scores,
                                   separation)
from saelab.evaluate.vl_pairs import concept_consistency


def test_a_latent_on_the_same_pairs_on_both_sides_weighs_one_and_a_one_sided_latent_zero():
    image = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 0.0], [3.0, 0.0, 0.0]])
    text = torch.tensor([[2.0, 0.0, 1.0], [0.0, 0.0, 1.0], [6.0, 0.0, 0.0]])
    w = cross_modal_weights(image, text)
    torch.testing.assert_close(w, torch.tensor([1.0, 0.0, 0.0]))


def test_scores_count_shared_latents_weigh_them_and_compare_the_codes():
    image = torch.tensor([[1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    text = torch.tensor([[1.0, 0.0, 0.0, 2.0], [1.0, 0.0, 0.0, 0.0]])
    weights = torch.tensor([0.5, 0.1, 0.2, 0.25])
    s = sae_v_scores(image, text, weights)
    torch.testing.assert_close(s.cooccurrence, torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(s.weighted, torch.tensor([0.75, 0.0]))
    assert s.cosine[0] == pytest.approx(3 / (3 ** 0.5 * 5 ** 0.5)) and s.cosine[1] == 0
    with pytest.raises(DataError, match="one per latent"):
        sae_v_scores(image, text, torch.ones(3))
    with pytest.raises(DataError, match="row i of each for pair i"):
        sae_v_scores(image, text[:1])


def test_filtering_keeps_the_best_scored_share_in_order_and_separation_is_the_auroc():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.2])
    assert filter_pairs(scores, 0.4).tolist() == [1, 3]
    assert filter_pairs(scores, 0.01).tolist() == [1]
    with pytest.raises(DataError, match="share of pairs kept"):
        filter_pairs(scores, 0)
    assert separation(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert separation(torch.tensor([1.0, 4.0]), torch.tensor([2.0, 3.0])) == 0.5


def test_digit_pairs_name_their_digit_and_shuffled_pairs_give_each_text_another_concept():
    pairs = paired_images("digits", limit=30)
    assert pairs[7].text == "a photo of the digit seven" and pairs[7].concept == "7"
    assert all(p.text == label_sentence("digits", p.image.label) for p in pairs)
    mixed = shuffled(pairs, seed=1)
    assert [m.image.title for m in mixed] == [p.image.title for p in pairs]
    assert all(m.concept != p.concept and m.text != p.text for m, p in zip(mixed, pairs))
    with pytest.raises(DataError, match="no sentences for the labels of 'lfw'"):
        paired_images("lfw", limit=2)


def test_concept_consistency_counts_an_images_latents_on_its_concepts_text_against_others():
    # concept a: image latents {0, 1}, its text {0, 2}; concept b: image {3, 4}, text {3, 4}
    image = torch.tensor([[1.0, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 0]])
    text = torch.tensor([[1.0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 0]])
    c = concept_consistency(image, text, ["a", "b"])
    assert c.matched == pytest.approx((0.5 + 1.0) / 2)
    assert c.other_concepts == 0.0
    assert c.random_latents == pytest.approx(2 / 6)
    with pytest.raises(DataError, match="at least two concepts"):
        concept_consistency(image, text, ["a", "a"])


def test_pairs_are_embedded_as_the_vision_models_pooled_output_and_each_text_once(tmp_path):
    from saelab.data.pixels import pixel_values
    from saelab.evaluate.vl_pairs import embed_pairs
    from saelab.models import load
    from tests.capture.vision import save_tiny_vit

    vit = load(str(save_tiny_vit(tmp_path / "vit")))
    pairs = paired_images("digits", limit=5)
    seen = []

    def encoder(texts):
        seen.extend(texts)
        return torch.stack([torch.full((3,), float(len(t))) for t in texts])

    emb = embed_pairs(pairs, vit, encoder)
    with torch.no_grad():
        pooled = vit.model(pixel_values=pixel_values([p.image for p in pairs],
                                                     vit.processor)).pooler_output
    torch.testing.assert_close(emb.image, pooled)
    assert sorted(seen) == sorted({p.text for p in pairs})
    assert emb.text[:, 0].tolist() == [float(len(p.text)) for p in pairs]
    assert emb.concepts == [p.concept for p in pairs]
    with pytest.raises(DataError, match="not a vision model"):
        embed_pairs(pairs, vit._replace(kind="encoder"), encoder)
