"""Image capture: each row of an image store is the model's token at the image and patch its
metadata names (patch, CLS and pooled rows), a killed capture resumes, sources read folders,
the packaged sets and Hugging Face datasets, and bad input is refused by name.

A tiny random DINOv2 saved as a transformers folder (with an image processor) stands in for a
vision model here: it loads through the same path as any Hub vision model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from saelab.capture import Capture
from saelab.data.images import read_images
from saelab.data.pixels import displayed_images, pixel_values
from saelab.errors import DataError
from saelab.models import load
from saelab.pipeline import CaptureConfig, capture
from saelab.store import ActivationStore
from saelab.store import images as image_writer
from tests.capture.vision import GRID, SIDE, save_tiny_vit

HP = "encoder.layer.0"


@pytest.fixture(scope="module")
def tiny_vit_folder(tmp_path_factory) -> Path:
    return save_tiny_vit(tmp_path_factory.mktemp("tiny_vit"))


@pytest.fixture(scope="module")
def tiny_vit(tiny_vit_folder):
    return load(str(tiny_vit_folder))


def run(tiny_vit, out: Path, **kw) -> ActivationStore:
    cfg = CaptureConfig(out=str(out), model="tiny", dataset="digits", hookpoints=[HP],
                        n_images=5, norm_factor=None, progress=False, **kw)
    return capture(cfg, tiny_vit)


def forward(tiny_vit, items) -> torch.Tensor:
    with Capture(tiny_vit.model, [HP]) as cap:
        return cap.run(pixel_values=pixel_values(items, tiny_vit.processor))[HP]


def test_a_transformers_vision_folder_loads_with_its_processor(tiny_vit):
    assert tiny_vit.kind == "vision" and tiny_vit.processor is not None
    assert tiny_vit.tokenizer is None and tiny_vit.layer_template == "encoder.layer.{}"


def test_patch_rows_are_the_models_tokens_at_their_image_and_patch(tiny_vit, tmp_path):
    store = run(tiny_vit, tmp_path / "s")
    meta = store.manifest["images"]
    assert store.n_rows == 5 * GRID and store.manifest["context_len"] == GRID
    assert meta["grid"] == [4, 4] and meta["prefix"] == 1 and meta["rows"] == "patches"
    assert meta["titles"] == [f"digits#{i}" for i in range(5)]
    assert meta["labels"] == ["0", "1", "2", "3", "4"]
    rows = store.row_index()
    assert torch.equal(rows["ctx"], torch.arange(5).repeat_interleave(GRID))
    assert torch.equal(rows["pos"], torch.arange(1, GRID + 1).repeat(5))
    assert (rows["token"] == -1).all()
    expected = forward(tiny_vit, read_images("digits", limit=5))  # [5, 1 + 16, 32]
    stored = torch.cat([a for a, _ in store.iter_rows(HP)])
    assert torch.allclose(stored, expected[rows["ctx"], rows["pos"]], atol=1e-6)
    patch_rc = store.contexts()["patch_rc"]  # pos 1 + r * 4 + c -> (r, c)
    assert patch_rc[0].tolist() == [0, 0] and patch_rc[6].tolist() == [1, 2]


def test_cls_pooled_and_all_rows(tiny_vit, tmp_path):
    expected = forward(tiny_vit, read_images("digits", limit=5))
    cls = run(tiny_vit, tmp_path / "cls", image_rows="cls")
    pooled = run(tiny_vit, tmp_path / "pooled", image_rows="pooled")
    every = run(tiny_vit, tmp_path / "all", image_rows="all")
    assert torch.allclose(next(cls.iter_rows(HP))[0], expected[:, 0], atol=1e-6)
    assert torch.allclose(next(pooled.iter_rows(HP))[0], expected[:, 1:].mean(1), atol=1e-6)
    assert (pooled.row_index()["pos"] == -1).all()
    assert every.n_rows == 5 * (GRID + 1)
    assert every.contexts()["patch_rc"][0].tolist() == [-1, -1]  # the CLS token has no patch


def test_skipped_images_are_held_out(tiny_vit, tmp_path):
    store = run(tiny_vit, tmp_path / "s", skip_images=3)
    assert store.manifest["images"]["titles"][0] == "digits#3"
    expected = forward(tiny_vit, read_images("digits", limit=4)[3:])
    assert torch.allclose(next(store.iter_rows(HP))[0][:GRID], expected[0, 1:], atol=1e-6)


def test_a_killed_image_capture_resumes_to_the_same_store(tiny_vit, tmp_path, monkeypatch):
    full = run(tiny_vit, tmp_path / "full", shard_rows=GRID, batch_contexts=1)
    original, calls = image_writer.flush_shard, {"n": 0}

    def dying_flush(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(image_writer, "flush_shard", dying_flush)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_vit, tmp_path / "part", shard_rows=GRID, batch_contexts=1)
    monkeypatch.setattr(image_writer, "flush_shard", original)
    assert len(json.loads((tmp_path / "part" / "manifest.json").read_text())["shards"]) == 2
    resumed = run(tiny_vit, tmp_path / "part", shard_rows=GRID, batch_contexts=1)
    a = torch.cat([x for x, _ in full.iter_rows(HP)])
    b = torch.cat([x for x, _ in resumed.iter_rows(HP)])
    assert torch.equal(a, b) and resumed.complete


def test_displayed_images_undo_the_processors_normalisation(tiny_vit):
    grey = Image.new("RGB", (SIDE, SIDE), (200, 100, 50))
    pixels = tiny_vit.processor(images=[grey], return_tensors="pt")["pixel_values"]
    shown = displayed_images(pixels, tiny_vit.processor)
    assert shown.shape == (1, SIDE, SIDE, 3)
    assert np.abs(shown[0].astype(int) - [200, 100, 50]).max() <= 1


def test_folder_images_are_labelled_by_subfolder_and_other_files_ignored(tmp_path):
    for label, colour in (("cats", 10), ("dogs", 200)):
        (tmp_path / label).mkdir()
        Image.new("RGB", (9, 7), (colour, 0, 0)).save(tmp_path / label / "a.png")
    (tmp_path / "notes.txt").write_text("not an image")
    items = read_images(str(tmp_path))
    assert [(i.title, i.label) for i in items] == [("cats/a.png", "cats"), ("dogs/a.png", "dogs")]


def test_hugging_face_image_dataset_with_class_names(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=["a", "b"])})
    images = [Image.fromarray(np.full((6, 8, 3), 40 * i, np.uint8)) for i in range(3)]
    datasets.Dataset.from_dict({"image": images, "label": [1, 0, 1]}, features=features) \
        .to_parquet(str(tmp_path / "train.parquet"))
    items = read_images(f"hf:{tmp_path}", limit=2)
    assert [i.label for i in items] == ["b", "a"]


def test_a_corrupt_image_file_is_refused_by_name(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "good.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    with pytest.raises(DataError, match=r"broken\.jpg is not a readable image.*remove or replace"):
        read_images(str(tmp_path))


def test_an_empty_folder_and_an_unknown_name_are_refused(tmp_path):
    with pytest.raises(DataError, match="holds no image files"):
        read_images(str(tmp_path))
    with pytest.raises(DataError, match="neither a known image set nor a folder.*digits"):
        read_images("imagenet-please")


def test_a_vision_model_refuses_the_text_default(tiny_vit, tmp_path):
    cfg = CaptureConfig(out=str(tmp_path / "s"), model="tiny", hookpoints=[HP], progress=False)
    with pytest.raises(DataError, match="vision model.*--dataset skimage"):
        capture(cfg, tiny_vit)


def test_an_image_text_model_loads_its_vision_tower_and_captures_patches(tmp_path):
    """A CLIP folder (tiny, random) loads as its vision tower with CLIP's image processor, and
    its patch rows are that tower's tokens."""
    from transformers import CLIPConfig, CLIPModel

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(text_config={**small, "vocab_size": 100, "bos_token_id": 0,
                                     "eos_token_id": 1, "pad_token_id": 1},
                        vision_config={**small, "image_size": SIDE, "patch_size": 4},
                        projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    processor = {"image_processor_type": "CLIPImageProcessor", "do_resize": True,
                 "size": {"shortest_edge": SIDE}, "do_center_crop": True,
                 "crop_size": {"height": SIDE, "width": SIDE}, "do_rescale": True,
                 "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
                 "image_mean": [0.48, 0.46, 0.41], "image_std": [0.27, 0.26, 0.28]}
    (tmp_path / "clip" / "preprocessor_config.json").write_text(json.dumps(processor))
    clip = load(str(tmp_path / "clip"))
    assert clip.kind == "vision" and type(clip.model).__name__ == "CLIPVisionModel"
    assert clip.layer_template == "encoder.layers.{}" and clip.d_model == 32
    store = capture(CaptureConfig(out=str(tmp_path / "s"), model="clip", dataset="digits",
                                  hookpoints=["encoder.layers.0"], n_images=2, norm_factor=None,
                                  progress=False), clip)
    with Capture(clip.model, ["encoder.layers.0"]) as cap:
        expected = cap.run(pixel_values=pixel_values(read_images("digits", limit=2),
                                                     clip.processor))["encoder.layers.0"]
    assert store.n_rows == 2 * GRID
    assert torch.allclose(next(store.iter_rows())[0], expected[:, 1:].reshape(-1, 32), atol=1e-6)


def test_a_truncated_image_is_refused_by_name_when_decoded(tiny_vit, tmp_path):
    """A file whose header is intact but whose data stops short may pass the check at reading;
    decoding it for the model is then refused, naming the file."""
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        tmp_path / "cut.jpg", quality=95)
    data = (tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.jpg is not a readable image"):
        pixel_values(read_images(str(tmp_path)), tiny_vit.processor)
