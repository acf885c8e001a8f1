"""`saelab stitch` fits and saves the maps and prints held-out R^2 both ways; `saelab transfer`
carries a dictionary through a saved map; a dictionary of another width is refused."""

from __future__ import annotations

import torch

import saelab
from saelab.cli import main
from saelab.transfer import Stitch
from tests.transfer.conftest import TEXTS


def test_stitch_then_transfer_on_two_tiny_models(model_folders, tmp_path, capsys) -> None:
    text = tmp_path / "texts.txt"
    text.write_text("\n\n".join(TEXTS) + "\n")
    a, b = map(str, model_folders)
    code = main(["stitch", a, "model.layers.1", b, "model.layers.2", "--out",
                 str(tmp_path / "map"), "--text", str(text), "--documents", "24"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count("held-out R^2") == 2 and "aligned" in out
    stitch = Stitch.load(tmp_path / "map")
    assert stitch.info["counts"]["kept"] > 48 and stitch.info["hookpoint_b"] == "model.layers.2"

    sae = saelab.create("topk", d_in=32, n_latents=64, k=4)
    sae.save(tmp_path / "sae")
    assert main(["transfer", str(tmp_path / "sae"), str(tmp_path / "map"), "--out",
                 str(tmp_path / "moved")]) == 0
    moved = saelab.load(tmp_path / "moved")
    assert moved.d_in == 48 and moved.provenance["hookpoint"] == "model.layers.2"
    y = torch.randn(5, 48)
    assert torch.allclose(moved.encode(y), sae.encode(stitch.b_to_a(y)), atol=1e-3)

    saelab.create("topk", d_in=40, n_latents=64, k=4).save(tmp_path / "other")
    capsys.readouterr()
    assert main(["transfer", str(tmp_path / "other"), str(tmp_path / "map"), "--out",
                 str(tmp_path / "x")]) == 2
    assert "40-wide" in capsys.readouterr().err
