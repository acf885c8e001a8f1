"""SAELens' layout (SAELens 6.x; older configs are upgraded on read as SAELens does).

A folder with `cfg.json` (`architecture`, `d_in`, `d_sae`, `dtype`, `apply_b_dec_to_input`,
`normalize_activations`, `metadata` with `model_name`, `hook_name`, ...) and
`sae_weights.safetensors`, plus `sparsity.safetensors` (log10 firing frequencies) when the
trainer wrote one.

The transposition trap: SAELens stores `W_enc` as [d_in, d_sae] and computes `x @ W_enc`;
saelab stores `W_enc` as [n_latents, d_in] and computes `x @ W_enc.T`. `W_dec` is
[d_sae, d_out] in both. Transposition is exact, so tensors round-trip bit for bit.

Which saelab variant is which SAELens architecture, and how their tensors and fields map, each
variant declares in its own file (`formats["saelens"]`, a `SaeLensMapping`); this module does
what they share. Today:

| SAELens | saelab |
|---|---|
| standard | relu |
| topk | topk (`rescale_acts_by_decoder_norm` folded into the weights on read) |
| jumprelu | jumprelu (theta <-> log_threshold; theta as read kept in `exact_tensors`) |
| gated | gated |
| transcoder, skip_transcoder | transcoder, skip_transcoder with activation="relu" |
| batchtopk, matryoshka_batchtopk (training checkpoints) | batchtopk, matryoshka |
| jumprelu (written from) | batchtopk, matryoshka (their inference thresholds) |

Writing is in `saelab.io.saelens_write`.

`normalize_activations`: `expected_average_only_in` is folded into the weights when the factor
is given; `constant_norm_rescale` and `layer_norm` become the dictionary's `input_norm` (applied
per input around encode/decode, as SAELens does; see `saelab.dictionaries._input_norm.InputNorm`) and
are written back as they were.

`apply_b_dec_to_input=False` (e.g. Gemma Scope) is folded into the encoder bias on read
(saelab centres the input of an SAE by b_dec): same function, not the same bits.
Writing records saelab's own architecture, config and scalar buffers under `metadata.saelab`, so
reading the folder back gives the saelab dictionary it came from. `metadata.model_name` and
`hook_name` are written as the Hub id and TransformerLens' hook name where known
(`saelab.io.saelens_hooks`); reading takes saelab's names back from `metadata.saelab_model` and
`saelab_hookpoint` where they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saelab.dictionaries import get, names
from saelab.dictionaries._formats import SaeLensMapping
from saelab.errors import FormatError
from saelab.io._common import (
    SAELAB_KEY,
    blank,
    expect,
    field,
    log,
    make,
    read_json,
    read_tensors,
)
from saelab.io.mapping import declarations, declared, expected_shapes, renamed_in

CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
SPARSITY = "sparsity.safetensors"
LAYOUT_VERSION = "6.0.0"
"""The SAELens version whose layout `save` writes (SAELens reads configs older than 6.0 with
its backward-compatibility path, so this must be at least 6.0.0)."""

TRANSPOSED = ("W_enc",)
"""SAELens tensors stored transposed relative to saelab ([d_in, d_sae] vs [n_latents, d_in])."""
RUN_TIME = ("constant_norm_rescale", "layer_norm")
"""Normalisations SAELens applies to each input at run time: saelab's `input_norm`."""
NORMALISATIONS = ("none", "expected_average_only_in", *RUN_TIME)
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
           "bfloat16": torch.bfloat16}


def is_saelens(path: Path) -> bool:
    return (path / WEIGHTS).is_file()


def upgrade_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Configs written before SAELens 6.0 in the 6.x shape (the renames SAELens applies)."""
    version = cfg.get("sae_lens_version") or (cfg.get("metadata") or {}).get("sae_lens_version")
    try:
        new = bool(version) and int(str(version).split(".")[0]) >= 6
    except ValueError:
        new = False
    if new:
        return cfg
    out = {{"hook_point": "hook_name", "activation_fn_str": "activation_fn"}.get(k, k): v
           for k, v in cfg.items()}
    out.setdefault("architecture", "standard")
    out.setdefault("apply_b_dec_to_input", True)
    kwargs = out.get("activation_fn_kwargs") or {}
    if out.get("activation_fn") == "topk" and kwargs.get("k") is not None:
        out["architecture"], out["k"] = "topk", kwargs["k"]
    norm = out.get("normalize_activations")
    if isinstance(norm, bool) or norm is None:
        out["normalize_activations"] = "expected_average_only_in" if norm else "none"
    meta = dict(out.get("metadata") or {})
    for key in ("model_name", "hook_name", "hook_head_index", "dataset_path", "context_size",
                "prepend_bos", "neuronpedia_id"):
        if key in out:
            meta.setdefault(key, out[key])
    out["metadata"] = meta
    return out


def load(path: str | Path, norm_scaling_factor: float | None = None):
    """Read a SAELens folder into a saelab dictionary.

    `norm_scaling_factor`: for `normalize_activations="expected_average_only_in"`, the factor
    SAELens' pretrained directory lists for this SAE; it is folded into the weights exactly as
    SAELens' `fold_activation_norm_scaling_factor` does. Without it the weights are used as they
    are (what SAELens' `load_from_disk` does too) and a warning says so.
    """
    path = Path(path)
    cfg = upgrade_config(read_json(path / CFG))
    source = path / WEIGHTS
    name, mapping = reader(cfg.get("architecture", "standard"), path / CFG)
    raw = _finetuning_scale(read_tensors(source), source)
    dtype = _DTYPES.get(str(cfg.get("dtype", "float32")).replace("torch.", ""))
    if dtype is not None:
        raw = {k: v.to(dtype) for k, v in raw.items()}
    fields = config_fields(cfg, mapping, path / CFG)
    expect(raw, expected_shapes(blank(name, fields, path / CFG), mapping.tensors, TRANSPOSED),
           source=source)
    state, exact = to_state(cfg, mapping, raw, source)
    meta = cfg.get("metadata") or {}
    provenance = _provenance(meta, path)
    input_norm = _normalisation(cfg, state, norm_scaling_factor, path, provenance,
                                "target" in get(name).needs)
    if input_norm != "none":
        fields["input_norm"] = input_norm
    record = meta.get(SAELAB_KEY)
    dictionary = _restore(record, name, state, source, input_norm) \
        if isinstance(record, dict) else None
    if dictionary is None:
        dictionary = make(name, fields, state, provenance, source)
    if dictionary.architecture == name:
        dictionary.exact_tensors.update(exact)
    return dictionary


def reader(architecture: str, source: Path) -> tuple[str, SaeLensMapping]:
    """The saelab variant that declares SAELens' `architecture`, and its mapping."""
    found = {m.architecture: (name, m) for name, m in declarations("saelens").items()}
    if architecture not in found:
        raise FormatError(f"{source}: SAELens architecture {architecture!r} has no saelab "
                          f"counterpart; saelab reads {', '.join(sorted(found))}")
    return found[architecture]


def config_fields(cfg: dict[str, Any], mapping: SaeLensMapping, source: Path) -> dict[str, Any]:
    """saelab config fields of a SAELens config: sizes, the mapped fields, the fixed ones."""
    fields = {"d_in": field(cfg, "d_in", int, source), "n_latents": field(cfg, "d_sae", int, source)}
    for theirs, ours in mapping.fields.items():
        if theirs not in cfg:
            raise FormatError(f"{source}: no {theirs!r} field in the config (SAELens' "
                              f"{mapping.architecture!r} has one)")
        fields[ours] = cfg[theirs]
    fields.update(mapping.fixed)
    _hook(mapping.read_fields, source, cfg, fields)
    return fields


def to_state(cfg: dict[str, Any], mapping: SaeLensMapping, raw: dict[str, Tensor],
             source: Path) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(state in saelab's names, exact tensors) of a SAELens tensor set whose names and shapes
    were checked: renamed, W_enc transposed, b_dec folded into the encoder where SAELens' does
    not subtract it (`apply_b_dec_to_input` false; same function, not the same bits), then the
    variant's own conversion."""
    state = renamed_in(raw, mapping.tensors, TRANSPOSED)
    if mapping.centre is not None and not cfg.get("apply_b_dec_to_input", True):
        mapping.centre(state, raw["b_dec"] @ raw["W_enc"])
    return state, _hook(mapping.read, source, cfg, state) or {}


def _hook(hook, source: Path, *args):
    """Call a declared conversion; its FormatError gets the file's name in front."""
    if hook is None:
        return None
    try:
        return hook(*args)
    except FormatError as e:
        raise FormatError(f"{source}: {e}") from None


def _finetuning_scale(tensors: dict[str, Tensor], source: Path) -> dict[str, Tensor]:
    scale = tensors.get("scaling_factor")
    if scale is None:
        return tensors
    if not torch.all(scale == 1):
        raise FormatError(f"{source}: holds a finetuning 'scaling_factor' that is not all ones; "
                          "saelab does not read SAELens' finetuning scaling factor")
    return {k: v for k, v in tensors.items() if k != "scaling_factor"}


def _provenance(meta: dict[str, Any], path: Path) -> dict[str, Any]:
    """saelab provenance of SAELens metadata; saelab's own model and hookpoint names where a
    saelab writer recorded them (`saelab_model`, `saelab_hookpoint`), SAELens' otherwise."""
    model = [("saelab_model", "model"), ("model_name", "model_hub_id")] \
        if meta.get("saelab_model") is not None else [("model_name", "model")]
    out = {"converted_from": "saelens", "source": str(path)}
    for theirs, ours in (*model, ("saelab_hookpoint", "hookpoint"), ("hook_name", "hookpoint"),
                         ("dataset_path", "dataset"), ("neuronpedia_id", "neuronpedia_id"),
                         ("sae_lens_version", "saelens_version")):
        if meta.get(theirs) is not None:
            out.setdefault(ours, meta[theirs])
    return out


def _normalisation(cfg, state: dict[str, Tensor], factor: float | None, path: Path,
                   provenance: dict, transcoder: bool) -> str:
    """Apply `normalize_activations`: fold the expected-average factor into the weights, or
    return the run-time normalisation the dictionary applies per input (its `input_norm`)."""
    norm = cfg.get("normalize_activations", "none") or "none"
    if norm not in NORMALISATIONS:
        raise FormatError(f"{path / CFG}: normalize_activations={norm!r} is not one saelab "
                          f"reads; saelab reads {', '.join(NORMALISATIONS)}")
    if norm in RUN_TIME:
        if transcoder:
            raise FormatError(f"{path / CFG}: normalize_activations={norm!r} on a transcoder "
                              "(SAELens normalises its input only); saelab reads run-time "
                              "normalisation for SAEs, not transcoders")
        return norm
    if norm == "expected_average_only_in":
        if factor is None:
            log.warning("%s: normalize_activations='expected_average_only_in' without a "
                        "norm_scaling_factor: the weights are used as stored (as SAELens' "
                        "load_from_disk does); pass norm_scaling_factor to fold it in", path)
            provenance["input_normalization"] = "expected_average_only_in (factor not folded)"
            return "none"
        # SAELens' fold_activation_norm_scaling_factor, on saelab's [n_latents, d_in] W_enc
        state["W_enc"] = state["W_enc"] * factor
        state["W_dec"] = state["W_dec"] / factor
        state["b_dec"] = state["b_dec"] / factor
        provenance["input_normalization"] = f"expected_average_only_in, folded ({factor})"
    return "none"


def _restore(record: dict, name: str, state: dict[str, Tensor], source: Path, input_norm: str):
    """The saelab dictionary recorded in the metadata, if the weights (and the normalisation)
    still fit it. A variant written in another's place (`written_as`, BatchTopK as its JumpReLU)
    takes the tensors they share and its scalar buffers from the record."""
    arch, fields = record.get("architecture"), record.get("config")
    if not isinstance(arch, str) or not isinstance(fields, dict):
        return None
    if fields.get("input_norm", "none") != input_norm:
        return None
    try:
        if arch != name:
            if arch not in names() or getattr(declared(get(arch), "saelens"), "written_as",
                                              None) is None:
                return None
            state = _recorded_state(blank(arch, fields, source), state,
                                    record.get("scalars") or {})
            if state is None:
                return None
        return make(arch, fields, state, record.get("provenance") or {}, source)
    except Exception as e:  # noqa: BLE001 - fall back to the plain reading
        log.warning("%s: the saelab record in the metadata does not fit (%s); reading it as a "
                    "plain SAELens %s", source, e, name)
        return None


def _recorded_state(dictionary, state: dict[str, Tensor],
                    scalars: dict[str, Any]) -> dict[str, Tensor] | None:
    """`dictionary`'s state from the tensors of `state` of the same name and shape and the
    recorded scalar buffers; None where something is missing."""
    out = {}
    for key, t in dictionary.state_dict().items():
        if key in state and state[key].shape == t.shape:
            out[key] = state[key]
        elif key in scalars and t.ndim == 0:
            value = scalars[key]
            out[key] = torch.tensor(value, dtype=state["W_dec"].dtype if isinstance(value, float)
                                    else torch.long)
        else:
            return None
    return out


def read_sparsity(path: str | Path) -> Tensor | None:
    """SAELens' log10 firing frequencies [d_sae] (sparsity.safetensors), if the folder has them."""
    file = Path(path) / SPARSITY
    if not file.is_file():
        return None
    tensors = read_tensors(file)
    if "sparsity" not in tensors:
        raise FormatError(f"{file}: no 'sparsity' tensor in it (found {sorted(tensors)})")
    return tensors["sparsity"]
