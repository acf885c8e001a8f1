"""`saelab diffusion-capture`: the delta of a tiny U-Net's block into a store, from the command
line; bad input gets a message, not a traceback."""

from __future__ import annotations

from saelab.cli import main
from saelab.store import ActivationStore


def test_diffusion_capture_writes_a_store_that_names_its_block(tmp_path, capsys):
    code = main(["diffusion-capture", str(tmp_path / "s"), "--images", "3", "--n-steps", "2",
                 "--steps", "1", "--batch-images", "2"])
    assert code in (0, None)
    store = ActivationStore(tmp_path / "s")
    assert store.complete and store.n_rows == 3 * 256
    assert store.hookpoints == ["down_blocks.0.attentions.0:delta"]
    assert "down_blocks.0.attentions.0:delta" in capsys.readouterr().out


def test_bad_input_is_refused_with_a_message(tmp_path, capsys):
    assert main(["diffusion-capture", str(tmp_path / "s"), "--steps", "4"]) == 2
    assert "steps 0 to 3" in capsys.readouterr().err
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    assert main(["diffusion-capture", str(tmp_path / "s"), "--prompts", str(prompts)]) == 2
    assert "no text encoder" in capsys.readouterr().err
    assert main(["diffusion-capture", str(tmp_path / "s"), "--block", "mid_blocks.0"]) == 2
    assert "transformer blocks" in capsys.readouterr().err
