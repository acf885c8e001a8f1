"""Which format a folder is in, and reading or writing a local folder in any of them
(`saelab.io.api.load` adds Hub addresses and release names).

| format | marker files |
|---|---|
| saelab | cfg.json + weights.safetensors |
| saelens | cfg.json + sae_weights.safetensors (+ sparsity.safetensors) |
| sparsify | cfg.json + sae.safetensors (one folder per hookpoint) |
| dictionary_learning | ae.pt (+ config.json) |
"""

from __future__ import annotations

from pathlib import Path

from saelab.errors import FormatError
from saelab.io import dictionary_learning, native, saelens, saelens_write, sparsify

FORMATS = ("saelab", "saelens", "sparsify", "dictionary_learning")
LAYOUTS = ("saelab (cfg.json + weights.safetensors), SAELens (cfg.json + "
           "sae_weights.safetensors), sparsify (cfg.json + sae.safetensors, or one such folder "
           "per hookpoint), dictionary_learning (ae.pt + config.json)")
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


def detect(path: str | Path) -> str:
    """The format of the dictionary folder `path` (one of FORMATS); a FormatError saying what
    was found and what each format expects otherwise."""
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path} does not exist")
    if path.is_file():
        hint = (" (a torch.save file: pass the folder that holds it as ae.pt, with its "
                "config.json, for dictionary_learning's format)"
                if path.suffix in _PICKLE_SUFFIXES else "")
        raise FormatError(f"{path} is a file; saelab loads dictionary folders{hint}. Expected "
                          f"one of: {LAYOUTS}")
    if (path / native.WEIGHTS).is_file():
        return "saelab"
    if saelens.is_saelens(path):
        return "saelens"
    if sparsify.is_sparsify(path):
        return "sparsify"
    if dictionary_learning.is_dictionary_learning(path):
        return "dictionary_learning"
    subs = sparsify.hookpoints(path)
    if subs:
        raise FormatError(f"{path} holds one sparsify dictionary per hookpoint ({', '.join(subs)}"
                          f"); pick one: saelab.load('{path}', hookpoint='{subs[0]}') or the "
                          f"folder {path / subs[0]}")
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    pickles = [n for n in found if n.endswith(_PICKLE_SUFFIXES)]
    hint = (f"; {', '.join(pickles)} would need unpickling, which saelab does not do except a "
            "dictionary_learning ae.pt read as plain tensors" if pickles else "")
    raise FormatError(f"{path} is in none of the formats saelab reads: found "
                      f"{', '.join(found[:12]) or 'an empty folder'}{hint}. Expected one of: "
                      f"{LAYOUTS}")


def load_folder(path: str | Path, format: str | None = None,
                norm_scaling_factor: float | None = None):
    """Load the dictionary in the local folder `path`, in `format` (detected when None).
    norm_scaling_factor: for SAELens' `expected_average_only_in` normalisation (see
    `saelens.load`)."""
    path = Path(path)
    kind = format or detect(path)
    if kind not in FORMATS:
        raise FormatError(f"unknown format {kind!r}; known: {', '.join(FORMATS)}")
    if kind == "saelab":
        return native.load(path)
    if kind == "saelens":
        return saelens.load(path, norm_scaling_factor=norm_scaling_factor)
    if kind == "sparsify":
        return sparsify.load(path)
    return dictionary_learning.load(path)


def save(dictionary, path: str | Path, format: str = "saelab") -> Path:
    """Write `dictionary` to the folder `path` in `format` (saelab, saelens or sparsify)."""
    writers = {"saelab": native.save, "saelens": saelens_write.save, "sparsify": sparsify.save}
    if format not in writers:
        raise FormatError(f"saelab writes {', '.join(writers)}, not {format!r}")
    return writers[format](dictionary, path)
