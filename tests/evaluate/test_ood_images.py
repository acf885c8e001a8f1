"""The `ood_images` family: OOD rows are the store model's rows at the store's hookpoint, taken
as the store took its own; the family reports the `ood` family's figures on an image store and
refuses data that is not one."""

from __future__ import annotations

import math

import pytest
import torch

import saelab
from saelab.data.images import read_images
from saelab.errors import ConfigError
from saelab.evaluate import family
from saelab.evaluate.ood_images import OodImages, OodImagesConfig, image_rows_of, store_image_rows
from saelab.models import load
from saelab.pipeline import CaptureConfig, capture
from tests.capture.vision import GRID, save_tiny_vit, without_images

HP = "encoder.layer.0"


@pytest.fixture(scope="module")
def vit_store(tmp_path_factory):
    folder = save_tiny_vit(tmp_path_factory.mktemp("tiny_vit"))
    out = tmp_path_factory.mktemp("store") / "s"
    cfg = CaptureConfig(out=str(out), model=str(folder), dataset="digits", hookpoints=[HP],
                        n_images=12, norm_factor=None, image_rows="cls", progress=False)
    return capture(cfg, load(str(folder))), folder


@pytest.mark.parametrize("rows, per_image", [("cls", 1), ("pooled", 1), ("patches", GRID)])
def test_ood_rows_are_the_rows_the_store_takes_of_the_same_images(vit_store, tmp_path, rows,
                                                                  per_image):
    _, folder = vit_store
    vit = load(str(folder))
    store = capture(CaptureConfig(out=str(tmp_path / rows), model=str(folder), dataset="digits",
                                  hookpoints=[HP], n_images=6, norm_factor=None,
                                  image_rows=rows, progress=False), vit)
    x, image = store_image_rows(store, HP)
    again = image_rows_of(vit, read_images("digits", 6), HP, rows)
    assert again.shape == (6 * per_image, 32) and len(x) == 6 * per_image
    assert torch.equal(image, torch.arange(6).repeat_interleave(per_image))
    torch.testing.assert_close(again, x, rtol=1e-4, atol=1e-5)


def test_the_family_scores_held_out_store_images_against_ood_images(vit_store, monkeypatch):
    store, _ = vit_store
    monkeypatch.setattr(OodImages, "config", OodImagesConfig(ood="lfw", max_ood_images=10))
    sae = saelab.create("topk", d_in=32, n_latents=64, k=4, seed=0)
    report = saelab.evaluate(sae, store, metrics=("ood_images",))["ood_images"]
    assert set(report) == set(family("ood_images").figures)
    assert report["rows_fit"] == 6 and report["rows_in"] == 6 and report["rows_ood"] == 10
    assert all(math.isfinite(v) for v in report.values()), report
    assert all(0 <= report[f] <= 1 for f in report if f.startswith("auroc_"))


def test_text_data_is_refused_before_any_work(vit_store, tmp_path):
    store, _ = vit_store
    sae = saelab.create("topk", d_in=32, n_latents=64, k=4, seed=0)
    text_like = without_images(store, tmp_path / "text_like")
    for data in (text_like, torch.randn(64, 32)):
        with pytest.raises(ConfigError, match="'ood_images' needs images.*image activation store"):
            saelab.evaluate(sae, data, metrics=("ood_images",))
