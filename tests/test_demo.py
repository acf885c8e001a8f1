"""The demo path on the real packaged SmolLM2-135M and Wikipedia text (small sizes)."""

from __future__ import annotations

import json

import pytest

import saelab
from saelab.errors import OutputExistsError
from saelab.pipeline import DemoConfig, run_demo

pytestmark = pytest.mark.slow

SMALL = dict(train_tokens=12_288, eval_tokens=2048, splice_tokens=1024, n_latents=512, k=16,
             epochs=3, batch_size=512, n_features=8, progress=False)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    return out, run_demo(DemoConfig(out=str(out), **SMALL))


def test_demo_writes_dictionary_report_and_dashboard(demo):
    out, report = demo
    sae = saelab.load(out / "sae")
    assert sae.d_in == 576 and sae.n_latents == 512
    assert sae.provenance["hookpoint"] == "model.layers.15"
    on_disk = json.loads((out / "report.json").read_text())
    for key in ("fvu", "l0", "dead_fraction", "ce_loss_clean", "ce_loss_spliced",
                "ce_loss_ablated"):
        assert key in on_disk
    assert (out / "dashboard" / "index.html").is_file()
    assert (out / "l0_hist.png").is_file() and (out / "density_hist.png").is_file()


def test_demo_sae_learns_and_splicing_beats_ablation(demo):
    _, report = demo
    assert report["fvu"] < 0.6
    assert report["l0"] <= 16
    assert report["ce_loss_clean"] < report["ce_loss_spliced"] < report["ce_loss_ablated"]
    # massive-activation tokens are left out, and the report says how many
    assert 0 < report["excluded_fraction"] < 0.1


def test_rerunning_the_same_demo_resumes_instead_of_redoing(demo):
    out, _ = demo
    shard = out / "store_train" / "00000.safetensors"
    before = shard.stat().st_mtime_ns
    again = run_demo(DemoConfig(out=str(out), **SMALL))
    assert shard.stat().st_mtime_ns == before
    assert again["seconds"]["train"] < 30


def test_a_different_demo_in_the_same_folder_is_refused(demo):
    out, _ = demo
    with pytest.raises(OutputExistsError):
        run_demo(DemoConfig(out=str(out), **{**SMALL, "k": 8}))
