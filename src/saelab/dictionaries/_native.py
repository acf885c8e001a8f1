"""saelab's own format: a folder with cfg.json and weights.safetensors (`Dictionary.save`,
`saelab.load`). It lives beside the Dictionary contract, below `saelab.io`, so that a dictionary
saves itself without importing the converters.

cfg.json holds `architecture`, `d_in`, `d_out`, `n_latents`, the variant's fields, and a
`provenance` object (model, hookpoint, site, dataset, tokens seen, library version, ...).
Both files are written atomically: a crash never leaves a half-written folder in place.
"""

from __future__ import annotations

import json
import logging
from dataclasses import fields
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from saelab._paths import atomic_path, write_json, write_safetensors
from saelab.config import build, to_dict
from saelab.dictionaries._registry import get
from saelab.errors import FormatError

log = logging.getLogger(__name__)

CFG = "cfg.json"
WEIGHTS = "weights.safetensors"
EXACT = "exact.safetensors"
"""A dictionary's `exact_tensors` (foreign values its parameters cannot hold bit for bit), when
it has any; a separate file, so that weights.safetensors is exactly the state dict."""


def library_version() -> str:
    """saelab's installed version (recorded in every saved dictionary's provenance)."""
    try:
        return metadata.version("saelab")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def save(dictionary, path: str | Path) -> Path:
    """Write `dictionary` to the folder `path` (replaced as a whole, atomically)."""
    path = Path(path)
    cfg: dict[str, Any] = {"architecture": dictionary.architecture, **to_dict(dictionary.cfg)}
    cfg["provenance"] = {**dictionary.provenance, "saelab_version": library_version()}
    tensors = {name: t.detach().cpu() for name, t in dictionary.state_dict().items()}
    with atomic_path(path) as tmp:
        tmp.mkdir()
        write_safetensors(tmp / WEIGHTS, tensors, metadata={"format": "saelab"})
        if dictionary.exact_tensors:
            write_safetensors(tmp / EXACT, {name: t.detach().cpu() for name, t in
                                            dictionary.exact_tensors.items()})
        write_json(tmp / CFG, cfg)
    return path


def read_config(path: Path) -> dict[str, Any]:
    """cfg.json of a saved dictionary, with a clear error when it is missing or broken."""
    cfg_path = path / CFG
    if not cfg_path.is_file():
        raise FormatError(f"{path} is not a saelab dictionary folder: no {CFG} in it")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{cfg_path} is not valid JSON ({e})") from None
    if not isinstance(cfg, dict) or "architecture" not in cfg:
        raise FormatError(f"{cfg_path} has no 'architecture' field; it was not written by saelab")
    return cfg


def load_weights(file: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; a FormatError if it is missing, truncated or foreign."""
    if not file.is_file():
        raise FormatError(f"weights file {file} is missing")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise FormatError(f"{file} is not a readable safetensors file (corrupt, truncated or "
                          f"another format): {e}") from None


HALF = (torch.float16, torch.bfloat16)


def compute_dtype(saved: torch.dtype, source: Path) -> torch.dtype:
    """The dtype a loaded dictionary computes in: its saved one, except that 16-bit floats are
    upcast (exactly) to float32. Activations arrive as float32 from stores and models, and a
    float16 matmul on the CPU is slow and inexact; call `.to(torch.bfloat16)` after loading to
    compute in 16 bits on purpose."""
    if saved in HALF:
        log.info("%s: weights saved as %s are loaded as float32", source, saved)
        return torch.float32
    return saved


def load(path: str | Path):
    """Load a dictionary saved by `save` (architecture looked up in the registry)."""
    path = Path(path)
    cfg = read_config(path)
    provenance = cfg.pop("provenance", {})
    cls = get(cfg.pop("architecture"))
    missing = [f.name for f in fields(cls.Config) if f.name not in cfg]
    if missing:  # a default would be a guess: k, say, cannot be read off the weights
        raise FormatError(f"{path / CFG} lacks {', '.join(map(repr, missing))}: a "
                          f"{cls.architecture}'s "
                          f"weights cannot tell {'it' if len(missing) == 1 else 'them'}, and a "
                          f"default could differ from what it was trained with. Add the value"
                          f"{'' if len(missing) == 1 else 's'} it was trained with to {CFG}")
    dictionary = cls(build(cls.Config, cfg, what=f"{path / CFG}"))
    dictionary.provenance = dict(provenance)
    tensors = load_weights(path / WEIGHTS)
    if "W_dec" in tensors and tensors["W_dec"].is_floating_point():
        dtype = compute_dtype(tensors["W_dec"].dtype, path / WEIGHTS)
        dictionary.to(dtype)  # keep the saved precision (float64 stays float64)
        tensors = {k: v.to(dtype) if v.dtype in HALF else v for k, v in tensors.items()}
    load_state(dictionary, tensors, path / WEIGHTS)
    if (path / EXACT).is_file():
        dictionary.exact_tensors.update(load_weights(path / EXACT))
    return dictionary


def load_state(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Copy `tensors` into `module`, refusing missing, extra or mis-shaped tensors."""
    check_state(module.state_dict(), tensors, source)
    module.load_state_dict(tensors)


def check_state(expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor],
                source: Path) -> None:
    """Refuse `tensors` unless they have exactly the names and shapes of `expected`."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise FormatError(f"{source}: tensors do not match the config "
                          f"(missing: {missing or 'none'}; unexpected: {extra or 'none'})")
    for name, t in tensors.items():
        if t.shape != expected[name].shape:
            raise FormatError(f"{source}: tensor {name!r} has shape {tuple(t.shape)}, the config "
                              f"implies {tuple(expected[name].shape)}")
        if t.is_floating_point() and torch.isnan(t).any():  # (inf can be meant: log 0)
            raise FormatError(f"{source}: tensor {name!r} holds NaN values: the "
                              f"dictionary is broken (a diverged run?); retrain it or load "
                              f"another checkpoint")
