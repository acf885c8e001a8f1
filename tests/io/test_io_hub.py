"""Format detection and bad input, dictionary_learning's ae.pt, the Hub (offline, against a
local folder laid out like a Hub cache), push, the CLI's convert, Neuronpedia export."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

import saelab
from saelab.cli import main
from saelab.errors import FormatError
from saelab.io import detect, registry
from saelab.io.hub import HubError, parse, push, stage

D, F = 8, 24


def _sae(arch="topk", **kw):
    torch.manual_seed(0)
    kw = {"k": 4, **kw} if arch == "topk" else kw
    return saelab.create(arch, d_in=D, n_latents=F, **kw).eval()


def _x(n=16):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(1))


# --- bad input ------------------------------------------------------------------------------
def test_unknown_folder_names_what_was_found_and_the_known_layouts(tmp_path):
    (tmp_path / "model.pkl").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(FormatError, match=r"found model\.pkl, notes\.txt.*unpickling.*"
                                          r"Expected one of: saelab"):
        saelab.load(tmp_path)


def test_config_disagreeing_with_weights_is_a_clear_error(tmp_path):
    _sae().save(tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "cfg.json").read_text())
    cfg["n_latents"] = F * 2
    (tmp_path / "a" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(FormatError, match=r"'W_(enc|dec)' has shape \(24, 8\), the config implies "
                                          r"\(48, 8\)"):
        saelab.load(tmp_path / "a")


@pytest.mark.parametrize("change,match", [("drop", r"missing: \['b_enc'\]"),
                                          ("add", r"unexpected: \['extra'\]")])
def test_missing_or_extra_tensor_in_a_saelens_file_is_named(change, match, tmp_path):
    from saelab.io import saelens as sl
    from saelab.io.saelens_write import save

    save(_sae(), tmp_path / "s")
    t = sl.read_tensors(tmp_path / "s" / sl.WEIGHTS)
    if change == "drop":
        del t["b_enc"]
    else:
        t["extra"] = torch.zeros(3)
    save_file(t, str(tmp_path / "s" / sl.WEIGHTS))
    with pytest.raises(FormatError, match=match):
        saelab.load(tmp_path / "s")


def test_truncated_weights_file_is_a_format_error(tmp_path):
    _sae().save(tmp_path / "a")
    w = tmp_path / "a" / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(FormatError, match="not a readable safetensors file"):
        saelab.load(tmp_path / "a")


class _Boom:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['SAELAB_TEST_MARKER']}",))


def test_pickle_with_code_is_refused_and_never_run(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    monkeypatch.setenv("SAELAB_TEST_MARKER", str(marker))
    (tmp_path / "dl").mkdir()
    with open(tmp_path / "dl" / "ae.pt", "wb") as f:
        pickle.dump({"encoder.weight": _Boom()}, f)
    with pytest.raises(FormatError, match="needs pickled code.*refuses to run code"):
        saelab.load(tmp_path / "dl")
    assert not marker.exists()


# --- dictionary_learning ----------------------------------------------------------------------
def test_dictionary_learning_autoencoder_matches_its_forward(tmp_path):
    g = torch.Generator().manual_seed(2)
    sd = {"encoder.weight": torch.randn(F, D, generator=g), "encoder.bias": torch.randn(F, generator=g),
          "decoder.weight": torch.randn(D, F, generator=g), "bias": torch.randn(D, generator=g)}
    (tmp_path / "dl").mkdir()
    torch.save(sd, tmp_path / "dl" / "ae.pt")
    (tmp_path / "dl" / "config.json").write_text(json.dumps(
        {"trainer": {"dict_class": "AutoEncoder", "lm_name": "pythia", "layer": 3}}))
    sae = saelab.load(tmp_path / "dl")
    x = _x()
    # dictionary_learning's AutoEncoder: relu(encoder(x - bias)), decoder(f) + bias
    f = torch.relu((x - sd["bias"]) @ sd["encoder.weight"].T + sd["encoder.bias"])
    torch.testing.assert_close(sae.encode(x), f)
    torch.testing.assert_close(sae(x).x_hat, f @ sd["decoder.weight"].T + sd["bias"])
    assert sae.architecture == "relu" and sae.provenance["model"] == "pythia"


def test_dictionary_learning_jumprelu_reading_x_itself_matches(tmp_path):
    g = torch.Generator().manual_seed(3)
    sd = {"W_enc": torch.randn(D, F, generator=g), "b_enc": torch.randn(F, generator=g),
          "W_dec": torch.randn(F, D, generator=g), "b_dec": torch.randn(D, generator=g),
          "threshold": torch.rand(F, generator=g)}
    (tmp_path / "dl").mkdir()
    torch.save(sd, tmp_path / "dl" / "ae.pt")
    sae = saelab.load(tmp_path / "dl")
    x = _x()
    pre = x @ sd["W_enc"] + sd["b_enc"]
    f = torch.relu(pre * (pre > sd["threshold"]))
    torch.testing.assert_close(sae.encode(x), f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae(x).x_hat, f @ sd["W_dec"] + sd["b_dec"], atol=1e-5, rtol=1e-5)


# --- Hub --------------------------------------------------------------------------------------
def _fake_hub_cache(root, repo_id, files_from, sub):
    """A huggingface_hub cache holding one snapshot of `repo_id` with `files_from` at `sub`."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit / sub
    snap.mkdir(parents=True)
    for f in files_from.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    return root


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    return tmp_path / "cache"


def test_hf_address_loads_from_a_hub_snapshot_offline(offline_cache, tmp_path):
    sae = _sae()
    sae.save(tmp_path / "src")
    _fake_hub_cache(offline_cache, "someone/saes", tmp_path / "src", "layer3/sae")
    back = saelab.load("hf://someone/saes/layer3/sae")
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in sae.state_dict().items())


def test_unreachable_hub_is_a_clear_error(offline_cache):
    with pytest.raises(HubError, match="cannot reach the Hugging Face Hub for hf://nobody/none"):
        saelab.load("hf://nobody/none/sae")


def test_hub_address_parsing():
    assert parse("hf://a/b/c/d@v1") == ("a/b", "c/d", "v1")
    assert parse("hf://a/b") == ("a/b", "", None)
    with pytest.raises(FormatError, match="hf://owner/repo"):
        parse("hf://justone")


def test_registry_entries_are_complete_and_load_through_the_hub(offline_cache, tmp_path):
    for name, rel in registry.RELEASES.items():
        assert rel.repo.count("/") == 1 and rel.path and rel.format in (
            "saelab", "saelens", "sparsify", "dictionary_learning", "gemma_scope"), name
    name = "gpt2-small-res-jb/blocks.8.hook_resid_pre"
    from saelab.io.saelens_write import save
    save(_sae(), tmp_path / "rel")
    _fake_hub_cache(offline_cache, registry.RELEASES[name].repo, tmp_path / "rel",
                    registry.RELEASES[name].path)
    sae = saelab.load(name)
    assert sae.provenance["release"] == name


class _FakeApi:
    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))

    def upload_folder(self, repo_id, folder_path, **kw):
        from pathlib import Path
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*")
                       if p.is_file())
        self.calls.append(("upload_folder", repo_id, files))


def test_push_uploads_the_dictionary_a_saelens_copy_and_a_card(tmp_path):
    sae = _sae()
    sae.provenance = {"model": "smollm2-135m", "hookpoint": "model.layers.10"}
    sae.save(tmp_path / "run" / "sae")
    api = _FakeApi()
    address = push(tmp_path / "run", "me/my-saes", api=api)
    assert address == "hf://me/my-saes/sae"
    assert api.calls[0][:2] == ("create_repo", "me/my-saes")
    assert api.calls[1][2] == ["README.md", "sae/cfg.json", "sae/saelens/cfg.json",
                               "sae/saelens/sae_weights.safetensors", "sae/weights.safetensors"]
    stage(tmp_path / "run", tmp_path / "staged", "me/my-saes")
    card = (tmp_path / "staged" / "README.md").read_text()
    assert 'saelab.load("hf://me/my-saes/sae")' in card
    assert 'SAE.from_pretrained("me/my-saes", "sae/saelens")' in card
    assert "model.layers.10" in card
    tags = card.split("---")[1]  # the card's YAML header: the model is tagged by its Hub id
    assert "- HuggingFaceTB/SmolLM2-135M-Instruct" in tags and "smollm2-135m" not in tags
    back = saelab.load(tmp_path / "staged" / "sae" / "saelens")
    torch.testing.assert_close(back(_x()).x_hat, sae(_x()).x_hat, atol=0, rtol=0)


# --- CLI --------------------------------------------------------------------------------------
def test_cli_convert_round_trips_and_reports_errors(tmp_path, capsys):
    sae = _sae()
    sae.save(tmp_path / "a")
    assert main(["convert", str(tmp_path / "a"), str(tmp_path / "b"), "--to", "sparsify"]) == 0
    assert detect(tmp_path / "b") == "sparsify"
    assert main(["convert", str(tmp_path / "b"), str(tmp_path / "c"), "--to", "saelab"]) == 0
    back = saelab.load(tmp_path / "c")
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in sae.state_dict().items())
    assert main(["convert", str(tmp_path / "nowhere"), str(tmp_path / "d"), "--to", "saelens"]) == 2
    assert "does not exist" in capsys.readouterr().err



def test_cli_convert_refuses_its_own_run_folder_and_an_existing_destination(tmp_path, capsys):
    _sae().save(tmp_path / "run" / "sae")
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    assert main(["convert", str(tmp_path / "run" / "sae"), str(tmp_path / "run"),
                 "--to", "saelens"]) == 2
    assert "overlaps the source" in capsys.readouterr().err
    assert (tmp_path / "run" / "metrics.jsonl").exists() and \
        detect(tmp_path / "run" / "sae") == "saelab"
    (tmp_path / "b").mkdir()
    assert main(["convert", str(tmp_path / "run" / "sae"), str(tmp_path / "b"), "--to",
                 "saelens"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "run" / "sae"), str(tmp_path / "b"), "--to",
                 "saelens", "--overwrite"]) == 0
    assert detect(tmp_path / "b") == "saelens"


# --- Neuronpedia export -------------------------------------------------------------------------
def test_neuronpedia_export_holds_the_dashboard_data(tmp_path):
    from saelab.interpret import collect_top_examples
    from saelab.io.export import neuronpedia_export

    sae = _sae()
    x = torch.randn(40, D, generator=torch.Generator().manual_seed(5))
    top = collect_top_examples(sae, [(x, torch.arange(40))], n_top=3)
    tokens = torch.arange(40).reshape(4, 10)
    row_ctx, row_pos = torch.arange(40) // 10, torch.arange(40) % 10
    unembed = torch.randn(50, D)
    out = neuronpedia_export(tmp_path / "np.json", sae, top, tokens, row_ctx, row_pos,
                             unembed=unembed, explanations={int(top.fire_counts.argmax()): "hi"},
                             model_id="m", layer="l")
    data = json.loads(out.read_text())
    assert data["features"] and data["n_rows"] == 40
    for feat in data["features"]:
        f = int(feat["index"])
        assert feat["maxActApprox"] == pytest.approx(float(top.max_act[f]))
        assert feat["frac_nonzero"] == pytest.approx(int(top.fire_counts[f]) / 40)
        assert len(feat["pos_str"]) == 10 and len(feat["freq_hist_data_bar_heights"]) == \
            top.hist_counts.shape[1]
        for act, value, row in zip(feat["activations"], top.values[f].tolist(),
                                   top.row_ids[f].tolist()):
            assert act["maxValue"] == pytest.approx(value)
            assert act["token_ids"][act["maxValueTokenIndex"]] == int(tokens.flatten()[row])
    explained = [f for f in data["features"] if f["explanations"]]
    assert [e["explanations"][0]["description"] for e in explained] == ["hi"]
