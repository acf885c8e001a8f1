"""Capture's device and model dtype: a bfloat16 model captures what the float32 one does, up to
bfloat16 rounding, into the store's own dtype; a GPU asked for on a machine without one is a
clear error."""

from __future__ import annotations

import pytest
import torch

from saelab.errors import ConfigError
from saelab.pipeline import CaptureConfig, capture
from saelab.store.reader import acts_name

HP = "model.layers.1"


def _settings(tmp_path, name, model_dir, **kw):
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"The {i}th river runs past the {i * 3}rd hill." for i in range(300)))
    return CaptureConfig(out=str(tmp_path / name), model=str(model_dir), dataset=str(text),
                         hookpoints=[HP], context_len=16, n_tokens=16 * 12, norm_factor=None,
                         progress=False, **kw)


def _acts(store) -> torch.Tensor:
    return torch.cat([store.read_shard(i, [acts_name(HP)])[0]
                      for i in range(len(store.manifest["shards"]))])


def test_a_bfloat16_model_captures_the_float32_activations_up_to_rounding(tmp_path, model_dir):
    full = capture(_settings(tmp_path, "fp32", model_dir))
    half = capture(_settings(tmp_path, "bf16", model_dir, model_dtype="bfloat16"))
    a, b = _acts(full), _acts(half)
    assert b.dtype == torch.float32 and a.shape == b.shape  # stored in the store's dtype
    assert not torch.equal(a, b)  # the model did run in bfloat16
    rel = (a - b).norm(dim=-1) / a.norm(dim=-1)
    assert float(rel.max()) < 0.05


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a CUDA GPU")
def test_a_gpu_asked_for_without_one_is_refused_with_what_to_do(tmp_path, model_dir):
    with pytest.raises(ConfigError, match="sees no CUDA GPU; use cpu or auto"):
        capture(_settings(tmp_path, "cuda", model_dir, device="cuda"))


def test_an_unknown_device_is_refused(tmp_path, model_dir):
    with pytest.raises(ConfigError, match="device"):
        _settings(tmp_path, "x", model_dir, device="gpu0")
