"""A dashboard built from a store reads the dictionary's own hookpoint: a store that lacks it is
refused before anything is written, unless the mismatch is allowed."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import saelab
from saelab.errors import ConfigError
from saelab.interpret import dashboard_from_store
from saelab.store import capture_to_store


class Words:
    """A tokenizer stand-in: id i reads ' w<i>'."""

    def decode(self, ids):
        return "".join(f" w{i}" for i in ids)


@pytest.fixture(scope="module")
def store(tiny_lm, tmp_path_factory):
    """A store holding layers 1 and 2."""
    tokens = torch.randint(2, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    return capture_to_store(tiny_lm, tokens, ["model.layers.1", "model.layers.2"],
                            tmp_path_factory.mktemp("dash") / "store", model_name="tiny",
                            norm_factor=None, progress=False)


def sae_on(hookpoint: str):
    sae = saelab.create("topk", d_in=32, n_latents=16, k=2, seed=0)
    sae.provenance["hookpoint"] = hookpoint
    return sae


def test_dashboard_reads_the_hookpoint_the_dictionary_was_trained_on(store, tmp_path):
    out = dashboard_from_store(sae_on("model.layers.2"), store, tmp_path / "dash",
                               tokenizer=Words(), n_features=4, progress=False)
    meta = json.loads((out / "dashboard.json").read_text())
    assert "model.layers.2" in meta["title"] and meta["n_rows"] == store.n_rows
    assert (out / "index.html").is_file() and len(meta["features"]) == 4


def test_dashboard_on_a_store_lacking_the_hookpoint_is_refused_before_writing(store, tmp_path):
    with pytest.raises(ConfigError, match=r"'model\.layers\.0'.*'model\.layers\.1'"):
        dashboard_from_store(sae_on("model.layers.0"), store, tmp_path / "dash",
                             tokenizer=Words(), progress=False)
    assert not (tmp_path / "dash").exists()


def test_dashboard_with_an_allowed_mismatch_warns_and_reads_the_named_hookpoint(store, tmp_path,
                                                                                caplog):
    with caplog.at_level(logging.WARNING):
        out = dashboard_from_store(sae_on("model.layers.0"), store, tmp_path / "dash",
                                   tokenizer=Words(), hookpoint="model.layers.1",
                                   allow_hookpoint_mismatch=True, n_features=3, progress=False)
    assert "model.layers.0" in caplog.text
    assert "model.layers.1" in json.loads((out / "dashboard.json").read_text())["title"]
