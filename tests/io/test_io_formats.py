"""Other libraries' formats: SAELens and sparsify SAEs built and saved by those libraries
themselves, read by saelab and compared output for output; saelab dictionaries written in their
layouts and read back bit for bit, and by the libraries themselves."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch

import saelab
from saelab.io import convert, detect
from saelab.io import saelens as sl
from saelab.io import saelens_write as slw
from saelab.io import sparsify as sp
from saelab.io.detect import save as save_in

# sparsify's switch for its eager decoder: its Triton kernel needs a GPU driver
os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")

WHY = "installed by `make test` (the dev extra); these tests compare with the library itself"
sae_lens = pytest.importorskip("sae_lens", reason=f"sae-lens missing: {WHY}")
sparsify = pytest.importorskip("sparsify", reason=f"eai-sparsify missing: {WHY}")

D, F, DOUT = 8, 24, 6
TOL = {"atol": 1e-12, "rtol": 1e-12}  # float64 everywhere: only summation order may differ


def _randomise(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * 0.4)
    return module


def _x(n=32, d=D, seed=1):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _saelens(arch, **kw):
    cls, cfg_cls = sae_lens.registry.get_sae_class(arch)
    sae = _randomise(cls(cfg_cls(d_in=D, d_sae=F, dtype="float64", **kw)))
    if hasattr(sae, "threshold"):
        with torch.no_grad():
            sae.threshold.copy_(torch.rand(F, generator=torch.Generator().manual_seed(7)) / 2)
    return sae


SAELENS_CASES = {
    "standard": ({}, "relu"),
    "topk": ({"k": 5}, "topk"),
    "topk_rescaled": ({"k": 5, "rescale_acts_by_decoder_norm": True}, "topk"),
    "jumprelu": ({}, "jumprelu"),
    "jumprelu_no_b_dec_in": ({"apply_b_dec_to_input": False}, "jumprelu"),
    "gated": ({}, "gated"),
    "transcoder": ({"d_out": DOUT, "apply_b_dec_to_input": False}, "transcoder"),
    "skip_transcoder": ({"d_out": DOUT, "apply_b_dec_to_input": False}, "skip_transcoder"),
}


@pytest.mark.parametrize("case", sorted(SAELENS_CASES))
def test_saelens_saved_sae_gives_saelens_outputs_in_saelab(case, tmp_path):
    kw, ours = SAELENS_CASES[case]
    arch = case.split("_no_")[0].replace("_rescaled", "")
    ref = _saelens(arch, **kw)
    ref.save_model(tmp_path / "ref")
    assert detect(tmp_path / "ref") == "saelens"
    sae = saelab.load(tmp_path / "ref")
    assert sae.architecture == ours and sae.W_dec.dtype == torch.float64
    x = _x()
    codes = sae.encode(x)
    torch.testing.assert_close(codes, ref.encode(x), **TOL)
    assert (codes != 0).equal(ref.encode(x) != 0)  # the same latents fire
    torch.testing.assert_close(sae(x).x_hat, ref(x), **TOL)


@pytest.mark.parametrize("case", ["standard", "topk", "gated", "transcoder", "skip_transcoder"])
def test_saelens_folder_round_trips_through_saelab_bit_exactly(case, tmp_path):
    kw, _ = SAELENS_CASES[case]
    ref = _saelens(case, **kw)
    ref.save_model(tmp_path / "ref")
    convert(tmp_path / "ref", tmp_path / "ours", to="saelab")
    convert(tmp_path / "ours", tmp_path / "back", to="saelens")
    a = sl.read_tensors(tmp_path / "ref" / sl.WEIGHTS)
    b = sl.read_tensors(tmp_path / "back" / sl.WEIGHTS)
    assert sorted(a) == sorted(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    cfg_a = json.loads((tmp_path / "ref" / "cfg.json").read_text())
    cfg_b = json.loads((tmp_path / "back" / "cfg.json").read_text())
    for key in ("architecture", "d_in", "d_sae", "dtype", "apply_b_dec_to_input", "k", "d_out"):
        assert cfg_a.get(key) == cfg_b.get(key), key


def test_saelens_jumprelu_round_trip_is_bit_exact_thresholds_included(tmp_path):
    """saelab stores log(theta) and exp does not reach every float32: the thresholds as read
    travel in exact.safetensors beside the saelab folder and are written back while
    exp(log_threshold) still equals what was read. Negative thresholds (0 in effect) too."""
    ref = _saelens("jumprelu").to(torch.float32)
    with torch.no_grad():
        ref.threshold[:3] = torch.tensor([-0.25, 0.0, 1e-30])
    ref.save_model(tmp_path / "ref")
    convert(tmp_path / "ref", tmp_path / "ours", to="saelab")
    assert (tmp_path / "ours" / "exact.safetensors").is_file()
    convert(tmp_path / "ours", tmp_path / "back", to="saelens")
    a = sl.read_tensors(tmp_path / "ref" / sl.WEIGHTS)
    b = sl.read_tensors(tmp_path / "back" / sl.WEIGHTS)
    assert sorted(a) == sorted(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert not torch.equal(saelab.load(tmp_path / "ours").threshold, a["threshold"])  # the case


def test_saelens_jumprelu_threshold_changed_in_saelab_is_written_as_changed(tmp_path):
    ref = _saelens("jumprelu").to(torch.float32)
    ref.save_model(tmp_path / "ref")
    sae = saelab.load(tmp_path / "ref")
    with torch.no_grad():
        sae.log_threshold[:4] += 0.5
    slw.save(sae, tmp_path / "back")
    a = sl.read_tensors(tmp_path / "ref" / sl.WEIGHTS)["threshold"]
    b = sl.read_tensors(tmp_path / "back" / sl.WEIGHTS)["threshold"]
    assert torch.equal(b[:4], sae.threshold[:4].detach()) and torch.equal(a[4:], b[4:])


def _trained_like(arch, **kw):
    sae = saelab.create(arch, d_in=D, n_latents=F, **kw).double()
    _randomise(sae, seed=3)
    with torch.no_grad():
        if arch in ("batchtopk", "matryoshka"):
            sae.threshold.fill_(0.37)
        if arch == "batchtopk":
            sae.threshold_batches.fill_(12)
    sae.provenance = {"model": "tiny", "hookpoint": "layers.1"}
    return sae.eval()


WRITABLE = {"relu": {}, "topk": {"k": 5}, "jumprelu": {}, "gated": {},
            "batchtopk": {"k": 5}, "matryoshka": {"k": 5, "prefixes": [6, 12, 24]},
            "transcoder": {"activation": "relu", "d_out": DOUT, "k": 5},
            "skip_transcoder": {"activation": "relu", "d_out": DOUT, "k": 5}}


@pytest.mark.parametrize("arch", sorted(WRITABLE))
def test_saelab_written_as_saelens_loads_in_saelens_with_equal_outputs(arch, tmp_path):
    sae = _trained_like(arch, **WRITABLE[arch])
    slw.save(sae, tmp_path / "sl")
    ref = sae_lens.SAE.load_from_disk(tmp_path / "sl")
    x = _x()
    torch.testing.assert_close(ref.encode(x), sae.encode(x), **TOL)
    torch.testing.assert_close(ref(x), sae(x).x_hat, **TOL)


@pytest.mark.parametrize("arch", sorted(WRITABLE))
def test_saelab_round_trips_through_saelens_layout(arch, tmp_path):
    sae = _trained_like(arch, **WRITABLE[arch])
    slw.save(sae, tmp_path / "sl")
    back = saelab.load(tmp_path / "sl")
    assert back.architecture == arch and back.cfg == sae.cfg
    assert back.provenance == sae.provenance
    a, b = sae.state_dict(), back.state_dict()
    assert sorted(a) == sorted(b)
    for name in a:
        if name == "log_threshold":  # see the jumprelu test above: theta itself is exact
            assert torch.equal(a[name].exp(), b[name].exp())
        else:
            assert torch.equal(a[name], b[name]), name


def test_saelens_expected_average_norm_is_folded_like_saelens(tmp_path):
    ref = _saelens("standard", normalize_activations="expected_average_only_in")
    ref.save_model(tmp_path / "ref")
    sae = saelab.load(tmp_path / "ref", norm_scaling_factor=2.5)
    ref.fold_activation_norm_scaling_factor(2.5)
    x = _x()
    torch.testing.assert_close(sae.encode(x), ref.encode(x), **TOL)
    torch.testing.assert_close(sae(x).x_hat, ref(x), **TOL)
    assert "folded" in sae.provenance["input_normalization"]


NORMS = ["constant_norm_rescale", "layer_norm"]
NORM_ARCHS = {"standard": ({}, "relu"), "topk": ({"k": 5}, "topk"), "jumprelu": ({}, "jumprelu"),
              "gated": ({}, "gated"),
              "jumprelu_no_b_dec_in": ({"apply_b_dec_to_input": False}, "jumprelu")}


@pytest.mark.parametrize("case", sorted(NORM_ARCHS))
@pytest.mark.parametrize("norm", NORMS)
def test_saelens_run_time_normalisation_gives_saelens_outputs(norm, case, tmp_path):
    kw, ours = NORM_ARCHS[case]
    ref = _saelens(case.split("_no_")[0], normalize_activations=norm, **kw)
    ref.save_model(tmp_path / "ref")
    sae = saelab.load(tmp_path / "ref")
    assert sae.architecture == ours and sae.cfg.input_norm == norm
    x = _x() * 3 + 1  # off-centre, not unit norm: both statistics matter
    ref_codes = ref.encode(x)
    codes = sae.encode(x)  # keeps x's statistics for the next decode, as SAELens does
    torch.testing.assert_close(codes, ref_codes, **TOL)
    assert (codes != 0).equal(ref_codes != 0)
    torch.testing.assert_close(sae.decode(codes), ref.decode(ref_codes), **TOL)
    torch.testing.assert_close(sae(x).x_hat, ref(x), **TOL)
    torch.testing.assert_close(sae(x).codes, ref_codes, **TOL)
    with pytest.raises(RuntimeError, match="call encode"):
        sae.decode(codes)  # the statistics went with the first decode (SAELens: AttributeError)


@pytest.mark.parametrize("norm", NORMS)
def test_saelens_run_time_normalisation_round_trips_bit_exactly(norm, tmp_path):
    ref = _saelens("jumprelu", normalize_activations=norm).to(torch.float32)
    ref.save_model(tmp_path / "ref")
    convert(tmp_path / "ref", tmp_path / "ours", to="saelab")
    again = saelab.load(tmp_path / "ours")
    assert again.cfg.input_norm == norm
    convert(tmp_path / "ours", tmp_path / "back", to="saelens")
    a = sl.read_tensors(tmp_path / "ref" / sl.WEIGHTS)
    b = sl.read_tensors(tmp_path / "back" / sl.WEIGHTS)
    assert sorted(a) == sorted(b) and all(torch.equal(a[n], b[n]) for n in a)
    cfg = json.loads((tmp_path / "back" / "cfg.json").read_text())
    assert cfg["normalize_activations"] == norm
    back = sae_lens.SAE.load_from_disk(tmp_path / "back")
    x = _x().float()
    torch.testing.assert_close(back(x), ref(x), atol=0, rtol=0)


@pytest.mark.parametrize("norm", NORMS)
def test_saelab_dictionary_with_input_norm_reads_the_same_in_saelens(norm, tmp_path):
    sae = _trained_like("topk", k=5, input_norm=norm)
    slw.save(sae, tmp_path / "sl")
    ref = sae_lens.SAE.load_from_disk(tmp_path / "sl")
    assert ref.cfg.normalize_activations == norm
    x = _x() * 2 - 1
    torch.testing.assert_close(ref.encode(x), sae.encode(x), **TOL)
    torch.testing.assert_close(ref(x), sae(x).x_hat, **TOL)
    back = saelab.load(tmp_path / "sl")
    assert back.cfg == sae.cfg and type(back) is type(sae)
    with pytest.raises(saelab.SaelabError, match="no per-input normalisation"):
        save_in(sae, tmp_path / "sp", format="sparsify")


def test_input_norm_refuses_training_and_transcoders(tmp_path):
    sae = saelab.create("relu", d_in=D, n_latents=F, input_norm="layer_norm")
    with pytest.raises(saelab.SaelabError, match="training with input_norm"):
        sae.loss(_x().float(), None)
    with pytest.raises(saelab.SaelabError, match="not transcoders"):
        saelab.create("transcoder", d_in=D, n_latents=F, d_out=DOUT, k=5,
                      input_norm="layer_norm")
    ref = _saelens("transcoder", d_out=DOUT, apply_b_dec_to_input=False,
                   normalize_activations="layer_norm")
    ref.save_model(tmp_path / "ref")
    with pytest.raises(saelab.SaelabError, match="layer_norm.*transcoder"):
        saelab.load(tmp_path / "ref")


def test_default_dictionaries_are_unchanged_by_input_norm():
    sae = saelab.create("topk", d_in=D, n_latents=F, k=5)
    assert sae.cfg.input_norm == "none" and type(sae) is saelab.dictionaries.get("topk")


def test_saelens_sparsity_file_travels_with_a_conversion(tmp_path):
    ref = _saelens("topk", k=5)
    ref.save_model(tmp_path / "ref")
    from safetensors.torch import save_file
    sparsity = torch.linspace(-5, -1, F)
    save_file({"sparsity": sparsity}, str(tmp_path / "ref" / sl.SPARSITY))
    convert(tmp_path / "ref", tmp_path / "ours", to="saelab")
    convert(tmp_path / "ours", tmp_path / "back", to="saelens")
    assert torch.equal(sl.read_sparsity(tmp_path / "back"), sparsity)


# --- sparsify -------------------------------------------------------------------------------
def _sparsify(transcode=False, skip=False, k=5):
    cfg = sparsify.SparseCoderConfig(num_latents=F, k=k, transcode=transcode,
                                     skip_connection=skip)
    return _randomise(sparsify.SparseCoder(D, cfg, dtype=torch.float64))


def _dense(top_acts, top_indices, n=F):
    return top_acts.new_zeros(top_acts.shape[0], n).scatter(1, top_indices, top_acts)


SPARSIFY_CASES = {"sae": (False, False, "topk"), "transcoder": (True, False, "transcoder"),
                  "skip_transcoder": (True, True, "skip_transcoder")}


@pytest.mark.parametrize("case", sorted(SPARSIFY_CASES))
def test_sparsify_saved_coder_gives_sparsify_outputs_in_saelab(case, tmp_path):
    transcode, skip, ours = SPARSIFY_CASES[case]
    ref = _sparsify(transcode, skip)
    ref.save_to_disk(tmp_path / "layers.3")
    sae = saelab.load(tmp_path / "layers.3")
    assert sae.architecture == ours and sae.provenance["hookpoint"] == "layers.3"
    x = _x()
    out = ref(x)
    torch.testing.assert_close(sae.encode(x), _dense(out.latent_acts, out.latent_indices), **TOL)
    torch.testing.assert_close(sae(x).x_hat, out.sae_out, **TOL)


@pytest.mark.parametrize("case", sorted(SPARSIFY_CASES))
def test_sparsify_folder_round_trips_and_sparsify_reads_what_saelab_writes(case, tmp_path):
    transcode, skip, _ = SPARSIFY_CASES[case]
    ref = _sparsify(transcode, skip)
    ref.save_to_disk(tmp_path / "run" / "layers.3")
    with pytest.raises(saelab.SaelabError, match="one sparsify dictionary per hookpoint"):
        saelab.load(tmp_path / "run")
    convert(tmp_path / "run", tmp_path / "ours", to="saelab", hookpoint="layers.3")
    convert(tmp_path / "ours", tmp_path / "back", to="sparsify")
    a = sp.read_tensors(tmp_path / "run" / "layers.3" / sp.WEIGHTS)
    b = sp.read_tensors(tmp_path / "back" / sp.WEIGHTS)
    assert sorted(a) == sorted(b) and all(torch.equal(a[n], b[n]) for n in a)
    again = sparsify.SparseCoder.load_from_disk(tmp_path / "back")
    x = _x()
    torch.testing.assert_close(again(x).sae_out, ref(x).sae_out, atol=0, rtol=0)


def test_saelab_topk_round_trips_through_sparsify_layout(tmp_path):
    sae = _trained_like("topk", k=5)
    sp.save(sae, tmp_path / "sp")
    back = saelab.load(tmp_path / "sp")
    assert back.cfg == sae.cfg and back.provenance == sae.provenance
    assert all(torch.equal(v, back.state_dict()[n]) for n, v in sae.state_dict().items())
    ref = sparsify.SparseCoder.load_from_disk(tmp_path / "sp")
    x = _x()
    torch.testing.assert_close(ref(x).sae_out, sae(x).x_hat, **TOL)


@pytest.mark.parametrize("arch,kw,to,match", [
    ("mp", {"k": 3}, "saelens", "SAELens has no counterpart.*'mp' converts to saelab only"),
    ("jumprelu", {}, "sparsify",
     "sparsify has no counterpart.*'jumprelu' converts to saelab, SAELens only"),
    # a variant's mapping is declared in its own class: TopK's is not inherited by Guided
    ("guided", {"k": 3}, "saelens", "'guided' converts to saelab only.*writes .*topk"),
    ("transcoder", {"activation": "topk", "k": 3, "d_out": DOUT}, "saelens",
     "takes activation='relu' only.*Write it to sparsify"),
    ("transcoder", {"activation": "topk", "k": 3, "d_out": DOUT}, "sparsify", "equal input"),
])
def test_writing_what_a_format_cannot_express_is_refused_by_name(arch, kw, to, match, tmp_path):
    sae = saelab.create(arch, d_in=D, n_latents=F, **kw)
    with pytest.raises(saelab.SaelabError, match=match):
        save_in(sae, tmp_path / "out", format=to)
    assert not (tmp_path / "out").exists()


def _declared(fmt):
    from saelab.io.mapping import declarations

    return sorted(declarations(fmt).items())


@pytest.mark.parametrize("fmt", ["saelens", "sparsify"])
def test_every_declared_mapping_writes_a_folder_that_reads_back_as_the_same_dictionary(fmt,
                                                                                      tmp_path):
    from saelab.dictionaries import StepState, get

    assert _declared(fmt), fmt
    for arch, mapping in _declared(fmt):
        k = {"k": 3} if "k" in {f.name for f in dataclasses.fields(get(arch).Config)} else {}
        sae = saelab.create(arch, d_in=D, n_latents=F, **k, **mapping.fixed)
        if "target" not in sae.needs:  # a training batch sets any inference threshold
            sae.train()
            sae.loss(_x().float(), StepState())
        sae.eval()
        save_in(sae, tmp_path / arch / fmt, format=fmt)
        back = saelab.load(tmp_path / arch / fmt)
        assert type(back) is type(sae) and back.cfg == sae.cfg, arch
        for name, t in sae.state_dict().items():
            assert torch.equal(t, back.state_dict()[name]), (arch, name)


def test_convert_never_writes_over_its_source_and_replaces_a_folder_only_when_asked(tmp_path):
    from saelab.errors import ConfigError, OutputExistsError

    run = tmp_path / "run"
    saelab.create("topk", d_in=8, n_latents=16, k=2).save(run / "sae")
    (run / "metrics.jsonl").write_text("{}\n")
    listing = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    for dst in (run, run / "sae", run / "sae" / "inner"):  # the run, the source, inside it
        with pytest.raises(ConfigError, match="overlaps the source"):
            convert(run / "sae", dst, "saelens", overwrite=True)
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == listing
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="overwrite"):
        convert(run / "sae", taken, "saelens")
    assert (taken / "keep.txt").read_text() == "mine"
    convert(run / "sae", taken, "saelens", overwrite=True)
    assert detect(taken) == "saelens"


@pytest.mark.parametrize("fmt", ["saelab", "saelens", "sparsify"])
def test_weights_holding_nan_are_refused_at_load_naming_the_tensor(tmp_path, fmt):
    from safetensors.torch import load_file, save_file

    from saelab.errors import FormatError

    save_in(saelab.create("topk", d_in=8, n_latents=16, k=2), tmp_path / "d", fmt)
    file = next((tmp_path / "d").glob("*.safetensors"))
    tensors = load_file(file)
    name = next(k for k, t in tensors.items() if t.ndim == 2)
    tensors[name][3, 1] = float("nan")
    save_file(tensors, file)
    with pytest.raises(FormatError, match="holds NaN values"):
        saelab.load(tmp_path / "d")
