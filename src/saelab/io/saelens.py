"""SAELens' layout (SAELens 6.x; older configs are upgraded on read as SAELens does).

A folder with `cfg.json` (`architecture`, `d_in`, `d_sae`, `dtype`, `apply_b_dec_to_input`,
`normalize_activations`, `metadata` with `model_name`, `hook_name`, ...) and
`sae_weights.safetensors`, plus `sparsity.safetensors` (log10 firing frequencies) when the
trainer wrote one.

The transposition trap: SAELens stores `W_enc` as [d_in, d_sae] and computes `x @ W_enc`;
saelab stores `W_enc` as [n_latents, d_in] and computes `x @ W_enc.T`. `W_dec` is
[d_sae, d_out] in both. Transposition is exact, so tensors round-trip bit for bit.

Architectures, SAELens <-> saelab:

| SAELens | saelab |
|---|---|
| standard | relu |
| topk | topk (`rescale_acts_by_decoder_norm` folded into the weights on read) |
| jumprelu | jumprelu (theta <-> log_threshold; theta as read kept in `exact_tensors`) |
| gated | gated |
| transcoder, skip_transcoder | transcoder, skip_transcoder with activation="relu" |
| batchtopk, matryoshka_batchtopk (training checkpoints) | batchtopk, matryoshka |
| jumprelu (written from) | batchtopk, matryoshka (their inference thresholds) |

`normalize_activations`: `expected_average_only_in` is folded into the weights when the factor
is given; `constant_norm_rescale` and `layer_norm` become the dictionary's `input_norm` (applied
per input around encode/decode, as SAELens does; see `saelab.dictionaries._base._InputNorm`) and
are written back as they were.

`apply_b_dec_to_input=False` (e.g. Gemma Scope) is folded into the encoder bias on read
(saelab centres the input of an SAE by b_dec): same function, not the same bits.
Writing records saelab's own architecture, config and scalar buffers under `metadata.saelab`, so
reading the folder back gives the saelab dictionary it came from.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saelab._paths import atomic_path, write_json, write_safetensors
from saelab.errors import FormatError
from saelab.io._common import (
    SAELAB_KEY,
    expect,
    field,
    log,
    log_exact,
    make,
    read_json,
    read_tensors,
    saelab_record,
)

CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
SPARSITY = "sparsity.safetensors"
LAYOUT_VERSION = "6.0.0"
"""The SAELens version whose layout `save` writes (SAELens reads configs older than 6.0 with
its backward-compatibility path, so this must be at least 6.0.0)."""

READS = ("standard", "topk", "jumprelu", "gated", "transcoder", "skip_transcoder", "batchtopk",
         "matryoshka_batchtopk")
RUN_TIME = ("constant_norm_rescale", "layer_norm")
"""Normalisations SAELens applies to each input at run time: saelab's `input_norm`."""
NORMALISATIONS = ("none", "expected_average_only_in", *RUN_TIME)
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
           "bfloat16": torch.bfloat16}


def is_saelens(path: Path) -> bool:
    return (path / WEIGHTS).is_file()


# --- reading --------------------------------------------------------------------------------
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
    tensors = read_tensors(source)
    arch = cfg.get("architecture", "standard")
    if arch not in READS:
        raise FormatError(f"{path / CFG}: SAELens architecture {arch!r} has no saelab "
                          f"counterpart; saelab reads {', '.join(READS)}")
    d_in, d_sae = field(cfg, "d_in", int, path / CFG), field(cfg, "d_sae", int, path / CFG)
    tensors = _finetuning_scale(tensors, source)
    dtype = _DTYPES.get(str(cfg.get("dtype", "float32")).replace("torch.", ""))
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    meta = cfg.get("metadata") or {}
    provenance = _provenance(meta, path)
    record = meta.get(SAELAB_KEY) if isinstance(meta.get(SAELAB_KEY), dict) else None
    builder = _READERS[arch]
    name, fields, state = builder(cfg, tensors, d_in, d_sae, source)
    input_norm = _normalisation(cfg, state, norm_scaling_factor, path, provenance, name)
    if input_norm != "none":
        fields["input_norm"] = input_norm
    dictionary = None
    if record is not None:
        dictionary = _restore(record, name, state, source, input_norm)
    if dictionary is None:
        dictionary = make(name, fields, state, provenance, source)
    # theta that exp(log_threshold) cannot give back bit for bit is kept for the way back
    if dictionary.architecture == "jumprelu":
        theta = tensors["threshold"]
        if not torch.equal(dictionary.threshold.detach(), theta):
            dictionary.exact_tensors["threshold"] = theta.clone()
    return dictionary


def _finetuning_scale(tensors: dict[str, Tensor], source: Path) -> dict[str, Tensor]:
    scale = tensors.get("scaling_factor")
    if scale is None:
        return tensors
    if not torch.all(scale == 1):
        raise FormatError(f"{source}: holds a finetuning 'scaling_factor' that is not all ones; "
                          "saelab does not read SAELens' finetuning scaling factor")
    return {k: v for k, v in tensors.items() if k != "scaling_factor"}


def _provenance(meta: dict[str, Any], path: Path) -> dict[str, Any]:
    out = {"converted_from": "saelens", "source": str(path)}
    for theirs, ours in (("model_name", "model"), ("hook_name", "hookpoint"),
                         ("dataset_path", "dataset"), ("neuronpedia_id", "neuronpedia_id"),
                         ("sae_lens_version", "saelens_version")):
        if meta.get(theirs) is not None:
            out[ours] = meta[theirs]
    return out


def _centre_fold(cfg: dict, W_enc: Tensor, b_dec: Tensor) -> Tensor | None:
    """b_dec @ W_enc when SAELens does not subtract b_dec from the input (saelab always does
    for an SAE): adding it to the encoder bias gives the same pre-activations."""
    if cfg.get("apply_b_dec_to_input", True):
        return None
    return b_dec @ W_enc


def _read_plain(cfg, t, d_in, d_sae, source, extra=()):
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    shapes.update({name: shape for name, shape in extra})
    expect(t, shapes, source=source)
    state = {"W_enc": t["W_enc"].t().contiguous(), "b_enc": t["b_enc"], "W_dec": t["W_dec"],
             "b_dec": t["b_dec"]}
    shift = _centre_fold(cfg, t["W_enc"], t["b_dec"])
    if shift is not None:
        state["b_enc"] = t["b_enc"] + shift
    return state


def _read_standard(cfg, t, d_in, d_sae, source):
    if cfg.get("activation_fn", "relu") not in ("relu", None):
        raise FormatError(f"{source}: standard SAE with activation {cfg['activation_fn']!r}; "
                          "saelab reads the ReLU one")
    return "relu", {"d_in": d_in, "n_latents": d_sae}, _read_plain(cfg, t, d_in, d_sae, source)


def _read_topk(cfg, t, d_in, d_sae, source):
    state = _read_plain(cfg, t, d_in, d_sae, source)
    if cfg.get("rescale_acts_by_decoder_norm"):
        # SAELens ranks pre * |W_dec_i| and decodes acts / |W_dec_i|: the same as an SAE with
        # encoder rows and bias scaled by the norms and unit decoder rows
        norm = state["W_dec"].norm(dim=-1)
        state["W_enc"] = state["W_enc"] * norm[:, None]
        state["b_enc"] = state["b_enc"] * norm
        state["W_dec"] = state["W_dec"] / norm[:, None]
    k = field(cfg, "k", int, source.parent / CFG)
    return "topk", {"d_in": d_in, "n_latents": d_sae, "k": k}, state


def _read_jumprelu(cfg, t, d_in, d_sae, source):
    state = _read_plain(cfg, t, d_in, d_sae, source, extra=[("threshold", (d_sae,))])
    # SAELens: ReLU(pre) * (pre > theta); saelab: pre * (pre > theta), theta = exp(log theta).
    # They agree for theta >= 0, and a negative theta acts as 0 in SAELens' form
    state["log_threshold"] = log_exact(t["threshold"])
    return "jumprelu", {"d_in": d_in, "n_latents": d_sae}, state


def _read_gated(cfg, t, d_in, d_sae, source):
    shapes = {"W_enc": (d_in, d_sae), "b_gate": (d_sae,), "r_mag": (d_sae,), "b_mag": (d_sae,),
              "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    expect(t, shapes, source=source)
    state = {k: t[k] for k in shapes}
    state["W_enc"] = t["W_enc"].t().contiguous()
    shift = _centre_fold(cfg, t["W_enc"], t["b_dec"])
    if shift is not None:
        state["b_gate"] = t["b_gate"] + shift
        state["b_mag"] = t["b_mag"] + shift * t["r_mag"].exp()
    return "gated", {"d_in": d_in, "n_latents": d_sae}, state


def _read_transcoder(cfg, t, d_in, d_sae, source, skip=False):
    d_out = field(cfg, "d_out", int, source.parent / CFG)
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_out),
              "b_dec": (d_out,)}
    if skip:
        shapes["W_skip"] = (d_out, d_in)
    expect(t, shapes, source=source)
    state = {k: t[k] for k in shapes}
    state["W_enc"] = t["W_enc"].t().contiguous()
    name = "skip_transcoder" if skip else "transcoder"
    fields = {"d_in": d_in, "n_latents": d_sae, "d_out": d_out, "activation": "relu",
              "k": min(32, d_sae)}  # k is unused by a ReLU transcoder, but must be valid
    return name, fields, state


def _read_batchtopk(cfg, t, d_in, d_sae, source):
    state = _read_plain(cfg, t, d_in, d_sae, source, extra=[("topk_threshold", ())])
    state["threshold"] = t["topk_threshold"].to(state["W_dec"].dtype)
    state["threshold_batches"] = torch.tensor(1 if float(state["threshold"]) > 0 else 0)
    return "batchtopk", {"d_in": d_in, "n_latents": d_sae,
                         "k": int(field(cfg, "k", float, source.parent / CFG))}, state


def _read_matryoshka(cfg, t, d_in, d_sae, source):
    _, fields, state = _read_batchtopk(cfg, t, d_in, d_sae, source)
    del state["threshold_batches"]
    if float(state["threshold"]) <= 0:
        state["threshold"] = torch.tensor(-1.0, dtype=state["threshold"].dtype)
    widths = [int(w) for w in cfg.get("matryoshka_widths") or [d_sae]]
    fields["prefixes"] = widths if widths[-1] == d_sae else widths + [d_sae]
    return "matryoshka", fields, state


_READERS = {"standard": _read_standard, "topk": _read_topk, "jumprelu": _read_jumprelu,
            "gated": _read_gated, "transcoder": _read_transcoder,
            "skip_transcoder": lambda *a: _read_transcoder(*a, skip=True),
            "batchtopk": _read_batchtopk, "matryoshka_batchtopk": _read_matryoshka}


def _normalisation(cfg, state: dict[str, Tensor], factor: float | None, path: Path,
                   provenance: dict, name: str) -> str:
    """Apply `normalize_activations`: fold the expected-average factor into the weights, or
    return the run-time normalisation the dictionary applies per input (its `input_norm`)."""
    norm = cfg.get("normalize_activations", "none") or "none"
    if norm not in NORMALISATIONS:
        raise FormatError(f"{path / CFG}: normalize_activations={norm!r} is not one saelab "
                          f"reads; saelab reads {', '.join(NORMALISATIONS)}")
    if norm in RUN_TIME:
        if name in ("transcoder", "skip_transcoder"):
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
    still fit it."""
    arch, fields = record.get("architecture"), record.get("config")
    if not isinstance(arch, str) or not isinstance(fields, dict):
        return None
    if fields.get("input_norm", "none") != input_norm:
        return None
    state = dict(state)
    scalars = record.get("scalars") or {}
    if arch in ("batchtopk", "matryoshka") and name == "jumprelu":
        state.pop("log_threshold")
        state["threshold"] = torch.tensor(scalars.get("threshold", 0.0), dtype=state["W_dec"].dtype)
        if arch == "batchtopk":
            state["threshold_batches"] = torch.tensor(int(scalars.get("threshold_batches", 0)))
    elif arch != name:
        return None
    try:
        return make(arch, fields, state, record.get("provenance") or {}, source)
    except Exception as e:  # noqa: BLE001 - fall back to the plain reading
        log.warning("%s: the saelab record in the metadata does not fit (%s); reading it as a "
                    "plain SAELens %s", source, e, name)
        return None


def read_sparsity(path: str | Path) -> Tensor | None:
    """SAELens' log10 firing frequencies [d_sae] (sparsity.safetensors), if the folder has them."""
    file = Path(path) / SPARSITY
    if not file.is_file():
        return None
    tensors = read_tensors(file)
    if "sparsity" not in tensors:
        raise FormatError(f"{file}: no 'sparsity' tensor in it (found {sorted(tensors)})")
    return tensors["sparsity"]


# --- writing --------------------------------------------------------------------------------
WRITES = ("relu", "topk", "jumprelu", "gated", "batchtopk", "matryoshka", "transcoder",
          "skip_transcoder")


def to_saelens(dictionary) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(cfg.json object, tensors) of `dictionary` in SAELens' layout; a FormatError naming what
    cannot be expressed there."""
    arch = dictionary.architecture
    if arch not in WRITES:
        raise FormatError(f"SAELens has no counterpart of saelab's {arch!r}; saelab writes "
                          f"{', '.join(WRITES)} to SAELens")
    sd = {k: v.detach().cpu() for k, v in dictionary.state_dict().items()}
    transcoder = arch in ("transcoder", "skip_transcoder")
    if transcoder and dictionary.cfg.activation != "relu":
        raise FormatError(f"SAELens' {arch} is a ReLU transcoder; this one has "
                          f"activation={dictionary.cfg.activation!r}. Write it in sparsify's "
                          "layout instead (`--to sparsify`) or keep saelab's")
    if not transcoder and dictionary.d_in != dictionary.d_out:
        raise FormatError(f"a saelab {arch} with d_in={dictionary.d_in} != d_out="
                          f"{dictionary.d_out} has no SAELens counterpart")
    W_enc = sd.pop("W_enc").t().contiguous()
    tensors: dict[str, Tensor] = {"W_enc": W_enc, "W_dec": sd["W_dec"], "b_dec": sd["b_dec"]}
    extra: dict[str, Any] = {}
    name = {"relu": "standard", "batchtopk": "jumprelu", "matryoshka": "jumprelu"}.get(arch, arch)
    if arch == "gated":
        tensors.update(b_gate=sd["b_gate"], r_mag=sd["r_mag"], b_mag=sd["b_mag"])
    else:
        tensors["b_enc"] = sd["b_enc"]
    if arch == "topk":
        extra = {"k": dictionary.cfg.k, "rescale_acts_by_decoder_norm": False}
    elif arch == "jumprelu":
        tensors["threshold"] = _exact_threshold(dictionary)
    elif arch == "batchtopk":
        tensors["threshold"] = dictionary.inference_threshold().detach().cpu()
    elif arch == "matryoshka":
        if float(dictionary.threshold) < 0:
            raise FormatError("this matryoshka dictionary has no inference threshold yet (it "
                              "has not seen a training batch), so its codes depend on the batch; "
                              "SAELens' JumpReLU needs one")
        tensors["threshold"] = dictionary.threshold.detach().cpu().expand(
            dictionary.n_latents).contiguous()
    elif transcoder:
        extra = {"d_out": dictionary.d_out}
        if arch == "skip_transcoder":
            tensors["W_skip"] = sd["W_skip"]
    prov = dictionary.provenance
    meta = {"sae_lens_version": LAYOUT_VERSION, "sae_lens_training_version": None,
            "model_name": prov.get("model"), "hook_name": prov.get("hookpoint"),
            "dataset_path": prov.get("dataset"), SAELAB_KEY: saelab_record(dictionary)}
    dtype = str(tensors["W_dec"].dtype).replace("torch.", "")
    cfg = {"architecture": name, "d_in": dictionary.d_in, "d_sae": dictionary.n_latents,
           "dtype": dtype, "device": "cpu", "apply_b_dec_to_input": not transcoder,
           "normalize_activations": dictionary.cfg.input_norm, "reshape_activations": "none",
           **extra,
           "metadata": _json_safe(meta)}
    return cfg, tensors


def _exact_threshold(dictionary) -> Tensor:
    """exp(log_threshold), except where it still equals what reading a SAELens threshold gave:
    there the threshold as that file stored it (exp does not reach every float, see log_exact)."""
    theta = dictionary.threshold.detach().cpu()
    exact = dictionary.exact_tensors.get("threshold")
    if exact is None or exact.shape != theta.shape or exact.dtype != theta.dtype:
        return theta
    as_read = log_exact(exact).exp()
    return torch.where(theta == as_read, exact, theta)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def save(dictionary, path: str | Path, sparsity: Tensor | None = None) -> Path:
    """Write `dictionary` as a SAELens folder at `path` (replaced as a whole, atomically)."""
    path = Path(path)
    cfg, tensors = to_saelens(dictionary)
    with atomic_path(path) as tmp:
        tmp.mkdir()
        write_safetensors(tmp / WEIGHTS, tensors)
        write_json(tmp / CFG, cfg)
        if sparsity is not None:
            write_safetensors(tmp / SPARSITY, {"sparsity": sparsity.detach().cpu()})
    return path
