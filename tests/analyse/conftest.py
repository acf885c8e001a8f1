"""A tiny random Llama with SmolLM2's tokenizer and a dictionary planted on it: latent 0 fires
exactly on the token " cat" (its encoder row is that token's embedding, with a bias that only
the token itself passes), latent 1 never fires."""

from __future__ import annotations

import pytest
import torch

HOOKPOINT = "model.embed_tokens"
WORD = " cat"


@pytest.fixture(scope="package")
def tiny(model_dir):
    from saelab.models import load

    return load(str(model_dir))


@pytest.fixture(scope="package")
def planted_sae(tiny, model_dir):
    import saelab

    sae = saelab.create("topk", d_in=tiny.d_model, n_latents=2, k=1, seed=0)
    (token,) = tiny.tokenizer(WORD, add_special_tokens=False)["input_ids"]
    e = tiny.model.get_input_embeddings().weight[token].detach()
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.W_enc[0] = e / e.norm()
        sae.b_enc[0] = -0.99 * e.norm()
    sae.provenance.update({"model": str(model_dir), "hookpoint": HOOKPOINT})
    return sae
