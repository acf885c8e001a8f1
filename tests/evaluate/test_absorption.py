"""The absorption family: a planted absorbing pair absorbs well above a clean dictionary, the
per-word computation matches SAEBench's own calculator on the same tensors, the main latents
follow SAEBench's F1-jump rule, the reused prompt prefix gives the full prompts' activations,
the family runs through `evaluate` on a tiny model with a tiny tokenizer (dead latents included)
and refuses before any work what it cannot serve; one end-to-end run on SmolLM2."""

from __future__ import annotations

import dataclasses
import importlib
import math
import sys
import types

import pytest
import torch

import saelab
from saelab.errors import ConfigError
from saelab.evaluate import family
from saelab.evaluate.absorption import (
    FIGURES,
    Absorption,
    absorption_from_activations,
    absorption_of_words,
    first_letter_absorption,
    select_main_latents,
)
from saelab.evaluate.first_letter import (
    LETTERS,
    AbsorptionConfig,
    first_letter_words,
    prompt_prefixes,
    word_activations,
)
from tests.conftest import tiny_llama


# --- a planted absorbing pair ---------------------------------------------------------------
def planted_task(n_letters: int = 4, words: int = 500, absorbed: float = 0.12, d: int = 320,
                 seed: int = 0):
    """Words of `n_letters` letters: x = 3 u_letter + noise, and the first `absorbed` share of
    each letter's words also carry a feature of their own, 3 v_word (like " short" for s). The
    noise lies in the directions orthogonal to every u and v.
    Returns (x, letters, train mask, u [n_letters, d], v [n_absorbed_words, d], the letter of
    each v)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, d, generator=g))[0].T  # orthonormal rows
    per_letter = int(absorbed * words)
    u, v = basis[:n_letters], basis[n_letters:n_letters * (1 + per_letter)]
    letters = torch.arange(n_letters).repeat_interleave(words)
    noise_dirs = basis[n_letters * (1 + per_letter):]
    x = 3 * u[letters] + 0.3 * torch.randn(len(letters), len(noise_dirs), generator=g) @ noise_dirs
    rows = torch.cat([torch.arange(c * words, c * words + per_letter) for c in range(n_letters)])
    x[rows] += 3 * v
    train = torch.rand(len(letters), generator=g) >= 0.2
    return x, letters, train, u, v, letters[rows]


def hand_built(u: torch.Tensor, v: torch.Tensor, v_letter: torch.Tensor, absorbing: bool):
    """A ReLU SAE with a parent latent per letter and a child latent per word feature v.
    Absorbing: each parent is switched off by its letter's children, whose decoders carry the
    letter's direction; clean: the parent reads only the letter, each child only its feature."""
    d = u.shape[1]
    sae = saelab.create("relu", d_in=d, n_latents=len(u) + len(v))
    w_enc, w_dec = torch.cat([u, v]), torch.cat([u, v])
    if absorbing:
        w_enc[:len(u)] -= 2 * torch.zeros_like(u).index_add_(0, v_letter, v)
        w_dec[len(u):] = torch.nn.functional.normalize(u[v_letter] + v, dim=1)
    with torch.no_grad():
        sae.W_enc.copy_(w_enc), sae.W_dec.copy_(w_dec)
        sae.b_enc.fill_(-0.5), sae.b_dec.zero_()
    return sae.eval()


def test_a_planted_absorbing_pair_absorbs_well_above_a_clean_dictionary():
    x, letters, train, u, v, v_letter = planted_task()
    config = AbsorptionConfig()
    absorbing = absorption_from_activations(x, letters, train,
                                            hand_built(u, v, v_letter, True), config)
    clean = absorption_from_activations(x, letters, train,
                                        hand_built(u, v, v_letter, False), config)
    for result in (absorbing, clean):
        assert result.figures["letters_evaluated"] == 4
        assert result.figures["probe_accuracy"] > 0.99
        assert [r.main_latents for r in result.letters] == [[0], [1], [2], [3]]  # the parents
    # 12% of each letter's words have their own latent, which absorbs the letter: that share is
    # absorbed (fully: the parent is silent there), and nothing in the clean dictionary
    assert 0.08 < absorbing.figures["mean_absorption_fraction"] < 0.16
    assert 0.08 < absorbing.figures["full_absorption_rate"] < 0.16
    assert clean.figures["mean_absorption_fraction"] < 0.01
    assert clean.figures["full_absorption_rate"] < 0.01
    # the parent misses exactly the absorbed words, and none in the clean dictionary
    assert absorbing.figures["main_miss_rate"] == pytest.approx(
        absorbing.figures["full_absorption_rate"], abs=0.02)
    assert clean.figures["main_miss_rate"] < 0.01


def test_absorption_of_words_on_hand_made_cases():
    # probe along e0; latent 0 is the main one (decoder e0), latent 1 absorbs (decoder along
    # (e0 + e1) / sqrt 2), latent 2 is orthogonal to the probe
    e = torch.eye(3)
    decoder = torch.stack([e[0], (e[0] + e[1]) / math.sqrt(2), e[2]])
    probe, main = e[0] * 5, torch.tensor([0])
    x = torch.tensor([[2.0, 0, 0], [2.0, 2, 0], [2.0, 2, 0], [2.0, 0, 3]])
    codes = torch.tensor([[2.0, 0, 0],                    # the main latent carries it all
                          [0.0, 2 * math.sqrt(2), 0],     # fully absorbed
                          [1.0, math.sqrt(2), 0],         # half by the main, half absorbed
                          [0.0, 0, 3]])                   # missed and not absorbed
    out = absorption_of_words(x, codes, decoder, probe, main)
    assert out.fraction.tolist() == pytest.approx([0.0, 1.0, 0.5, 0.0])
    assert out.full.tolist() == [False, True, False, False]
    assert out.main_fired.tolist() == [True, False, True, False]


def test_absorption_of_words_counts_the_decoder_norm_and_survives_zero_rows():
    # a decoder row twice as long contributes twice as much: a_i (d_i . p); a zero row has
    # cosine 0 with the probe and never absorbs
    decoder = torch.tensor([[1.0, 0], [2.0, 0], [0.0, 0]])
    x = torch.tensor([[2.0, 0], [2.0, 0]])
    codes = torch.tensor([[0.0, 1.0, 0], [0.0, 0, 5.0]])
    out = absorption_of_words(x, codes, decoder, torch.tensor([1.0, 0]), torch.tensor([0]))
    assert out.fraction.tolist() == [1.0, 0.0]
    assert out.full.tolist() == [True, False]
    assert torch.isfinite(out.fraction).all()


def test_main_latents_grow_while_the_f1_jumps_by_more_than_the_threshold():
    feats = [torch.tensor([5]), torch.tensor([5, 7]), torch.tensor([5, 7, 1]),
             torch.tensor([5, 7, 1, 2])]
    assert select_main_latents(feats, [0.5, 0.6, 0.62, 0.9]).tolist() == [5, 7]
    assert select_main_latents(feats, [0.5, 0.52, 0.9, 0.95]).tolist() == [5]
    assert select_main_latents(feats, [0.0, 0.0, 0.0, 0.0]).tolist() == [5]


# --- parity with SAEBench ---------------------------------------------------------------------
@pytest.fixture
def saebench(monkeypatch):
    """SAEBench's absorption modules, imported with stand-ins for SAELens and TransformerLens
    (they only name their classes in type hints there)."""
    pytest.importorskip("sae_bench", reason="pip install --no-deps sae-bench==0.6.0")
    for name, attr in (("sae_lens", "SAE"), ("transformer_lens", "HookedTransformer")):
        if importlib.util.find_spec(name) is None:
            stub = types.ModuleType(name)
            setattr(stub, attr, object)
            monkeypatch.setitem(sys.modules, name, stub)
    package = "sae_bench.evals.absorption."
    return types.SimpleNamespace(
        calculator=importlib.import_module(package + "feature_absorption_calculator"),
        k_sparse=importlib.import_module(package + "k_sparse_probing"))


class RecordedModel:
    """What SAEBench's calculator asks of a HookedTransformer, answered from a table: the
    activation of each word (read at position -1)."""

    def __init__(self, acts: dict[str, torch.Tensor]):
        self.acts = acts

    def run_with_cache(self, prompts, names_filter):
        words = [p.rsplit("\n", 1)[-1].removesuffix(" has the first letter:") for p in prompts]
        return None, {names_filter[0]: torch.stack([self.acts[w] for w in words])[:, None]}

    def to_tokens(self, prompt):
        return torch.zeros(1, 1)


class ReluSae:
    """What SAEBench's calculator asks of a SAELens SAE."""

    def __init__(self, w_enc, b_enc, w_dec):
        self.W_enc, self.b_enc, self.W_dec, self.device = w_enc, b_enc, w_dec, "cpu"

    def encode(self, x):
        return torch.relu(x @ self.W_enc + self.b_enc)


def test_absorption_of_words_matches_saebench_calculator(saebench):
    g = torch.Generator().manual_seed(0)
    d, n_latents, n = 16, 40, 300
    w_dec = torch.randn(n_latents, d, generator=g)
    w_dec /= w_dec.norm(dim=1, keepdim=True)  # SAEBench's projection assumes unit rows
    probe = torch.randn(d, generator=g)
    w_dec[:6] = 0.6 * w_dec[:6] + probe / probe.norm()  # latents aligned with the probe
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    b_enc = -0.3 * torch.rand(n_latents, generator=g)
    b_enc[:2] = -1.0  # the main latents often stay silent
    sae = ReluSae(0.5 * w_dec.T + 0.1 * torch.randn(d, n_latents, generator=g), b_enc, w_dec)
    x = torch.randn(n, d, generator=g) + 0.8 * probe * torch.rand(n, 1, generator=g)
    words = [f"w{i}" for i in range(n)]
    main = [0, 1]
    calculator = saebench.calculator.FeatureAbsorptionCalculator(
        model=RecordedModel(dict(zip(words, x))), icl_word_list=["e1", "e2"],
        max_icl_examples=1, base_template="{word} has the first letter:", word_token_pos=-1,
        batch_size=64)
    theirs = calculator.calculate_absorption(sae, words, probe, main, layer=0,
                                             show_progress=False).word_results
    ours = absorption_of_words(x, sae.encode(x), w_dec, probe, torch.tensor(main))
    fraction = torch.tensor([r.absorption_fraction for r in theirs], dtype=torch.float32)
    full = torch.tensor([r.is_full_absorption for r in theirs])
    # every branch of their computation is reached on these words
    assert (fraction == 0).any() and (fraction == 1).any()
    assert ((fraction > 0) & (fraction < 1)).any() and full.any()
    assert torch.allclose(ours.fraction, fraction, atol=1e-5)
    assert torch.equal(ours.full, full)


def test_main_latents_match_saebench_feature_splits(saebench):
    import pandas as pd

    g = torch.Generator().manual_seed(0)
    rows, expected = [], {}
    for letter in LETTERS:
        f1s = torch.rand(10, generator=g).sort().values.tolist()
        f1s[3] += 0.2 * float(torch.rand(1, generator=g))
        feats = [torch.randperm(50, generator=g)[:k + 1] for k in range(10)]
        row = {"letter": letter}
        for k in range(10):
            row[f"f1_sparse_sae_{k + 1}"] = f1s[k]
            row[f"sparse_sae_k_{k + 1}_feats"] = feats[k].numpy()
        rows.append(row)
        expected[letter] = select_main_latents(feats, f1s, 0.03).tolist()
    df = pd.DataFrame(rows)
    saebench.k_sparse.add_feature_splits_to_metrics_df(df, max_k_value=10, f1_jump_threshold=0.03)
    assert {r.letter: list(r.split_feats) for r in df.itertuples()} == expected
    assert len({len(v) for v in expected.values()}) > 1  # the rule stops at different k


# --- the family on a tiny model ---------------------------------------------------------------
def tiny_tokenizer(per_letter: dict[str, int], seed: int = 0):
    """A word-level tokenizer knowing the prompt's pieces and, for each letter, the given number
    of made-up words starting with it (a transformers PreTrainedTokenizerFast)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    g = torch.Generator().manual_seed(seed)
    vocab = {"<s>": 0, "<unk>": 1, "\n": 2, " has": 3, " the": 4, " first": 5, " letter": 6,
             ":": 7, "3": 8}
    for c in LETTERS.upper():
        vocab[f" {c}"] = len(vocab)
    for letter, n in per_letter.items():
        while sum(w[1] == letter for w in vocab if len(w) > 2) < n:
            tail = "".join(LETTERS[i] for i in torch.randint(26, (5,), generator=g))
            vocab.setdefault(f" {letter}{tail}", len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r" ?[A-Za-z]+|\n|:|3"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>")


SMALL = AbsorptionConfig(words_per_letter=30, min_words_per_letter=12, icl_examples=3,
                         contexts=2, l1_epochs=5, min_probe_f1=0.0, max_k=3)


def test_words_skip_thin_letters_and_keep_the_examples_out():
    tok = tiny_tokenizer({"a": 40, "b": 20, "c": 5})
    words = first_letter_words(tok, SMALL)
    assert words.examples.shape == (2, 3)
    assert not set(words.examples.flatten().tolist()) & set(words.token_ids.tolist())
    # 24 letters have only their answer token (" A" ...), c has 6 words: all skipped
    assert "c" in words.skipped and len(words.skipped) == 24
    counts = {LETTERS[c]: int((words.letters == c).sum()) for c in words.letters.unique()}
    assert counts["a"] == 30 and 12 <= counts["b"] <= 21
    for c in words.letters.unique():  # each letter has train and test words
        assert words.train[words.letters == c].any() and (~words.train[words.letters == c]).any()
    for i, w in zip(words.token_ids.tolist(), words.letters.tolist()):
        assert tok.decode([i]).lower().startswith(" " + LETTERS[w])


def test_a_small_vocabulary_gets_fewer_examples_instead_of_failing():
    tok = tiny_tokenizer({"a": 25, "b": 25})  # 26 + 4 + 50 single-token words
    config = AbsorptionConfig(min_words_per_letter=5)  # wants 8 contexts x 10 examples
    words = first_letter_words(tok, config)
    assert words.examples.shape == (2, 10)  # 20 = a quarter of the 80 words
    # a and b have 26 words each (" A" and " B" included), the other letters two at most
    in_examples = int((words.example_letters <= 1).sum())
    assert set(words.letters.tolist()) == {0, 1}
    assert len(words.token_ids) == 52 - in_examples


def test_prompts_end_at_the_word_in_saebench_template():
    tok = tiny_tokenizer({"a": 40, "b": 40})
    words = first_letter_words(tok, SMALL)
    prefix = prompt_prefixes(tok, words.examples, words.example_letters, SMALL)[0]
    word = int(words.token_ids[0])
    text = "".join(tok.convert_ids_to_tokens(prefix + [word]))
    examples = tok.convert_ids_to_tokens(words.examples[0].tolist())
    assert text == "".join(f"\n{w} has the first letter: {w[1].upper()}" for w in examples) \
        + "\n" + tok.convert_ids_to_tokens(word)


def test_reused_prefix_gives_the_activations_of_the_full_prompts(caplog):
    lm = tiny_llama(vocab=80, hidden=32, layers=3)
    g = torch.Generator().manual_seed(0)
    prefixes = [torch.randint(2, 80, (11,), generator=g).tolist(),
                torch.randint(2, 80, (7,), generator=g).tolist()]
    context_of = torch.randint(2, (20,), generator=g)
    word_ids = torch.randint(2, 80, (20,), generator=g)
    args = (lm, "model.layers.1", prefixes, context_of, word_ids, 6)
    with caplog.at_level("INFO", logger="saelab.evaluate.absorption"):
        cached = word_activations(*args, reuse_prefix=True)
    assert "full prompts" not in caplog.text  # the cache was used, not the fallback
    full = word_activations(*args, reuse_prefix=False)
    assert torch.allclose(cached, full, atol=1e-5)
    expected = saelab.capture.capture(
        lm, ["model.layers.1"], torch.tensor([prefixes[1] + [int(word_ids[3])]]))
    assert context_of[3] == 1
    assert torch.allclose(full[3], expected["model.layers.1"][0, -1], atol=1e-5)


def test_a_context_without_words_is_passed_over():
    lm = tiny_llama(vocab=80, hidden=32, layers=2)
    prefixes = [[5, 6, 7], [8, 9]]
    acts = word_activations(lm, "model.layers.0", prefixes, torch.zeros(4, dtype=torch.long),
                            torch.tensor([10, 11, 12, 13]))
    assert acts.shape == (4, 32) and torch.isfinite(acts).all()


@pytest.fixture(scope="module")
def tiny():
    tok = tiny_tokenizer({c: 40 for c in "abcdef"} | {"g": 4})
    lm = tiny_llama(vocab=len(tok), hidden=32, layers=2)
    lm.tokenizer = tok
    return lm


@pytest.fixture
def small_config(monkeypatch):
    monkeypatch.setattr(Absorption, "config", SMALL)


def test_family_runs_through_evaluate_with_dead_latents(tiny, small_config, tmp_path):
    sae = saelab.create("topk", d_in=32, n_latents=64, k=4, seed=1)
    with torch.no_grad():  # half the latents can never fire
        sae.W_enc[32:] = 0
        sae.b_enc[32:] = -1
    report = saelab.evaluate(sae, metrics=("absorption",), model=tiny, hookpoint="model.layers.0",
                             out=tmp_path)
    assert (tmp_path / "absorption_letters.png").stat().st_size > 0
    figures = report["absorption"]
    assert set(figures) == set(FIGURES) == set(family("absorption").figures)
    assert figures["letters_skipped"] == 20 and figures["words"] == 6 * 30
    assert figures["letters_evaluated"] + figures["letters_weak_probe"] == 6
    assert all(math.isfinite(v) for v in figures.values())  # min_probe_f1 0: all evaluated
    assert 0 <= figures["mean_absorption_fraction"] <= 1


def test_the_evaluation_seed_changes_the_sample_and_repeats_it(tiny, small_config):
    sae = saelab.create("topk", d_in=32, n_latents=64, k=4, seed=1)

    def run(seed):
        return saelab.evaluate(sae, metrics=("absorption",), model=tiny,
                               hookpoint="model.layers.0", seed=seed)["absorption"]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_refused_before_any_work_without_a_model_or_a_tokenizer(tiny):
    sae = saelab.create("topk", d_in=32, n_latents=64, k=4, seed=1)
    with pytest.raises(ConfigError, match="'absorption'.*model:"):
        saelab.evaluate(sae, metrics=("absorption",), hookpoint="model.layers.0")
    bare = tiny_llama(vocab=80, hidden=32, layers=2)  # no tokenizer, no name_or_path
    calls = []
    bare.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ConfigError, match="tokenizer"):
        saelab.evaluate(sae, metrics=("absorption",), model=bare, hookpoint="model.layers.0")
    with pytest.raises(ConfigError, match="hookpoint"):
        saelab.evaluate(sae, metrics=("absorption",), model=tiny)
    assert not calls


def test_a_transcoder_is_refused():
    tc = saelab.create("transcoder", d_in=32, d_out=32, n_latents=64, k=4)
    lm = tiny_llama(vocab=80, hidden=32, layers=2)
    with pytest.raises(ConfigError, match="absorption: a transcoder"):
        saelab.evaluate(tc, metrics=("absorption",), model=lm, hookpoint="model.layers.0",
                        target_hookpoint="model.layers.1")


# --- end to end on SmolLM2 -----------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_probes_read_the_first_letter(caplog):
    from saelab import models

    lm = models.load("smollm2-135m")
    sae = saelab.create("topk", d_in=576, n_latents=1024, k=16, seed=0)
    config = dataclasses.replace(AbsorptionConfig(), words_per_letter=40, l1_epochs=10)
    with caplog.at_level("INFO", logger="saelab.evaluate.absorption"):
        result = first_letter_absorption(lm.model, lm.tokenizer, "model.layers.6", sae, config)
    assert "full prompts" not in caplog.text  # the prefix cache works on the real model
    figures = result.figures
    assert figures["letters_skipped"] == 0 and figures["words"] > 900
    assert figures["probe_accuracy"] > 0.3  # chance is 1/26
    assert set(figures) == set(FIGURES)
