"""The CLI end to end on a tiny local model (a random Llama with SmolLM2's tokenizer), and its
error handling: a message and exit code 2, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from saelab.cli import main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "saelab.cli", *args], capture_output=True,
                          text=True, timeout=600)


def test_capture_train_eval_dashboard(model_dir, tmp_path, capsys):
    store, runs = tmp_path / "store", tmp_path / "run"
    assert main(["capture", "--model", str(model_dir), "--hookpoints", "model.layers.0",
                 "--n-tokens", "4096", "--context-len", "64", "--out", str(store),
                 "--no-progress"]) == 0
    assert main(["train", str(store), "--n-latents", "64", "--k", "4", "--batch-size", "256",
                 "--steps", "30", "--out", str(runs), "--no-progress"]) == 0
    sae = json.loads((runs / "sae" / "cfg.json").read_text())
    assert sae["architecture"] == "topk" and sae["k"] == 4 and sae["d_in"] == 32
    assert main(["eval", str(runs / "sae"), str(store), "--splice-tokens", "256",
                 "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert {"fvu", "l0", "ce_loss_clean", "ce_loss_spliced", "ce_loss_ablated"} <= set(report)
    assert main(["dashboard", str(runs / "sae"), str(store), "--out", str(tmp_path / "dash"),
                 "--n-features", "5"]) == 0
    assert (tmp_path / "dash" / "index.html").is_file()


def test_capture_with_gradients_then_train_a_gsae(model_dir, tmp_path):
    store, runs = tmp_path / "store", tmp_path / "run"
    assert main(["capture", "--model", str(model_dir), "--hookpoints", "model.layers.0",
                 "--n-tokens", "1024", "--context-len", "64", "--gradients", "--out", str(store),
                 "--no-progress"]) == 0
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["hookpoints"] == ["model.layers.0", "model.layers.0.grad"]
    assert main(["train", str(store), "--architecture", "gsae_gradient", "--n-latents", "64",
                 "--k", "4", "--batch-size", "128", "--steps", "5", "--out", str(runs),
                 "--no-progress"]) == 0
    assert json.loads((runs / "sae" / "cfg.json").read_text())["architecture"] == "gsae_gradient"


def test_config_file_supplies_options(model_dir, tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model": str(model_dir), "hookpoints": ["model.layers.1"],
                               "n_tokens": 1024, "context_len": 32, "progress": False}))
    assert main(["capture", "--config", str(cfg), "--out", str(tmp_path / "s")]) == 0
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["hookpoints"] == ["model.layers.1"] and manifest["context_len"] == 32


@pytest.mark.parametrize("command", ["train", "eval", "demo", "capture", "dashboard"])
def test_help_documents_every_option(command):
    res = run(command, "--help")
    assert res.returncode == 0
    assert "--" in res.stdout and "(default:" in res.stdout or command in ("eval", "dashboard")


def test_train_help_lists_training_and_architecture_fields():
    out = run("train", "--help").stdout
    for flag in ("--steps", "--batch-size", "--lr", "--checkpoint-every", "--k", "--auxk-coeff",
                 "--architecture", "--overwrite"):
        assert flag in out


@pytest.mark.parametrize("args, message", [
    (["train", "/no/such/store"], "not an activation store"),
    (["capture", "--model", "/no/such/model", "--out", "x"], "does not exist"),
    (["capture", "--model", "no-such-model-anywhere", "--out", "x"], "could not load model"),
])
def test_user_errors_exit_2_with_a_message_and_no_traceback(args, message):
    res = run(*args)
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr


def test_unknown_architecture_is_refused_by_the_parser(tmp_path):
    res = run("train", str(tmp_path), "--architecture", "nope")
    assert res.returncode == 2 and "invalid choice" in res.stderr


def test_corrupt_dictionary_file_is_a_clear_error(tmp_path):
    import saelab

    sae = saelab.create("topk", d_in=8, n_latents=16, k=2)
    sae.save(tmp_path / "d")
    (tmp_path / "d" / "weights.safetensors").write_bytes(b"\x00garbage")
    res = run("dashboard", str(tmp_path / "d"), str(tmp_path))
    assert res.returncode == 2 and "safetensors" in res.stderr and "Traceback" not in res.stderr


def test_foreign_weights_are_refused_with_names(tmp_path):
    import saelab
    from saelab._paths import write_safetensors
    from saelab.errors import FormatError

    saelab.create("topk", d_in=8, n_latents=16, k=2).save(tmp_path / "d")
    write_safetensors(tmp_path / "d" / "weights.safetensors", {"encoder.weight": torch.zeros(2)})
    with pytest.raises(FormatError, match="missing"):
        saelab.load(tmp_path / "d")
