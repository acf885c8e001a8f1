"""`saelab correlate` and `saelab cluster` on the tiny model with a planted dictionary: latents
0, 1, 2 fire exactly on the tokens " cat", " mouse", " dog" (latent 3 never fires). Cats and mice
share documents, dogs live apart, so the one pair beyond chance is (0, 1), and clustering along
the three latents recovers the documents' labels."""

from __future__ import annotations

import json

import pytest
import torch

from saelab.cli import main

from tests.analyse.conftest import HOOKPOINT

WORDS = (" cat", " mouse", " dog")


@pytest.fixture(scope="module")
def sae_dir(tiny, model_dir, tmp_path_factory):
    import saelab

    sae = saelab.create("topk", d_in=tiny.d_model, n_latents=4, k=1, seed=0)
    emb = tiny.model.get_input_embeddings().weight.detach()
    with torch.no_grad():
        for p in (sae.W_enc, sae.b_enc, sae.b_dec):
            p.zero_()
        for latent, word in enumerate(WORDS):
            (token,) = tiny.tokenizer(word, add_special_tokens=False)["input_ids"]
            e = emb[token]
            sae.W_enc[latent] = e / e.norm()
            sae.b_enc[latent] = -0.99 * e.norm()
    sae.provenance.update({"model": str(model_dir), "hookpoint": HOOKPOINT})
    folder = tmp_path_factory.mktemp("planted") / "sae"
    sae.save(folder)
    return str(folder)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "pets.jsonl"
    rows = [{"text": f"The cat {i} chased the mouse again.", "title": f"c{i}", "label": "cats"}
            for i in range(12)]
    rows += [{"text": f"The dog {i} sleeps in the sun.", "title": f"d{i}", "label": "dogs"}
             for i in range(12)]
    rows += [{"text": f"The bird {i} sings in the tree.", "title": f"b{i}", "label": "birds"}
             for i in range(12)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_correlate_finds_the_planted_pair_with_its_expected_count(sae_dir, corpus, tmp_path,
                                                                  capsys) -> None:
    out = tmp_path / "c.json"
    assert main(["correlate", sae_dir, corpus, "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1 of 3 pairs of 3 latents co-occur beyond chance in 36 documents" in printed
    assert "cat»" in printed and "mouse»" in printed  # each latent's strongest context
    result = json.loads(out.read_text())
    (pair,) = result["pairs"]
    assert (pair["latent_a"], pair["latent_b"], pair["together"]) == (0, 1, 12)
    assert pair["expected"] == pytest.approx(12 * 12 / 36)  # n_a n_b / N under independence


def test_correlate_labels_latents_from_an_explanations_file(sae_dir, corpus, tmp_path,
                                                            capsys) -> None:
    labels = tmp_path / "explanations.jsonl"
    labels.write_text(json.dumps({"feature": 0, "explanation": "felines", "scores": {}}) + "\n")
    assert main(["correlate", sae_dir, corpus, "--no-progress", "--explanations",
                 str(labels)]) == 0
    assert "0 [felines]:" in capsys.readouterr().out


def test_cluster_along_chosen_latents_recovers_the_labels(sae_dir, corpus, tmp_path,
                                                          capsys) -> None:
    out = tmp_path / "k.json"
    assert main(["cluster", sae_dir, corpus, "--no-progress", "--features", "0", "1", "2",
                 "--clusters", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "36 documents of" in printed and "adjusted Rand index" in printed
    result = json.loads(out.read_text())
    assert result["scores"]["sae"] == pytest.approx(1.0)
    cats = next(c for c in result["clusters"] if c.get("label") == "cats")
    assert cats["purity"] == 1.0 and cats["size"] == 12
    assert {d["latent"] for d in cats["latents"]} == {0, 1}


def test_cluster_without_features_takes_each_labels_latents(sae_dir, corpus, capsys) -> None:
    assert main(["cluster", sae_dir, corpus, "--no-progress", "--clusters", "3",
                 "--per-label", "1"]) == 0
    assert "adjusted Rand index against the documents' labels: sae 1.000" in \
        capsys.readouterr().out


def test_bad_input_exits_2_naming_what_is_wrong(sae_dir, corpus, tmp_path, capsys) -> None:
    assert main(["cluster", sae_dir, corpus, "--no-progress", "--features", "9"]) == 2
    assert "--features [9] out of range" in capsys.readouterr().err
    assert main(["correlate", sae_dir, "pets-typo.txt", "--no-progress"]) == 2
    assert "unknown corpus 'pets-typo.txt'" in capsys.readouterr().err
    unlabelled = tmp_path / "plain.txt"
    unlabelled.write_text("\n\n".join(f"The cat {i} sat." for i in range(6)))
    assert main(["cluster", sae_dir, str(unlabelled), "--no-progress"]) == 2
    assert "--features" in capsys.readouterr().err
    assert main(["correlate", sae_dir, str(unlabelled), "--no-progress"]) == 2
    assert "no pair of latents to test" in capsys.readouterr().err
