"""topk_neurons: at most k nonzero codes per row, the k largest hidden activations by value with
their signs (delphi's TopKNeurons), and with k = n_latents exactly mlp_neurons."""

from __future__ import annotations

import pytest
import torch

import saelab
from saelab.dictionaries import get
from saelab.errors import ConfigError

TopKNeurons, MlpNeurons = get("topk_neurons"), get("mlp_neurons")


def x_of(n: int = 64, d: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_at_most_k_nonzero_codes_per_row_and_they_are_the_k_largest_hidden_values(tiny_lm):
    sae = TopKNeurons.from_model(tiny_lm, "model.layers.1.mlp", k=5)
    x = x_of(d=sae.d_in)
    with torch.no_grad():
        codes, hidden = sae.encode(x), sae.hidden(x)
    assert ((codes != 0).sum(-1) <= 5).all()
    kept = codes != 0
    assert torch.equal(codes[kept], hidden[kept])  # kept values are the hidden ones, signs too
    # every kept value is at least every dropped one (by value, not by absolute value)
    lowest_kept = torch.where(kept, hidden, torch.inf).min(-1).values
    highest_dropped = torch.where(kept, -torch.inf, hidden).max(-1).values
    assert (lowest_kept >= highest_dropped).all()


def test_selection_is_by_value_so_a_larger_negative_activation_is_dropped():
    sae = saelab.create("topk_neurons", 4, 3, k=1, gated=False, activation="silu")
    with torch.no_grad():  # silu hidden: -1.28 -> -0.278, 0.3 -> 0.172, -3 -> -0.142
        sae.W_enc.copy_(torch.tensor([[-1.28, 0, 0, 0], [0.3, 0, 0, 0], [-3.0, 0, 0, 0]]))
        sae.b_enc.zero_()
        codes = sae.encode(torch.tensor([[1.0, 0, 0, 0]]))
    assert codes[0, 1] > 0 and codes[0, 0] == 0 and codes[0, 2] == 0  # |-0.278| > 0.172


def test_with_k_equal_to_n_latents_it_equals_mlp_neurons_exactly(tiny_lm, tokens, tmp_path):
    full = MlpNeurons.from_model(tiny_lm, "model.layers.1.mlp")
    topk = TopKNeurons.from_model(tiny_lm, "model.layers.1.mlp", k=full.n_latents)
    x = x_of(d=full.d_in, seed=2)
    with torch.no_grad():
        assert torch.equal(topk.encode(x), full.encode(x))
        assert torch.equal(topk(x).x_hat, full(x).x_hat)
    topk.save(tmp_path / "t")
    back = saelab.load(tmp_path / "t")
    assert type(back) is TopKNeurons and back.cfg.k == full.n_latents


def test_a_k_outside_one_to_n_latents_is_refused(tiny_lm):
    with pytest.raises(ConfigError, match="k"):
        TopKNeurons.from_model(tiny_lm, "model.layers.1.mlp", k=10_000)
