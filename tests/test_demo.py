"""The demo path on the real packaged SmolLM2-135M and Wikipedia text (small sizes)."""

from __future__ import annotations

import json

import pytest

import saelab
from saelab.config import build
from saelab.errors import OutputExistsError
from saelab.evaluate import headline
from saelab.pipeline import DemoConfig, run_demo

pytestmark = pytest.mark.slow

SMALL = {"capture": {"n_tokens": 12_288}, "eval_tokens": 2048, "eval": {"splice_tokens": 1024},
         "n_latents": 512, "k": 16, "train": {"epochs": 3, "batch_size": 512},
         "dashboard": {"n_features": 8}, "progress": False}


def small(out, **changes) -> DemoConfig:
    """The demo at test sizes; the settings it does not name keep the demo's defaults."""
    return build(DemoConfig, {**SMALL, "out": str(out), **changes})


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    return out, run_demo(small(out))


def test_demo_writes_dictionary_report_and_dashboard(demo):
    out, report = demo
    sae = saelab.load(out / "sae")
    assert sae.d_in == 576 and sae.n_latents == 512
    assert sae.provenance["hookpoint"] == "model.layers.15"
    on_disk = json.loads((out / "report.json").read_text())
    for key in ("fvu", "l0", "dead_fraction", "ce_loss_clean", "ce_loss_spliced",
                "ce_loss_ablated"):
        assert key in headline(on_disk)
    assert on_disk["demo"]["hookpoint"] == "model.layers.15"
    assert (out / "dashboard" / "index.html").is_file()
    assert (out / "l0_hist.png").is_file() and (out / "density_hist.png").is_file()


def test_demo_sae_learns_and_splicing_beats_ablation(demo):
    _, report = demo
    figures = headline(report)
    assert figures["fvu"] < 0.6
    assert figures["l0"] <= 16
    assert figures["ce_loss_clean"] < figures["ce_loss_spliced"] < figures["ce_loss_ablated"]
    # massive-activation tokens are left out, and the report says how many
    assert 0 < report["demo"]["excluded_fraction"] < 0.1


def test_rerunning_the_same_demo_resumes_instead_of_redoing(demo):
    out, _ = demo
    shard = out / "store_train" / "00000.safetensors"
    before = shard.stat().st_mtime_ns
    again = run_demo(small(out))
    assert shard.stat().st_mtime_ns == before
    assert again["demo"]["seconds"]["train"] < 30


def test_a_different_demo_in_the_same_folder_is_refused(demo):
    out, _ = demo
    with pytest.raises(OutputExistsError):
        run_demo(small(out, k=8))
