"""The browser's prompt page leaves out the positions training left out: the store's exclusion
rule (special tokens, outlier norms) marks them, and no feature is listed on them."""

from __future__ import annotations

import pytest

import saelab
from saelab.interpret.app import Prompter, prompt_rows
from saelab.models import load_tokenizer
from tests.interpret.browser_support import HOOKPOINT, store_and_sae

TEXT = "Paris is big.<|endoftext|>Rome is old."


@pytest.fixture(scope="module")
def setup(model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("prompt")
    store, sae = store_and_sae(model_dir, root, 512)
    sources = {"model": str(model_dir), "hookpoint": HOOKPOINT, "dictionary": str(sae),
               "store": str(store)}
    eot = load_tokenizer("smollm2-135m").convert_tokens_to_ids("<|endoftext|>")
    return sources, eot


def test_excluded_positions_carry_no_feature_and_are_marked(setup):
    sources, eot = setup
    rule = {"special_ids": [eot], "norm_factor": None, "norm_threshold": {}}
    tokens, codes, _, kept = Prompter({**sources, "exclusion": rule}, saelab.load).run(TEXT)
    assert "<|endoftext|>" in tokens
    dropped = [i for i, t in enumerate(tokens) if t == "<|endoftext|>"]
    assert [i for i, k in enumerate(kept.tolist()) if not k] == dropped
    assert (codes[dropped] == 0).all() and (codes[kept] > 0).sum(1).eq(4).all()
    rows = prompt_rows(tokens, codes, set(), None, kept)
    assert [r["index"] for r in rows if r["excluded"]] == dropped
    assert all(not r["features"] for r in rows if r["excluded"])
    # without a rule the same position does get features: the rule is what removed them
    _, bare, _, kept_all = Prompter({**sources, "exclusion": {}, "store": None},
                                    saelab.load).run(TEXT)
    assert bool(kept_all.all()) and (bare[dropped] > 0).sum(1).eq(4).all()


def test_a_dashboard_without_the_rule_reads_it_from_its_store(setup):
    sources, eot = setup
    rule = Prompter(sources, saelab.load).exclusion()  # no "exclusion" key: the manifest's
    assert eot in rule.special_ids
