"""The CLI end to end on a tiny local model (a random Llama with SmolLM2's tokenizer): commands
generated from their config dataclasses, strict config files, and error handling (a message and
exit code 2, never a traceback)."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import typing

import pytest
import torch

import saelab
from saelab.cli import commands, main, parse
from saelab.dictionaries import get


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "saelab.cli", *args], capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def store(model_dir, tmp_path_factory):
    """A small store of the tiny model's layer 0."""
    out = tmp_path_factory.mktemp("store") / "s"
    assert main(["capture", "--model", str(model_dir), "--hookpoints", "model.layers.0",
                 "--n-tokens", "2048", "--context-len", "64", "--out", str(out),
                 "--no-progress"]) == 0
    return out


def test_capture_train_eval_dashboard(model_dir, store, tmp_path):
    runs = tmp_path / "run"
    assert main(["train", str(store), "--n-latents", "64", "--k", "4", "--batch-size", "256",
                 "--steps", "30", "--out", str(runs), "--no-progress"]) == 0
    sae = json.loads((runs / "sae" / "cfg.json").read_text())
    assert sae["architecture"] == "topk" and sae["k"] == 4 and sae["d_in"] == 32
    assert main(["eval", str(runs / "sae"), str(store), "--splice-tokens", "256",
                 "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert {"fvu", "l0"} <= _keys(report)
    assert main(["dashboard", str(runs / "sae"), str(store), "--out", str(tmp_path / "dash"),
                 "--n-features", "5"]) == 0
    assert (tmp_path / "dash" / "index.html").is_file()


def test_eval_reports_are_reproducible_under_the_seed(store, tmp_path):
    """dark_matter's random split follows `--seed` (default 0): the same seed, the same figures;
    another seed, another split."""
    import saelab

    sae = saelab.create("topk", d_in=32, n_latents=64, k=4, seed=0)
    sae.provenance["hookpoint"] = "model.layers.0"
    sae.save(tmp_path / "sae")

    def figure(name, *seed):
        assert main(["eval", str(tmp_path / "sae"), str(store), "--metrics", "dark_matter",
                     *seed, "--out", str(tmp_path / name)]) == 0
        report = json.loads((tmp_path / name / "report.json").read_text())
        return report["dark_matter"]["error_variance_predicted"], report["meta"]["seed"]

    first, again, other = figure("a"), figure("b"), figure("c", "--seed", "1")
    assert first == again and first[1] == 0
    assert other[1] == 1 and other[0] != first[0]


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


# --- every command is generated from its config ---------------------------------------------------
def _flags(cls: type, prefix: str = "") -> list[str]:
    """The option (or the METAVAR of a positional) each field of `cls` should have; a nested
    config's fields as dotted options."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += _flags(hints[f.name], f"{prefix}{f.name}.")
        elif f.metadata.get("positional"):
            out.append(f.name.upper())
        else:
            out.append("--" + prefix + f.name.replace("_", "-"))
    return out


def _keys(tree) -> set[str]:
    if not isinstance(tree, dict):
        return set()
    return set(tree) | {k for v in tree.values() for k in _keys(v)}


@pytest.mark.parametrize("name", sorted(commands()))
def test_help_of_every_command_names_every_field_of_its_config(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    fields = _flags(commands()[name].config)
    if name == "train":
        fields += [f for f in _flags(get("topk").Config) if f not in ("--d-in", "--n-latents")]
    missing = [f for f in fields if f not in out]
    assert not missing, f"saelab {name} --help lacks {missing}"
    assert commands()[name].help.split(" (")[0] in out.replace("\n", " ")


def test_train_help_lists_the_fields_of_the_architecture_asked_for(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--architecture", "batchtopk", "--help"])
    batchtopk = capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    topk = capsys.readouterr().out
    assert "--threshold-decay" in batchtopk and "--threshold-decay" not in topk
    for flag in ("--k", "--auxk-coeff", "--steps", "--batch-size", "--lr", "--overwrite"):
        assert flag in batchtopk and flag in topk


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"saelab {saelab.__version__}"


def test_commands_maps_each_name_to_its_config_and_help():
    from saelab.pipeline import CaptureConfig, DashboardConfig, DemoConfig, EvalConfig

    cmds = commands()
    assert {"demo", "capture", "hookpoints", "train", "eval", "dashboard", "view", "convert",
            "push"} <= set(cmds)
    assert cmds["capture"].config is CaptureConfig and cmds["demo"].config is DemoConfig
    assert cmds["eval"].config is EvalConfig and cmds["dashboard"].config is DashboardConfig
    train_fields = {f.name for f in dataclasses.fields(cmds["train"].config)}
    assert {"store", "architecture", "n_latents", "steps", "seed"} <= train_fields
    assert all(c.help and "\n" not in c.help for c in cmds.values())


# --- config files: strict, and the command line wins ----------------------------------------------
def _write(tmp_path, values: dict, name: str = "c.json"):
    path = tmp_path / name
    path.write_text(json.dumps(values))
    return str(path)


def test_train_config_file_trains_exactly_the_architecture_it_names(store, tmp_path):
    cfg = _write(tmp_path, {"architecture": "batchtopk", "n_latents": 48, "k": 3, "steps": 3,
                            "batch_size": 64, "threshold_decay": 0.5, "progress": False})
    assert main(["train", str(store), "--config", cfg, "--out", str(tmp_path / "r")]) == 0
    saved = json.loads((tmp_path / "r" / "sae" / "cfg.json").read_text())
    assert (saved["architecture"], saved["n_latents"], saved["k"],
            saved["threshold_decay"]) == ("batchtopk", 48, 3, 0.5)


def test_command_line_overrides_the_config_file(tmp_path):
    cfg = _write(tmp_path, {"steps": 3, "lr": 0.01, "k": 5})
    command, dictionary = parse("train", ["S", "--config", cfg, "--steps", "7"])
    assert command.steps == 7 and command.lr == 0.01 and dictionary["k"] == 5
    command, dictionary = parse("train", ["S", "--config", cfg, "--k", "9"])
    assert command.steps == 3 and dictionary["k"] == 9


def test_yaml_config_file_is_read_like_json(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("n_tokens: 4096\ndtype: bfloat16\nhookpoints: [model.layers.1]\n")
    cfg, _ = parse("capture", ["--config", str(path)])
    assert (cfg.n_tokens, cfg.dtype, cfg.hookpoints) == (4096, "bfloat16", ["model.layers.1"])


def test_demo_config_file_is_nested_and_keeps_the_demo_defaults_it_does_not_name(tmp_path):
    cfg, _ = parse("demo", ["--config", _write(tmp_path, {"train": {"lr": 0.002}, "k": 8})])
    assert cfg.train.lr == 0.002 and cfg.train.batch_size == 1024 and cfg.k == 8
    cfg, _ = parse("demo", ["--train.batch-size", "512", "--capture.n-tokens", "4096"])
    assert cfg.train.batch_size == 512 and cfg.capture.n_tokens == 4096


@pytest.mark.parametrize("command, values, words", [
    ("train", {"architecture": "batchtopk", "n_latent": 64}, ["'n_latent'", "'n_latents'"]),
    ("train", {"steps": "twenty"}, ["'steps'", "int", "'twenty'"]),
    ("train", {"order": "random"}, ["'order'", "'shuffle'", "'sequential'"]),
    ("train", {"architecture": "batchtopk", "threshold_decay": "x"}, ["'threshold_decay'",
                                                                     "float"]),
    ("train", {"architecture": "batchtop"}, ["'architecture'", "did you mean 'batchtopk'"]),
    ("eval", {"splice_tokns": 0}, ["'splice_tokns'", "'splice_tokens'"]),
    ("eval", {"metrics": ["sparsity", "fvu"]}, ["'metrics'", "'fvu'", "reconstruction"]),
    ("eval", {"metrics": "fvu"}, ["'metrics'", "list[str]"]),
    ("dashboard", {"n_featres": 5}, ["'n_featres'", "'n_features'"]),
    ("dashboard", {"n_features": 2.5}, ["'n_features'", "int"]),
    ("capture", {"dtype": "float64"}, ["'dtype'", "'bfloat16'"]),
    ("demo", {"train": {"batch_sise": 8}}, ["'batch_sise'", "'batch_size'"]),
])
def test_config_file_with_an_unknown_key_or_a_wrong_type_is_refused_naming_it(
        command, values, words, tmp_path, capsys):
    args = {"train": ["S"], "eval": ["SAE", "S"], "dashboard": ["SAE", "S"]}.get(command, [])
    assert main([command, *args, "--config", _write(tmp_path, values)]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert "Traceback" not in err


def test_unknown_architecture_is_refused_by_the_parser(tmp_path):
    res = run("train", str(tmp_path), "--architecture", "nope")
    assert res.returncode == 2 and "invalid choice" in res.stderr and "nope" in res.stderr


# --- hookpoints, hookpoint checks, text that runs out ---------------------------------------------
def test_hookpoints_lists_module_names_with_their_output_shapes(model_dir, capsys):
    assert main(["hookpoints", str(model_dir), "--pattern", "model.layers.*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["model.layers.0", "model.layers.1"]
    assert all("[1, 4, 32]" in line and "LlamaDecoderLayer" in line for line in lines)


def test_hookpoints_of_an_unmatched_pattern_is_a_clear_error(model_dir, capsys):
    assert main(["hookpoints", str(model_dir), "--pattern", "transformer.h.*"]) == 2
    assert "no module of the model matches 'transformer.h.*'" in capsys.readouterr().err


@pytest.mark.slow
def test_hookpoints_of_the_packaged_smollm2(capsys):
    assert main(["hookpoints", "smollm2-135m", "--pattern", "model.layers.15.mlp"]) == 0
    assert "[1, 4, 576]" in capsys.readouterr().out


def test_eval_and_dashboard_refuse_a_store_without_the_dictionarys_hookpoint(model_dir, store,
                                                                             tmp_path, capsys):
    sae = saelab.create("topk", d_in=32, n_latents=16, k=2)
    sae.provenance["hookpoint"] = "model.layers.1"
    sae.save(tmp_path / "d")
    for command in ("eval", "dashboard"):
        assert main([command, str(tmp_path / "d"), str(store), "--out",
                     str(tmp_path / command)]) == 2
        err = capsys.readouterr().err
        assert "model.layers.1" in err and "model.layers.0" in err
    assert main(["eval", str(tmp_path / "d"), str(store), "--splice-tokens", "0",
                 "--allow-hookpoint-mismatch", "--out", str(tmp_path / "e")]) == 0
    assert (tmp_path / "e" / "report.json").is_file()


def test_capture_that_runs_out_of_text_warns_with_the_count_and_records_it(model_dir, tmp_path,
                                                                           caplog):
    text = tmp_path / "small.txt"
    text.write_text("A short text about sparse autoencoders and their features. " * 40)
    with caplog.at_level(logging.WARNING, logger="saelab.pipeline"):
        assert main(["capture", "--model", str(model_dir), "--dataset", str(text),
                     "--n-tokens", "100000", "--context-len", "32", "--no-progress",
                     "--out", str(tmp_path / "s")]) == 0
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    got = manifest["captured_tokens"]
    assert manifest["requested_tokens"] == 100_000 and 0 < got < 100_000
    assert got == manifest["n_contexts"] * 32
    assert any("ran out" in r.message and f"{got:,}" in r.message for r in caplog.records)


# --- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["train", "/no/such/store"], "not an activation store"),
    (["capture", "--model", "/no/such/model", "--out", "x"], "does not exist"),
    (["capture", "--model", "no-such-model-anywhere", "--out", "x"], "could not load model"),
    (["train", "S", "--config", "/no/such/file.json"], "does not exist"),
])
def test_user_errors_exit_2_with_a_message_and_no_traceback(args, message):
    res = run(*args)
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr


def test_eval_runs_the_model_named_by_model_instead_of_the_stores(model_dir, store, tmp_path):
    runs = tmp_path / "run"
    assert main(["train", str(store), "--n-latents", "16", "--k", "2", "--batch-size", "256",
                 "--steps", "2", "--out", str(runs), "--no-progress"]) == 0
    res = run("eval", str(runs / "sae"), str(store), "--metrics", "splice", "--model",
              str(tmp_path / "no_model_here"))
    assert res.returncode == 2 and "no_model_here" in res.stderr, res.stderr[-1500:]
    assert main(["eval", str(runs / "sae"), str(store), "--metrics", "splice", "--model",
                 str(model_dir), "--splice-tokens", "128", "--out", str(tmp_path / "e")]) == 0
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    assert report["meta"]["model"] is not None and report["splice"]["ce_loss_spliced"] > 0


def test_python_dash_m_saelab_exits_with_the_commands_code():
    res = subprocess.run([sys.executable, "-m", "saelab", "train", "/no/such/store"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "not an activation store" in res.stderr


def test_corrupt_dictionary_file_is_a_clear_error(tmp_path):
    sae = saelab.create("topk", d_in=8, n_latents=16, k=2)
    sae.save(tmp_path / "d")
    (tmp_path / "d" / "weights.safetensors").write_bytes(b"\x00garbage")
    res = run("dashboard", str(tmp_path / "d"), str(tmp_path))
    assert res.returncode == 2 and "safetensors" in res.stderr and "Traceback" not in res.stderr


def test_foreign_weights_are_refused_with_names(tmp_path):
    from saelab._paths import write_safetensors
    from saelab.errors import FormatError

    saelab.create("topk", d_in=8, n_latents=16, k=2).save(tmp_path / "d")
    write_safetensors(tmp_path / "d" / "weights.safetensors", {"encoder.weight": torch.zeros(2)})
    with pytest.raises(FormatError, match="missing"):
        saelab.load(tmp_path / "d")
