"""sparse_probing: a concept planted in one latent is found by the k = 1 probe (and not without
it), dead latents are survived, bad labels are refused before the model runs, the pooled
activations average the kept tokens, and the family runs on the packaged SmolLM2 and from
`saelab eval --labels`."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

import saelab
from saelab.capture.exclude import Exclusion
from saelab.data.labelled import LabelledTexts
from saelab.errors import ConfigError, DataError
from saelab.evaluate._pooled import pooled_activations
from saelab.evaluate._probe import one_vs_rest, stratified_split
from saelab.evaluate.sparse_probing import sparse_probes, top_k_mean_diff
from tests.conftest import tiny_llama
from tests.evaluate.concepts import Counted, labelled

HOOKPOINT = "model.layers.0"


def planted_codes(n_per_class=100, n_classes=3, n_latents=32, plant=True, dead=(), seed=0):
    """Pooled codes where latent 3c fires (about 1) on the texts of class c and nowhere else,
    over sparse noise latents; raw activations that carry no class at all."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.arange(n_classes).repeat_interleave(n_per_class)
    codes = torch.rand(len(targets), n_latents, generator=g) \
        * (torch.rand(len(targets), n_latents, generator=g) < 0.3)
    planted = [3 * c for c in range(n_classes)]
    for c, latent in enumerate(planted):
        codes[:, latent] = 0
        if plant:
            hits = targets == c
            codes[hits, latent] = 1 + 0.2 * torch.rand(int(hits.sum()), generator=g)
    codes[:, list(dead)] = 0
    raw = torch.randn(len(targets), 16, generator=g)
    return codes, raw, targets, planted


def split(targets, seed=0):
    return stratified_split(targets, generator=torch.Generator().manual_seed(seed))


def test_a_concept_planted_in_one_latent_is_found_by_the_k1_probe():
    codes, raw, targets, planted = planted_codes()
    result = sparse_probes(codes, raw, targets, split(targets))
    assert [int(order[0]) for order in result.latents] == planted
    assert result.sparse[:, 0].min() >= 0.95  # k = 1: the planted latent alone
    assert result.raw.mean() < 0.7            # the raw activations carry no class here


def test_without_the_planted_latent_the_k1_probe_is_near_chance():
    codes, raw, targets, _ = planted_codes(plant=False)
    result = sparse_probes(codes, raw, targets, split(targets))
    assert result.sparse[:, 0].mean() < 0.7


def test_dead_latents_are_survived_and_never_chosen_first():
    dead = [i for i in range(32) if i % 3]  # two thirds of the latents never fire
    codes, raw, targets, planted = planted_codes(dead=dead)
    result = sparse_probes(codes, raw, targets, split(targets))
    assert torch.isfinite(result.sparse).all() and torch.isfinite(result.all_latents).all()
    assert [int(order[0]) for order in result.latents] == planted
    assert result.ks == (1, 2, 5, 20)
    all_dead = sparse_probes(torch.zeros_like(codes), raw, targets, split(targets))
    assert torch.isfinite(all_dead.sparse).all()
    assert all_dead.sparse.max() <= 0.5 + 1e-6  # nothing to tell the classes apart


def test_k_is_capped_at_the_number_of_latents():
    codes, raw, targets, _ = planted_codes(n_latents=8)
    assert sparse_probes(codes, raw, targets, split(targets)).ks == (1, 2, 5, 8)


def test_top_k_mean_diff_ranks_by_absolute_difference_of_means():
    acts = torch.tensor([[1.0, 0.0, 5.0], [1.0, 0.0, 5.0], [0.0, 3.0, 5.0], [0.0, 3.0, 5.0]])
    y = torch.tensor([1, 1, 0, 0])
    assert top_k_mean_diff(acts, y, 3).tolist() == [1, 0, 2]


def test_one_vs_rest_is_balanced_with_negatives_from_every_other_class():
    targets = torch.tensor([0] * 30 + [1] * 40 + [2] * 50)
    s = one_vs_rest(targets, 0, torch.Generator().manual_seed(0))
    assert int(s.y.sum()) == 30 and len(s.y) == 60
    neg = targets[s.index[s.y == 0]]
    assert set(neg.tolist()) == {1, 2} and abs(int((neg == 1).sum()) - 15) <= 1
    assert (targets[s.index[s.y == 1]] == 0).all()


def test_stratified_split_holds_out_a_fifth_of_each_class():
    targets = torch.tensor([0] * 50 + [1] * 10)
    train = split(targets)
    assert int((~train[:50]).sum()) == 10 and int((~train[50:]).sum()) == 2


# --- on a tiny model ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lm():
    return tiny_llama(vocab=100, hidden=32, layers=2)




def test_pooled_activations_average_the_kept_positions_of_each_text(lm):
    from saelab.capture import capture

    sae = saelab.create("topk", d_in=32, n_latents=16, k=4, seed=0)
    tokens = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    pooled = pooled_activations(lm, tokens, HOOKPOINT, sae, batch_texts=2)
    assert pooled.positions.tolist() == [3, 1, 2]  # the first position is never pooled
    for i, ids in enumerate(tokens):
        acts = capture(lm, [HOOKPOINT], torch.tensor([ids]))[HOOKPOINT][0, 1:]
        assert torch.allclose(pooled.raw[i], acts.mean(0), atol=1e-5)
        assert torch.allclose(pooled.codes[i], sae.encode(acts).mean(0), atol=1e-5)
    # special tokens the exclusion rule names are left out too
    pooled = pooled_activations(lm, tokens, HOOKPOINT, sae, exclusion=Exclusion([7, 12], None))
    assert pooled.positions.tolist() == [2, 1, 1]


def test_bad_labels_are_refused_before_the_model_runs(lm):
    sae = saelab.create("topk", d_in=32, n_latents=16, k=4, seed=0)
    cases = [((["a", "b", "c"], ["x", "y"]), DataError, "3 texts but 2 labels"),
             (LabelledTexts(["t"] * 12, ["only"] * 12, tokens=[[1, 2]] * 12), DataError,
              "1 class"),
             (None, ConfigError, "labels:")]
    for labels, error, message in cases:
        with Counted(lm) as forwards, pytest.raises(error, match=message):
            saelab.evaluate(sae, metrics=("sparse_probing",), model=lm, labels=labels,
                            hookpoint=HOOKPOINT)
        assert forwards.count == 0


def test_without_a_tokenizer_the_refusal_says_how_to_tokenize(lm):
    sae = saelab.create("topk", d_in=32, n_latents=16, k=4, seed=0)
    texts = LabelledTexts([f"t{i}" for i in range(20)], ["ab"[i % 2] for i in range(20)])
    with Counted(lm) as forwards, pytest.raises(ConfigError, match=r"texts.tokenize\(tokenizer"):
        saelab.evaluate(sae, metrics=("sparse_probing",), model=lm, labels=texts,
                        hookpoint=HOOKPOINT)
    assert forwards.count == 0


def test_a_dictionary_with_dead_latents_gets_finite_figures_and_one_model_pass(lm):
    sae = saelab.create("topk", d_in=32, n_latents=64, k=4, seed=0)
    with torch.no_grad():  # half the latents can never win the top-k
        sae.W_enc[::2] = 0
        sae.b_enc[::2] = -1e4
    with Counted(lm) as forwards:
        report = saelab.evaluate(sae, metrics=("sparse_probing", "tpp"), model=lm,
                                 labels=labelled(), hookpoint=HOOKPOINT, seed=0)
    assert forwards.count == math.ceil(40 / 16)  # the two families share one pooled pass
    probing = report["sparse_probing"]
    assert all(math.isfinite(v) for v in probing.values())
    assert probing["n_classes"] == 2 and probing["n_texts"] == 40
    assert math.isfinite(report["tpp"]["tpp_threshold_20_total_metric"])


# --- end to end ---------------------------------------------------------------------------
@pytest.mark.slow
def test_sparse_probing_and_tpp_on_smollm2_wikipedia_topics_within_a_minute():
    from saelab.data.labelled import wikipedia_topics
    from saelab.models import load

    start = time.perf_counter()
    lm = load("smollm2-135m")
    texts = wikipedia_topics(per_class=24).tokenize(lm.tokenizer, context_len=64)
    sae = saelab.create("topk", d_in=576, n_latents=1024, k=32, seed=0)
    report = saelab.evaluate(sae, metrics=("sparse_probing", "tpp"), model=lm.model,
                             labels=texts, hookpoint="model.layers.4", seed=0)
    elapsed = time.perf_counter() - start
    probing, tpp = report["sparse_probing"], report["tpp"]
    assert probing["n_classes"] == 11 and probing["n_texts"] == 264
    assert probing["raw_accuracy"] > 0.75  # the model's activations do tell the topics apart
    assert all(math.isfinite(v) for v in probing.values())
    assert math.isfinite(tpp["tpp_threshold_20_total_metric"])
    assert elapsed < 90, elapsed


def test_saelab_eval_labels_file_runs_both_families(model_dir, tmp_path):
    from saelab.cli import main

    store, run = tmp_path / "store", tmp_path / "run"
    assert main(["capture", "--model", str(model_dir), "--hookpoints", HOOKPOINT,
                 "--n-tokens", "2048", "--context-len", "64", "--out", str(store),
                 "--no-progress"]) == 0
    assert main(["train", str(store), "--architecture", "topk", "--n-latents", "64", "--k", "4",
                 "--batch-size", "256", "--steps", "5", "--out", str(run), "--no-progress"]) == 0
    rows = [{"text": f"The {w} is here number {i}.", "label": w}
            for i in range(12) for w in ("cat", "dog", "fish")]
    rows.append({"text": "A lone bird.", "label": "bird"})
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "eval"
    assert main(["eval", str(run / "sae"), str(store), "--metrics", "sparse_probing", "tpp",
                 "--labels", str(labels), "--splice-tokens", "0", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["sparse_probing"]["n_classes"] == 3  # "bird" (one text) dropped
    assert report["sparse_probing"]["n_texts"] == 36 and report["tpp"]["n_texts"] == 36
    labels.write_text('{"text": "no label"}\n', encoding="utf-8")
    assert main(["eval", str(run / "sae"), str(store), "--metrics", "sparse_probing",
                 "--labels", str(labels), "--out", str(out)]) != 0
