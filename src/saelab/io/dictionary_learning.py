"""dictionary_learning's layout (Marks, Karvonen et al.): `ae.pt` (a state dict saved with
torch.save) and, beside it, `config.json` whose `trainer.dict_class` names the class.

`ae.pt` is read with `torch.load(weights_only=True)`: tensors and plain containers only. A file
that needs pickled code to load is refused, and nothing from it is executed.

dictionary_learning -> saelab (the tensor names and layouts of dictionary_learning's classes):

| dict_class | tensors | saelab |
|---|---|---|
| AutoEncoder | encoder.weight [F, D], encoder.bias, decoder.weight [D, F], bias | relu |
| AutoEncoderTopK | encoder.weight, encoder.bias, decoder.weight [D, F], b_dec (k) | topk |
| BatchTopKSAE | as AutoEncoderTopK (k, threshold) | batchtopk |
| JumpReluAutoEncoder | W_enc [D, F], b_enc, W_dec [F, D], b_dec, threshold | jumprelu |
| GatedAutoEncoder | encoder.weight, gate_bias, mag_bias, r_mag, decoder.weight, decoder_bias | gated |

JumpReluAutoEncoder does not subtract b_dec from its input; that is folded into b_enc (same
function, not the same bits).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saelab.errors import FormatError
from saelab.io._common import expect, make, read_json
from saelab.ops.jumprelu import log_exact

WEIGHTS = "ae.pt"
CFG = "config.json"
CLASSES = ("AutoEncoder", "AutoEncoderTopK", "BatchTopKSAE", "JumpReluAutoEncoder",
           "GatedAutoEncoder")


def is_dictionary_learning(path: Path) -> bool:
    return (path / WEIGHTS).is_file()


def read_state_dict(file: Path) -> dict[str, Tensor]:
    """A state dict from a torch.save file, without unpickling code: a FormatError otherwise."""
    if not file.is_file():
        raise FormatError(f"{file} is missing")
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FormatError(f"{file} cannot be read as plain tensors: it needs pickled code or is "
                          f"not a torch.save file ({first}). saelab loads only weights "
                          "(torch.load(weights_only=True)) and refuses to run code from a "
                          "file") from None
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise FormatError(f"{file} holds a {type(obj).__name__}, expected a state dict "
                          "(names -> tensors)")
    return dict(obj)


def _dict_class(path: Path, t: dict[str, Tensor]) -> tuple[str, dict[str, Any]]:
    trainer: dict[str, Any] = {}
    if (path / CFG).is_file():
        trainer = read_json(path / CFG).get("trainer") or {}
    name = trainer.get("dict_class")
    if name is None:  # infer from the tensor names
        if "W_enc" in t and "threshold" in t:
            name = "JumpReluAutoEncoder"
        elif "gate_bias" in t:
            name = "GatedAutoEncoder"
        elif "b_dec" in t:
            name = "BatchTopKSAE" if "threshold" in t else "AutoEncoderTopK"
        else:
            name = "AutoEncoder"
    if name not in CLASSES:
        raise FormatError(f"{path}: dictionary_learning class {name!r} has no saelab counterpart; "
                          f"saelab reads {', '.join(CLASSES)}")
    return name, trainer


def load(path: str | Path):
    """Read a dictionary_learning folder (ae.pt + config.json) into a saelab dictionary."""
    path = Path(path)
    source = path / WEIGHTS
    t = read_state_dict(source)
    name, trainer = _dict_class(path, t)
    provenance = {"converted_from": "dictionary_learning", "source": str(path),
                  "dict_class": name}
    for theirs, ours in (("lm_name", "model"), ("submodule_name", "hookpoint"),
                         ("layer", "layer")):
        if trainer.get(theirs) is not None:
            provenance[ours] = trainer[theirs]
    arch, fields, state = _READERS[name](t, trainer, source)
    return make(arch, fields, state, provenance, source)


def _sizes(t: dict[str, Tensor], key: str, source: Path, transposed: bool = False) -> tuple:
    if key not in t or t[key].ndim != 2:
        raise FormatError(f"{source}: no 2-d {key!r} tensor (found {sorted(t)})")
    f, d = t[key].shape
    return (d, f) if transposed else (f, d)


def _k(t: dict[str, Tensor], trainer: dict, source: Path) -> int:
    k = trainer.get("k", t["k"].item() if "k" in t else None)
    if k is None:
        raise FormatError(f"{source}: a TopK dictionary without k (neither a 'k' tensor nor "
                          "trainer.k in config.json)")
    return int(k)


def _read_relu(t, trainer, source):
    f, d = _sizes(t, "encoder.weight", source)
    expect(t, {"encoder.weight": (f, d), "encoder.bias": (f,), "decoder.weight": (d, f),
               "bias": (d,)}, source=source)
    state = {"W_enc": t["encoder.weight"], "b_enc": t["encoder.bias"],
             "W_dec": t["decoder.weight"].t().contiguous(), "b_dec": t["bias"]}
    return "relu", {"d_in": d, "n_latents": f}, state


def _read_topk(t, trainer, source, batch=False):
    f, d = _sizes(t, "encoder.weight", source)
    expect(t, {"encoder.weight": (f, d), "encoder.bias": (f,), "decoder.weight": (d, f),
               "b_dec": (d,)}, {"k": (), "threshold": ()}, source=source)
    state = {"W_enc": t["encoder.weight"], "b_enc": t["encoder.bias"],
             "W_dec": t["decoder.weight"].t().contiguous(), "b_dec": t["b_dec"]}
    fields = {"d_in": d, "n_latents": f, "k": _k(t, trainer, source)}
    if not batch:
        return "topk", fields, state
    theta = t.get("threshold", torch.tensor(0.0)).to(state["W_dec"].dtype)
    state["threshold"] = theta.clamp_min(0)
    state["threshold_batches"] = torch.tensor(1 if float(theta) > 0 else 0)
    return "batchtopk", fields, state


def _read_jumprelu(t, trainer, source):
    d, f = _sizes(t, "W_enc", source)
    expect(t, {"W_enc": (d, f), "b_enc": (f,), "W_dec": (f, d), "b_dec": (d,),
               "threshold": (f,)}, source=source)
    # dictionary_learning's JumpReLU reads x itself: b_enc + b_dec @ W_enc gives saelab's
    # centred encoder the same pre-activations
    state = {"W_enc": t["W_enc"].t().contiguous(), "b_enc": t["b_enc"] + t["b_dec"] @ t["W_enc"],
             "W_dec": t["W_dec"], "b_dec": t["b_dec"], "log_threshold": log_exact(t["threshold"])}
    return "jumprelu", {"d_in": d, "n_latents": f}, state


def _read_gated(t, trainer, source):
    f, d = _sizes(t, "encoder.weight", source)
    expect(t, {"encoder.weight": (f, d), "gate_bias": (f,), "mag_bias": (f,), "r_mag": (f,),
               "decoder.weight": (d, f), "decoder_bias": (d,)}, source=source)
    state = {"W_enc": t["encoder.weight"], "b_gate": t["gate_bias"], "b_mag": t["mag_bias"],
             "r_mag": t["r_mag"], "W_dec": t["decoder.weight"].t().contiguous(),
             "b_dec": t["decoder_bias"]}
    return "gated", {"d_in": d, "n_latents": f}, state


_READERS = {"AutoEncoder": _read_relu, "AutoEncoderTopK": _read_topk,
            "BatchTopKSAE": lambda t, c, s: _read_topk(t, c, s, batch=True),
            "JumpReluAutoEncoder": _read_jumprelu, "GatedAutoEncoder": _read_gated}
