"""Helpers shared by the format readers and writers: JSON and safetensors reading with clear
errors, tensor-set checks, building a registered dictionary from its fields and tensors."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saelab._paths import atomic_path, write_json, write_safetensors
from saelab.config import build, to_dict
from saelab.dictionaries import get
from saelab.dictionaries._native import HALF, check_state, compute_dtype, load_weights
from saelab.errors import FormatError

log = logging.getLogger("saelab.io")

SAELAB_KEY = "saelab"
"""Key under which a foreign config keeps what saelab needs for an exact round trip."""


def read_json(file: Path) -> dict[str, Any]:
    """A JSON object from `file`; a FormatError if it is missing, broken or not an object."""
    if not file.is_file():
        raise FormatError(f"{file} is missing")
    try:
        obj = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{file} is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{file} holds a JSON {type(obj).__name__}, expected an object")
    return obj


def read_tensors(file: Path) -> dict[str, Tensor]:
    """Every tensor of a safetensors file (never pickle)."""
    return load_weights(file)


def field(cfg: dict[str, Any], name: str, kind: type, source: Path) -> Any:
    """cfg[name] checked to be of `kind` (ints are accepted where floats are expected)."""
    if name not in cfg:
        raise FormatError(f"{source}: no {name!r} field in the config; expected {kind.__name__}")
    value = cfg[name]
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise FormatError(f"{source}: field {name!r} is {value!r}, expected {kind.__name__}")
    return value


def expect(tensors: dict[str, Tensor], shapes: dict[str, tuple[int, ...]],
           optional: dict[str, tuple[int, ...]] | None = None, *, source: Path) -> None:
    """Refuse a tensor set that is not exactly `shapes` (plus any of `optional`), naming what is
    missing, unexpected or mis-shaped and what the config implies."""
    optional = optional or {}
    missing = sorted(set(shapes) - set(tensors))
    extra = sorted(set(tensors) - set(shapes) - set(optional))
    if missing or extra:
        raise FormatError(f"{source}: tensors do not match the config (missing: "
                          f"{missing or 'none'}; unexpected: {extra or 'none'}; expected "
                          f"{sorted(shapes)})")
    for name, t in tensors.items():
        want = shapes.get(name, optional.get(name))
        if tuple(t.shape) != tuple(want):
            raise FormatError(f"{source}: tensor {name!r} has shape {tuple(t.shape)}, the config "
                              f"implies {tuple(want)}")


def blank(architecture: str, fields: dict[str, Any], source: Path):
    """A registered dictionary built from config `fields`, its random initialisation drawn
    without touching the caller's random state (it is about to be overwritten)."""
    cls = get(architecture)
    with torch.random.fork_rng(devices=[]):
        return cls(build(cls.Config, fields, what=str(source)))


def fill(dictionary, tensors: dict[str, Tensor], provenance: dict[str, Any], source: Path):
    """`dictionary` whose state is `tensors` exactly (same dtype, bit for bit; 16-bit floats
    upcast exactly to float32, see `compute_dtype`), in eval mode."""
    state = dictionary.state_dict()
    check_state(state, tensors, source)
    dtype = compute_dtype(tensors["W_dec"].dtype, source)
    tensors = {k: v.to(dtype) if v.dtype in HALF else v for k, v in tensors.items()}
    dictionary.to(dtype)
    for name, t in tensors.items():
        state[name] = t.clone() if t.is_floating_point() else t.to(state[name].dtype)
    dictionary.load_state_dict(state, assign=True)
    dictionary.provenance = dict(provenance)
    return dictionary.eval()


def make(architecture: str, fields: dict[str, Any], tensors: dict[str, Tensor],
         provenance: dict[str, Any], source: Path):
    """A registered dictionary built from config `fields` whose state is `tensors` exactly
    (same dtype, bit for bit)."""
    return fill(blank(architecture, fields, source), tensors, provenance, source)


def saelab_record(dictionary) -> dict[str, Any]:
    """What a foreign config keeps so that reading it back gives this dictionary exactly:
    architecture, config fields, scalar buffers and provenance."""
    scalars = {name: t.item() for name, t in dictionary.named_buffers() if t.ndim == 0}
    return {"architecture": dictionary.architecture, "config": to_dict(dictionary.cfg),
            "scalars": scalars, "provenance": dict(dictionary.provenance)}


def write_folder(path: str | Path, files: dict[str, dict[str, Tensor]],
                 cfg: tuple[str, dict[str, Any]]) -> Path:
    """A folder at `path` (replaced as a whole, atomically) holding one safetensors file per
    entry of `files` ({name: tensors}) and the config file `cfg` = (name, values)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.mkdir()
        for name, tensors in files.items():
            write_safetensors(tmp / name, tensors)
        write_json(tmp / cfg[0], cfg[1])
    return path
