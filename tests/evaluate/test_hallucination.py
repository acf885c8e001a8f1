"""The `hallucination` family: the degraded inputs are what they say, latents are counted per
context at the kept positions, a dictionary with one latent per token gives known counts (the
same under shuffling, more under random tokens), planted labels are predicted and unrelated ones
are not, refusals come before any forward, dead latents and NaN activations are handled, and a
SmolLM2 run finishes within a minute."""

from __future__ import annotations

import logging
import math
import time

import pytest
import torch
from torch import Tensor, nn

import saelab
from saelab.data.labelled import LabelledTexts
from saelab.dictionaries import Output
from saelab.errors import ConfigError, DataError
from saelab.evaluate import hallucination as hal
from tests.conftest import tiny_llama

VOCAB, HIDDEN = 100, 32
EMBED = "model.embed_tokens"
"""Hookpoint at the embeddings: the activation of a position is its token's embedding."""


class OneHotTokens(nn.Module):
    """A planted 'dictionary' on the embeddings of `lm`: latent i fires (code 1) exactly where
    the token is i, so the latents a context uses are its distinct tokens."""

    architecture = "one_hot_tokens"
    needs = frozenset()

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.table = lm.get_input_embeddings().weight.detach().clone()  # [V, d]
        self.n_latents, self.d_in = self.table.shape
        self.d_out = self.d_in

    def encode(self, x: Tensor) -> Tensor:
        nearest = torch.cdist(x, self.table).argmin(1)
        return nn.functional.one_hot(nearest, self.n_latents).float()

    def forward(self, x: Tensor) -> Output:
        codes = self.encode(x)
        return Output(codes @ self.table, codes)


class Counted:
    """Counts forwards of a module while in a `with` block."""

    def __init__(self, module: nn.Module):
        self.module, self.count = module, 0

    def __enter__(self) -> "Counted":
        self.handle = self.module.register_forward_pre_hook(lambda *_: self.bump())
        return self

    def bump(self) -> None:
        self.count += 1

    def __exit__(self, *exc) -> None:
        self.handle.remove()


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(vocab=VOCAB, hidden=HIDDEN, layers=2)


def clean_tokens(n: int = 24, t: int = 16, seed: int = 0) -> Tensor:
    """Contexts drawn from a small part of the vocabulary (ids 2..9)."""
    return torch.randint(2, 10, (n, t), generator=torch.Generator().manual_seed(seed))


def run(lm, dictionary, tokens, hookpoint=EMBED, **kwargs) -> dict:
    return saelab.evaluate(dictionary, metrics=("hallucination",), model=lm, tokens=tokens,
                           hookpoint=hookpoint, seed=0, **kwargs)["hallucination"]


# --- the pieces -------------------------------------------------------------------------------
def test_shuffled_tokens_permute_each_context_and_keep_its_first_token():
    tokens = torch.arange(6 * 20).view(6, 20)
    out = hal.shuffled_tokens(tokens, torch.Generator().manual_seed(0))
    assert torch.equal(out[:, 0], tokens[:, 0])
    assert torch.equal(out.sort(1).values, tokens)  # the same tokens in each context
    assert (out != tokens).float().mean() > 0.8  # and hardly any in place


def test_random_tokens_are_uniform_over_the_vocabulary_and_keep_the_first_token():
    tokens = torch.zeros(200, 50, dtype=torch.long)
    out = hal.random_tokens(tokens, 10, torch.Generator().manual_seed(0))
    assert torch.equal(out[:, 0], tokens[:, 0])
    counts = torch.bincount(out[:, 1:].flatten(), minlength=10).float()
    assert len(counts) == 10 and (counts / counts.mean() - 1).abs().max() < 0.1


def test_latent_use_counts_distinct_latents_per_context_at_kept_positions_only():
    codes = torch.zeros(2, 3, 5)
    codes[0, 0, 0] = codes[0, 1, 1] = codes[0, 2, 1] = 1.0  # context 0: latents 0, 1, 1
    codes[1, 1, 2] = codes[1, 1, 3] = codes[1, 2, 4] = 2.0  # context 1: latents {2, 3}, {4}
    keep = torch.tensor([[True, True, True], [True, True, False]])
    use = hal.latent_use(codes, keep)
    assert use.distinct.tolist() == [2, 2]  # context 1's latent 4 is at a dropped position
    assert use.union == 4 and use.kept == 5 and use.positions == 6
    assert use.l0 == pytest.approx(5 / 5)


def test_cross_validated_auroc_is_one_on_separable_rows_and_near_half_on_unrelated_ones():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 2
    x = torch.randn(400, 8, generator=g)
    separable = x + 4 * y[:, None] * torch.tensor([1.0] + [0.0] * 7)
    assert hal.cross_validated_auroc(separable, y) > 0.99
    assert abs(hal.cross_validated_auroc(x, y) - 0.5) < 0.08
    assert math.isnan(hal.cross_validated_auroc(x[:3], torch.tensor([0, 0, 1])))


def test_the_positive_class_is_the_one_named_so_else_the_second():
    assert hal.positive_class(["hallucinated", "ok"]) == "hallucinated"
    assert hal.positive_class(["0", "1"]) == "1"
    assert hal.positive_class(["grounded", "made-up"]) == "made-up"


# --- planted answers through evaluate -----------------------------------------------------------
def test_one_latent_per_token_gives_the_same_count_shuffled_and_more_on_random_tokens(lm):
    tokens = clean_tokens()
    result = run(lm, OneHotTokens(lm), tokens)
    # the latents of a context are its distinct tokens after the first position
    expected = sum(len(set(row[1:].tolist())) for row in tokens) / len(tokens)
    assert result["distinct_latents_clean"] == pytest.approx(expected)
    assert result["distinct_latents_shuffled"] == pytest.approx(expected)  # same tokens
    # 15 draws from 100 ids: 100 (1 - 0.99^15) = 14.0 distinct on average, at most 8 clean
    assert expected <= 8 and result["distinct_latents_random"] > 12.5
    assert result["union_latents_clean"] == 8 and result["union_latents_random"] > 80
    assert result["l0_clean"] == result["l0_random"] == 1.0
    assert result["kept_fraction_clean"] == pytest.approx(15 / 16)
    assert result["n_contexts"] == len(tokens)
    assert math.isnan(result["hallucination_auroc"]) and result["hallucination_texts"] == 0


def test_a_planted_hallucination_token_is_predicted_and_shuffled_labels_are_not(lm):
    g = torch.Generator().manual_seed(3)
    ids = [torch.randint(2, 10, (12,), generator=g).tolist() for _ in range(60)]
    hallucinated = [i % 2 == 1 for i in range(60)]
    for row, h in zip(ids, hallucinated):
        if h:
            row[5] = 50  # the planted marker: a token the others never hold
    texts = [f"text {i}" for i in range(60)]
    planted = LabelledTexts(texts, ["hallucinated" if h else "faithful" for h in hallucinated],
                            tokens=ids)
    result = run(lm, OneHotTokens(lm), clean_tokens(4), labels=planted)
    assert result["hallucination_auroc"] > 0.95 and result["hallucination_texts"] == 60
    assert math.isfinite(result["hallucination_auroc_raw"])
    order = torch.randperm(60, generator=g).tolist()
    unrelated = LabelledTexts(texts, [planted.labels[i] for i in order], tokens=ids)
    assert run(lm, OneHotTokens(lm), clean_tokens(4),
               labels=unrelated)["hallucination_auroc"] < 0.8


def test_labels_of_more_than_two_classes_give_nan_with_a_warning(lm, caplog):
    ids = [[3, 4, 5, 6]] * 30
    three = LabelledTexts([f"t{i}" for i in range(30)], ["abc"[i % 3] for i in range(30)],
                          tokens=ids)
    with caplog.at_level(logging.WARNING):
        result = run(lm, OneHotTokens(lm), clean_tokens(4), labels=three)
    assert math.isnan(result["hallucination_auroc"]) and "3 classes" in caplog.text


# --- refusals, dead latents, NaN ---------------------------------------------------------------
def test_missing_tokens_and_bad_labels_are_refused_before_the_model_runs(lm):
    sae = saelab.create("topk", d_in=HIDDEN, n_latents=16, k=4, seed=0)
    cases = [({"tokens": None}, ConfigError, "tokens:"),
             ({"model": None}, ConfigError, "model:"),
             ({"labels": (["a", "b", "c"], ["x", "y"])}, DataError, "3 texts but 2 labels"),
             ({"tokens": torch.zeros(3, 1, dtype=torch.long)}, ConfigError, "T >= 2")]
    for change, error, message in cases:
        kwargs = {"model": lm, "tokens": clean_tokens(4)} | change
        with Counted(lm) as forwards, pytest.raises(error, match=message):
            saelab.evaluate(sae, metrics=("hallucination",), hookpoint="model.layers.0",
                            **kwargs)
        assert forwards.count == 0


def test_a_dictionary_with_dead_latents_gets_finite_figures(lm):
    sae = saelab.create("topk", d_in=HIDDEN, n_latents=64, k=4, seed=0)
    with torch.no_grad():  # half the latents can never win the top-k
        sae.W_enc[::2] = 0
        sae.b_enc[::2] = -1e4
    result = run(lm, sae, clean_tokens(), hookpoint="model.layers.0")
    bad = {k: v for k, v in result.items()
           if not math.isfinite(v) and k not in hal.Hallucination.conditional}
    assert not bad
    assert result["union_latents_random"] <= 32


def test_a_nan_activation_is_refused_naming_its_context_and_position():
    lm = tiny_llama(vocab=VOCAB, hidden=HIDDEN, layers=2)
    with torch.no_grad():
        lm.get_input_embeddings().weight[60] = float("nan")
    tokens = clean_tokens(4)
    tokens[2, 5] = 60
    sae = saelab.create("topk", d_in=HIDDEN, n_latents=16, k=4, seed=0)
    with pytest.raises(DataError, match="context 2, position 5"):
        run(lm, sae, tokens)  # at the embeddings (attention would spread it over the context)


# --- end to end -------------------------------------------------------------------------------
@pytest.mark.slow
def test_hallucination_on_smollm2_within_a_minute():
    from saelab.data import pack, read_documents
    from saelab.models import load

    start = time.perf_counter()
    lm = load("smollm2-135m")
    tokens = pack(read_documents("wikipedia", limit=200), lm.tokenizer, 64,
                  max_contexts=24).tokens
    sae = saelab.create("topk", d_in=576, n_latents=1024, k=32, seed=0)
    result = saelab.evaluate(sae, metrics=("hallucination",), model=lm.model, tokens=tokens,
                             hookpoint="model.layers.4", seed=0)["hallucination"]
    elapsed = time.perf_counter() - start
    assert result["n_contexts"] == 24
    assert result["l0_clean"] == result["l0_random"] == 32  # a TopK SAE: k at every position
    assert all(math.isfinite(result[f"distinct_latents_{c}"]) for c in hal.CONDITIONS)
    assert elapsed < 60, elapsed
