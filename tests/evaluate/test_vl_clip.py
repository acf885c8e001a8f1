"""An image-text model by name (CLIP here, a tiny random one saved to a folder, loaded the way a
Hub name is): both towers load with `load_image_text`, and its encoders embed image-text pairs in
the model's shared space, the features its own get_image_features / get_text_features give."""

from __future__ import annotations

import pytest
import torch

from saelab.data.paired import paired_images
from saelab.errors import ConfigError
from saelab.evaluate.vl_pairs import embed_pairs, image_text_encoders
from saelab.models import load, load_image_text, load_tokenizer


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = tmp_path_factory.mktemp("tiny_clip")
    tok = load_tokenizer("smollm2-135m")
    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4)
    config = CLIPConfig(text_config=dict(vocab_size=len(tok), **small),
                        vision_config=dict(image_size=32, patch_size=8, **small),
                        projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
                       ).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_clip_pairs_embed_in_the_models_shared_space(clip_folder):
    from saelab.data.pixels import pixel_values

    clip = load_image_text(str(clip_folder))
    assert type(clip.model).__name__ == "CLIPModel"
    assert load(str(clip_folder)).kind == "vision"  # `load` gives the tower images come from
    pairs = paired_images("digits", limit=6)
    images, texts = image_text_encoders(clip)
    emb = embed_pairs(pairs, images, texts)
    assert emb.image.shape == emb.text.shape == (6, 16)  # projection_dim: one space
    with torch.no_grad():
        want_image = clip.model.get_image_features(
            pixel_values=pixel_values([p.image for p in pairs], clip.processor))
        tokens = clip.tokenizer([p.text for p in pairs], padding=True, return_tensors="pt")
        want_text = clip.model.get_text_features(**tokens)
    want_image = getattr(want_image, "pooler_output", want_image)
    want_text = getattr(want_text, "pooler_output", want_text)
    torch.testing.assert_close(emb.image, want_image)
    torch.testing.assert_close(emb.text, want_text)
    assert emb.concepts == [p.concept for p in pairs]


def test_a_model_without_both_towers_is_refused(model_dir):
    with pytest.raises(ConfigError, match="not an image-text model"):
        load_image_text(str(model_dir))
    with pytest.raises(ConfigError, match="packaged single-modality"):
        load_image_text("smollm2-135m")
