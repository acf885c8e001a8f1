"""Per-latent agreement of a dictionary and its transfer: a perfect transfer agrees perfectly,
a latent that fires elsewhere does not, and the top rows are those of the largest codes."""

from __future__ import annotations

import math

import torch

import saelab
from saelab.transfer import agreement, kind_of


def test_a_dictionary_agrees_with_itself_and_not_with_a_shuffled_copy() -> None:
    torch.manual_seed(0)
    sae = saelab.create("relu", d_in=8, n_latents=16)
    x = torch.randn(500, 8)
    same = agreement(sae, sae, x, x, top=3)
    fired = same.frequency_source > 0.05
    assert fired.any() and torch.allclose(same.correlation[fired], torch.ones(int(fired.sum())))
    assert torch.equal(same.frequency_source, same.frequency_target)
    codes = sae.encode(x)
    i = int(fired.nonzero()[0])
    assert set(same.top_rows[i].tolist()) == set(codes[:, i].topk(3).indices.tolist())
    shuffled = agreement(sae, sae, x, x[torch.randperm(500)], top=3)
    assert shuffled.correlation[fired].abs().max() < 0.3


def test_a_latent_that_never_fires_has_no_correlation() -> None:
    sae = saelab.create("relu", d_in=8, n_latents=4)
    with torch.no_grad():
        sae.b_enc.fill_(-1e6)  # nothing fires
    result = agreement(sae, sae, torch.randn(50, 8), torch.randn(50, 8))
    assert all(math.isnan(c) for c in result.correlation.tolist())


def test_kind_of_reads_the_top_tokens() -> None:
    assert kind_of([".", ",", " (", "1", " the"]) == "structural"
    assert kind_of([" cell", " protein", ".", " gene"]) == "semantic"
