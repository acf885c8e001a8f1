"""A dictionary is read at the hookpoint it was trained on: a store lacking it is refused naming
both, unless the mismatch is allowed on purpose (then a warning says so)."""

from __future__ import annotations

import logging

import pytest
import torch

import saelab
from saelab.errors import ConfigError
from saelab.evaluate import check_hookpoint
from saelab.store import capture_to_store


def sae_trained_on(hookpoint: str | None):
    sae = saelab.create("topk", d_in=32, n_latents=64, k=3)
    if hookpoint is not None:
        sae.provenance["hookpoint"] = hookpoint
    return sae


@pytest.fixture(scope="module")
def store(tiny_lm, tmp_path_factory):
    """A store of layer 1 only."""
    tokens = torch.randint(2, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    return capture_to_store(tiny_lm, tokens, ["model.layers.1"],
                            tmp_path_factory.mktemp("hp") / "store", model_name="tiny",
                            norm_factor=None, progress=False)


def test_the_dictionarys_own_hookpoint_is_chosen_among_several():
    sae = sae_trained_on("model.layers.2")
    assert check_hookpoint(sae, ["model.layers.1", "model.layers.2"]) == "model.layers.2"
    assert check_hookpoint(sae, ["model.layers.2", "model.layers.2.grad"]) == "model.layers.2"


def test_a_store_lacking_the_dictionarys_hookpoint_is_refused_naming_both():
    sae = sae_trained_on("model.layers.10")
    with pytest.raises(ConfigError, match=r"'model\.layers\.10'.*'model\.layers\.15'"):
        check_hookpoint(sae, ["model.layers.15"])
    with pytest.raises(ConfigError, match=r"'model\.layers\.10'.*allow-hookpoint-mismatch"):
        check_hookpoint(sae, ["model.layers.15"], hookpoint="model.layers.15")
    with pytest.raises(ConfigError, match=r"model\.layers\.10'.*leave the hookpoint out"):
        check_hookpoint(sae, ["model.layers.10", "model.layers.15"], hookpoint="model.layers.15")
    with pytest.raises(ConfigError, match=r"model\.layers\.10.*lacks.*model\.layers\.14"):
        check_hookpoint(sae, ["model.layers.14", "model.layers.15"], allow_mismatch=True)


def test_an_allowed_mismatch_proceeds_with_a_warning(caplog):
    sae = sae_trained_on("model.layers.10")
    with caplog.at_level(logging.WARNING):
        assert check_hookpoint(sae, ["model.layers.15"], allow_mismatch=True) == \
            "model.layers.15"
    assert "model.layers.10" in caplog.text and "model.layers.15" in caplog.text


def test_without_provenance_the_stores_only_hookpoint_is_read():
    sae = sae_trained_on(None)
    assert check_hookpoint(sae, ["model.layers.1"]) == "model.layers.1"
    with pytest.raises(ConfigError, match="several hookpoints"):
        check_hookpoint(sae, ["model.layers.1", "model.layers.2"])
    with pytest.raises(ConfigError, match="no hookpoint 'model.layers.3'"):
        check_hookpoint(sae, ["model.layers.1"], hookpoint="model.layers.3")


def test_output_site_spelled_out_is_the_same_hookpoint():
    sae = sae_trained_on("model.layers.1:output")
    assert check_hookpoint(sae, ["model.layers.1"]) == "model.layers.1"


def test_evaluate_on_a_store_of_another_layer_is_refused_unless_allowed(store, caplog):
    with pytest.raises(ConfigError, match=r"'model\.layers\.0'.*'model\.layers\.1'"):
        saelab.evaluate(sae_trained_on("model.layers.0"), store)
    with caplog.at_level(logging.WARNING):
        report = saelab.evaluate(sae_trained_on("model.layers.0"), store,
                                 allow_hookpoint_mismatch=True)
    assert "model.layers.0" in caplog.text
    assert report["meta"]["hookpoint"] == "model.layers.1"
    assert report["sparsity"]["n_inputs"] == store.n_rows
    same = saelab.evaluate(sae_trained_on("model.layers.1"), str(store.path))
    assert same["meta"]["data"]["kind"] == "store"
