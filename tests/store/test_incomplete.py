"""A store whose capture has not finished (still running, or killed) is refused for training,
evaluation and dashboards unless that is asked for."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import saelab
from saelab.errors import DataError
from saelab.store import capture_to_store

HP = "model.layers.1"


@pytest.fixture
def incomplete(tiny_lm, tmp_path):
    """A store marked as a capture killed half-way (its manifest says complete: false)."""
    tokens = torch.randint(3, 64, (8, 16), generator=torch.Generator().manual_seed(3))
    path = tmp_path / "store"
    capture_to_store(tiny_lm, tokens, [HP], path, model_name="tiny", progress=False)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(complete=False, contexts_done=4)
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def topk():
    return saelab.create("topk", d_in=32, n_latents=64, k=3)


def cfg(**kw):
    return saelab.TrainConfig(steps=3, batch_size=32, progress=False, **kw)


def test_training_on_an_incomplete_store_is_refused_saying_how_to_finish_it(incomplete):
    with pytest.raises(DataError, match=r"incomplete \(4 of 8 contexts.*Rerun the same `saelab "
                                        r"capture`.*--allow-incomplete-store"):
        saelab.fit(topk(), incomplete, cfg())


def test_training_on_it_when_asked_warns_and_trains(incomplete, caplog):
    with caplog.at_level(logging.WARNING, logger="saelab.store"):
        sae = saelab.fit(topk(), incomplete, cfg(allow_incomplete_store=True))
    assert sae.provenance["steps"] == 3
    assert any("is incomplete" in r.message for r in caplog.records)


def test_evaluating_on_an_incomplete_store_is_refused_unless_asked(incomplete):
    sae = topk()
    sae.provenance["hookpoint"] = HP
    with pytest.raises(DataError, match="incomplete"):
        saelab.evaluate(sae, incomplete)
    report = saelab.evaluate(sae, incomplete, allow_incomplete_store=True)
    assert report["sparsity"]["l0"] == pytest.approx(3.0)


def test_the_cli_refuses_it_with_exit_2_and_accepts_the_flag(incomplete, tmp_path, capsys):
    from saelab.cli import main

    args = ["train", str(incomplete), "--n-latents", "64", "--k", "3", "--steps", "2",
            "--batch-size", "32", "--no-progress", "--out", str(tmp_path / "run")]
    assert main(args) == 2
    assert "--allow-incomplete-store" in capsys.readouterr().err
    assert main(args + ["--allow-incomplete-store"]) == 0


def test_a_dashboard_of_an_incomplete_store_is_refused_before_anything_is_written(incomplete,
                                                                                  tmp_path):
    from saelab.interpret import dashboard_from_store

    sae = topk()
    sae.provenance["hookpoint"] = HP
    with pytest.raises(DataError, match="incomplete"):
        dashboard_from_store(sae, incomplete, tmp_path / "dash", progress=False)
    assert not (tmp_path / "dash").exists()
