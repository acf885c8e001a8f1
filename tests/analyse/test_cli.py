"""`saelab embed` and `saelab diff` on the tiny model: they run, reuse what they wrote, and
refuse bad input with a message and exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saelab.cli import main


@pytest.fixture
def sae_dir(planted_sae, tmp_path):
    planted_sae.save(tmp_path / "sae")
    return str(tmp_path / "sae")


@pytest.fixture
def corpora(tmp_path):
    cats, dogs = tmp_path / "cats.txt", tmp_path / "dogs.txt"
    cats.write_text("\n\n".join(f"Here the cat number {i} sleeps." for i in range(25)))
    dogs.write_text("\n\n".join(f"Here the dog number {i} sleeps." for i in range(25)))
    return str(cats), str(dogs)


def test_embed_then_diff_reuses_and_finds_the_planted_latent(sae_dir, corpora, tmp_path,
                                                             capsys) -> None:
    cats, dogs = corpora
    assert main(["embed", sae_dir, cats, "--no-progress"]) == 0
    assert "embedded 25 documents" in capsys.readouterr().out
    assert main(["diff", sae_dir, cats, dogs, "--no-progress", "--out",
                 str(tmp_path / "d.json")]) == 0
    out = capsys.readouterr().out
    assert "1 of 1 latents differ significantly" in out and "cat»" in out
    result = json.loads((tmp_path / "d.json").read_text())
    assert result["more_in_a"][0]["latent"] == 0 and result["more_in_a"][0]["freq_a"] == 1.0
    assert main(["embed", sae_dir, cats, "--no-progress"]) == 0
    assert "reused 25 documents" in capsys.readouterr().out


def test_an_unknown_corpus_exits_2_naming_it_before_any_work(sae_dir, corpora, capsys) -> None:
    assert main(["diff", sae_dir, corpora[0], "bibel", "--no-progress"]) == 2
    assert "unknown corpus 'bibel'" in capsys.readouterr().err
    assert not list(Path(corpora[0]).parent.glob("*.embed"))  # the first was not embedded


def test_corpora_too_small_exit_2_saying_how_many_are_needed(sae_dir, tmp_path, capsys) -> None:
    (tmp_path / "a.txt").write_text("The cat sat.\n\nA cat ran.")
    (tmp_path / "b.txt").write_text("The dog sat.\n\nA dog ran.")
    code = main(["diff", sae_dir, str(tmp_path / "a.txt"), str(tmp_path / "b.txt"),
                 "--no-progress"])
    assert code == 2 and "too small" in capsys.readouterr().err


def test_a_model_the_dictionary_was_not_trained_on_exits_2(sae_dir, corpora, capsys) -> None:
    assert main(["embed", sae_dir, corpora[0], "--model", "smollm2-135m"]) == 2
    assert "allow-mismatch" in capsys.readouterr().err
