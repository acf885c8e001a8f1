"""Attention-output SAEs: the z site (per-head outputs before the output projection) and the
attribution of latents to heads."""

from __future__ import annotations

import pytest
import torch

import saelab
from saelab.capture import capture, resolve
from saelab.errors import ConfigError
from saelab.interpret.heads import head_attribution, heads_of_model
from tests.conftest import tiny_llama


def test_z_site_is_the_input_of_the_output_projection(tiny_lm, tokens):
    (hp,) = resolve(tiny_lm, ["model.layers.1.self_attn:z"])
    assert hp.module == "model.layers.1.self_attn.o_proj" and hp.site == "input"
    acts = capture(tiny_lm, ["model.layers.1.self_attn:z", "model.layers.1.self_attn"],
                   tokens[:2])
    z, attn_out = acts[hp.key], acts["model.layers.1.self_attn"]
    o_proj = tiny_lm.model.layers[1].self_attn.o_proj
    assert z.shape[-1] == 4 * 8  # heads concatenated: 4 heads of 8
    assert torch.allclose(o_proj(z), attn_out, atol=1e-6)


def test_z_site_on_a_module_without_projection_is_a_clear_error(tiny_lm):
    with pytest.raises(ConfigError, match="'z'"):
        resolve(tiny_lm, ["model.layers.1.mlp:z"])


def test_head_attribution_finds_the_head_a_latent_reads_from():
    n_heads, d_head = 4, 8
    W = torch.zeros(3, n_heads * d_head)
    W[0, 8:16] = 1.0  # head 1 only
    W[1, :] = 1.0  # spread evenly
    W[2, 24:32] = 2.0
    W[2, 0:8] = 1.0  # mostly head 3
    att = head_attribution(W, n_heads)
    assert att.top_head[0] == 1 and att.top_head[2] == 3
    assert torch.allclose(att.share.sum(-1), torch.ones(3))
    assert att.share[1].allclose(torch.full((4,), 0.25))
    assert att.top_share[2] == pytest.approx(0.8)
    with pytest.raises(ConfigError, match="n_heads"):
        head_attribution(W, 5)


def test_sae_trained_on_z_attributes_its_latents_to_the_heads_that_carry_signal(tmp_path):
    """With query heads 0 and 1 silenced (their value head zeroed), every latent that fires on the
    z activations is attributed to head 2 or 3, and nearly all its decoder norm lies there."""
    from saelab.store import capture_to_store

    lm = tiny_llama()
    lm.model.layers[1].self_attn.v_proj.weight.data[:8] = 0  # kv head 0 feeds query heads 0, 1
    g = torch.Generator().manual_seed(1)
    store = capture_to_store(lm, torch.randint(2, 64, (64, 16), generator=g),
                             ["model.layers.1.self_attn:z"], tmp_path / "s", model_name="tiny",
                             progress=False)
    assert store.hookpoints == ["model.layers.1.self_attn.o_proj:input"]
    sae = saelab.fit(saelab.create("topk", d_in=32, n_latents=64, k=4), store.path,
                     saelab.TrainConfig(steps=150, batch_size=64, lr=1e-2, progress=False))
    x = torch.cat([acts for acts, _ in store.iter_rows(None, 4096)])
    assert x[:, :16].abs().max() == 0  # heads 0 and 1 write nothing
    active = (sae(x).codes != 0).any(0)
    att = head_attribution(sae.W_dec, heads_of_model(lm))
    assert active.sum() >= 8
    assert set(att.top_head[active].tolist()) <= {2, 3}
    assert att.share[active][:, 2:].sum(-1).mean() > 0.9
