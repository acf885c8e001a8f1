"""Gemma 3 270M as a packaged model: registered by alias, refused with the install command when
its packages are missing, loaded (its tokenizer) when they are installed and converted."""

from __future__ import annotations

import importlib.util

import pytest

from saelab.errors import MissingDependencyError
from saelab.models import PACKAGED, hub_id, load_tokenizer
from saelab.models._gemma import GEMMA3, INSTALL, PACKAGE, gemma_cache, gemma_folder


def test_gemma_alias_is_packaged_with_its_hub_id() -> None:
    assert GEMMA3 == "gemma3-270m" and GEMMA3 in PACKAGED
    assert hub_id("Gemma3-270M") == "google/gemma-3-270m"


def test_missing_gemma_package_names_the_install_command(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith(PACKAGE) else real(name, *a))
    with pytest.raises(MissingDependencyError) as err:
        gemma_folder()
    assert INSTALL in str(err.value)


@pytest.mark.skipif(importlib.util.find_spec(PACKAGE) is None or
                    not (gemma_cache() / "config.json").is_file(),
                    reason="Gemma 3 270M is not installed and converted here (CI installs only "
                           "the Makefile's assets): " + INSTALL)
def test_gemma_tokenizer_gives_offsets_for_alignment() -> None:
    tok = load_tokenizer(GEMMA3)
    enc = tok("The capital of France", return_offsets_mapping=True)
    assert enc["input_ids"][0] == tok.bos_token_id  # Gemma reads a BOS first
    assert enc["offset_mapping"][-1][1] == len("The capital of France")
