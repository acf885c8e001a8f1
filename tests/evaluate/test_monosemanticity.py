"""The monosemanticity score (Pach et al. 2025): a unit firing on images of one cluster of the
embedding space scores above one firing on random images; pairs weigh the product of their
activations (as the reference's loop over pairs i < j); constant units have no score; the
family reads per-image maxima and the store model's own pooled embeddings from an image store,
and refuses data without image ids."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import saelab
from saelab.data.images import read_images
from saelab.data.pixels import pixel_values
from saelab.errors import ConfigError, DataError
from saelab.evaluate import family
from saelab.evaluate.monosemanticity import (image_embeddings, image_maxima, image_units,
                                             ms_scores, summarize)
from saelab.models import load
from saelab.pipeline import CaptureConfig, capture
from tests.capture.vision import save_tiny_vit, without_images

HP = "encoder.layer.0"


def pairwise_reference(acts: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """MS by the reference's loop: min-max per unit, then pairs i < j one by one."""
    a = (acts - acts.min(0).values) / (acts.max(0).values - acts.min(0).values)
    e = torch.nn.functional.normalize(emb.double(), dim=1)
    num = torch.zeros(acts.shape[1], dtype=torch.float64)
    den = torch.zeros_like(num)
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            w = a[i].double() * a[j].double()
            num += w * float(e[i] @ e[j])
            den += w
    return (num / den).float()


def clustered(n_per: int = 20, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of two tight clusters around orthogonal centres [2 n_per, dim] and the
    cluster of each image."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[:2] * 5
    cluster = torch.arange(2).repeat_interleave(n_per)
    return centres[cluster] + torch.randn(2 * n_per, dim, generator=g) * 0.5, cluster


def test_a_unit_firing_on_one_cluster_scores_above_one_firing_on_random_images():
    emb, cluster = clustered()
    g = torch.Generator().manual_seed(1)
    strength = torch.rand(len(emb), generator=g) + 0.5
    on_cluster = torch.where(cluster == 0, strength, 0.0)
    random_pick = torch.randperm(len(emb), generator=g)[:20]
    on_random = torch.zeros(len(emb)).index_put_((random_pick,), strength[random_pick])
    scores = ms_scores(torch.stack([on_cluster, on_random], 1), emb)
    within = torch.nn.functional.normalize(emb[cluster == 0], dim=1)
    pairs = within @ within.T
    n = len(within)
    assert scores[0] > 0.8 and scores[0] > scores[1] + 0.3, scores
    assert scores[0] == pytest.approx(float((pairs.sum() - n) / (n * (n - 1))), abs=0.05)


def test_pairs_weigh_the_product_of_their_activations():
    # images 0 and 1 alike, image 2 orthogonal to them, image 3 sets each unit's minimum (0)
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    acts = torch.tensor([[1.0, 1.0], [1.0, 0.2], [0.1, 1.0], [0.0, 0.0]])
    scores = ms_scores(acts, emb)
    # unit 0: pairs (0,1) weight 1 sim 1, (0,2) and (1,2) weight 0.1 sim 0; (., 3) weight 0
    assert scores[0] == pytest.approx(1.0 / 1.2, abs=1e-6)
    # unit 1: (0,1) 0.2 sim 1, (0,2) 1 sim 0, (1,2) 0.2 sim 0: the strong dissimilar pair wins
    assert scores[1] == pytest.approx(0.2 / 1.4, abs=1e-6)


def test_scores_equal_the_reference_loop_over_pairs():
    g = torch.Generator().manual_seed(2)
    acts = torch.randn(30, 7, generator=g).relu() + torch.rand(30, 7, generator=g) * 0.1
    emb = torch.randn(30, 5, generator=g)
    torch.testing.assert_close(ms_scores(acts, emb), pairwise_reference(acts, emb),
                               atol=1e-5, rtol=1e-5)


def test_a_constant_unit_has_no_score_and_is_left_out():
    emb, _ = clustered(5)
    acts = torch.stack([torch.zeros(10), torch.arange(10.0)], 1)
    scores = ms_scores(acts, emb)
    assert math.isnan(scores[0]) and math.isfinite(scores[1])
    s = summarize(scores)
    assert s.scored == 1 and s.mean == pytest.approx(float(scores[1]))


def test_one_embedding_per_image_is_required():
    with pytest.raises(DataError, match="one embedding per image"):
        ms_scores(torch.rand(4, 2), torch.rand(3, 8))


def test_image_maxima_take_the_largest_row_of_each_image():
    acts = torch.tensor([[1.0, -2.0], [3.0, -1.0], [0.5, 4.0]])
    torch.testing.assert_close(image_maxima(acts, torch.tensor([0, 0, 2]), 3),
                               torch.tensor([[3.0, -1.0], [0.0, 0.0], [0.5, 4.0]]))


@pytest.fixture(scope="module")
def vit_store(tmp_path_factory):
    folder = save_tiny_vit(tmp_path_factory.mktemp("tiny_vit"))
    out = tmp_path_factory.mktemp("store") / "s"
    cfg = CaptureConfig(out=str(out), model=str(folder), dataset="digits", hookpoints=[HP],
                        n_images=12, norm_factor=None, progress=False)
    return capture(cfg, load(str(folder))), folder


def test_the_family_reads_per_image_maxima_and_the_models_pooled_embedding(vit_store):
    store, folder = vit_store
    sae = saelab.create("topk", d_in=32, n_latents=64, k=4, seed=0)
    units = image_units(sae, store, HP, batch_size=7)
    ctx = store.row_index()["ctx"]
    x = torch.cat([a for a, _ in store.iter_rows(HP)]).float()
    with torch.no_grad():
        codes = sae.encode(x)
    for i in range(12):
        torch.testing.assert_close(units.codes[i], codes[ctx == i].max(0).values)
        torch.testing.assert_close(units.raw[i], x[ctx == i].max(0).values)
    vit = load(str(folder))
    with torch.no_grad():
        pooled = vit.model(pixel_values=pixel_values(read_images("digits", 12),
                                                     vit.processor)).pooler_output
    torch.testing.assert_close(image_embeddings(store), pooled)

    report = saelab.evaluate(sae, store, metrics=("monosemanticity",))["monosemanticity"]
    assert set(report) == set(family("monosemanticity").figures)
    assert all(math.isfinite(v) for v in report.values()), report
    assert report["n_images"] == 12 and 0 < report["ms_scored"] <= 64
    assert report["neuron_ms_scored"] == 32
    expected = summarize(ms_scores(units.codes, pooled)).mean
    assert report["ms_mean"] == pytest.approx(expected, rel=1e-5)
    centred = summarize(ms_scores(units.codes, pooled - pooled.mean(0))).mean
    assert report["ms_centred_mean"] == pytest.approx(centred, rel=1e-4, abs=1e-6)


def test_data_without_image_ids_is_refused_before_any_work(vit_store, tmp_path):
    store, _ = vit_store
    sae = saelab.create("topk", d_in=32, n_latents=64, k=4, seed=0)
    text_like = without_images(store, tmp_path / "text_like")
    for data in (text_like, torch.randn(64, 32)):
        with pytest.raises(ConfigError, match="'monosemanticity' needs images.*image activation "
                                              "store"):
            saelab.evaluate(sae, data, metrics=("monosemanticity",))
    assert Path(store.path / "manifest.json").is_file()
