"""A tiny random DINOv2 saved as a transformers folder with an image processor: a vision model
that loads through the same path as any Hub vision model, fast enough for every test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

SIDE, PATCH = 16, 4
"""Image side and patch size: a 4 x 4 patch grid."""
GRID = (SIDE // PATCH) ** 2


def save_tiny_vit(folder: Path) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, patch_size=PATCH, image_size=SIDE)
    Dinov2Model(config).save_pretrained(folder)
    processor = {"image_processor_type": "BitImageProcessor", "do_resize": True,
                 "size": {"shortest_edge": SIDE}, "do_center_crop": True,
                 "crop_size": {"height": SIDE, "width": SIDE}, "do_rescale": True,
                 "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5] * 3,
                 "image_std": [0.25] * 3, "do_convert_rgb": True}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


def without_images(store, folder: Path) -> Path:
    """A copy of an image store at `folder` whose manifest no longer says it holds images (what
    an image-only family must refuse like a text store)."""
    shutil.copytree(store.path, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["images"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder
