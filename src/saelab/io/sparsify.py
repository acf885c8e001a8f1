"""EleutherAI sparsify's layout (sparsify 1.x).

One folder per hookpoint (`layers.6`, `layers.6.mlp`, ...), each with `cfg.json` (`activation`,
`expansion_factor`, `normalize_decoder`, `num_latents`, `k`, `multi_topk`, `skip_connection`,
`transcode`, `d_in`) and `sae.safetensors` with `encoder.weight` [num_latents, d_in],
`encoder.bias` [num_latents], `W_dec` [num_latents, d_in], `b_dec` [d_in] and, with a skip
connection, `W_skip` [d_in, d_in]. The encoder is an `nn.Linear`, so its weight already has
saelab's [n_latents, d_in] layout: nothing is transposed.

sparsify -> saelab: each variant declares its (transcode, skip_connection) pair in its own file
(`formats["sparsify"]`, a `SparsifyMapping`): today a TopK SAE (`transcode` false) is `topk`; a
transcoder is `transcoder` or, with `skip_connection`, `skip_transcoder` (activation "topk").
sparsify's input and output have the same width, and an SAE with a skip connection or the
`groupmax` activation has no saelab counterpart. saelab's config is kept in cfg.json under `saelab` (sparsify drops unknown fields),
so reading a written folder back gives the saelab dictionary it came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from saelab.errors import FormatError
from saelab.dictionaries._formats import SparsifyMapping
from saelab.io._common import (
    SAELAB_KEY,
    blank,
    expect,
    field,
    make,
    read_json,
    read_tensors,
    saelab_record,
    write_folder,
)
from saelab.io.mapping import (
    declarations,
    expected_shapes,
    mapping_to,
    refuse_unfixed,
    renamed_in,
    renamed_out,
)

CFG = "cfg.json"
WEIGHTS = "sae.safetensors"


def is_sparsify(path: Path) -> bool:
    return (path / WEIGHTS).is_file()


def hookpoints(path: str | Path) -> list[str]:
    """Names of the sub-folders of `path` that hold a sparsify dictionary (a multi-hookpoint
    sparsify run or Hub repo)."""
    path = Path(path)
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if p.is_dir() and is_sparsify(p))


def load(path: str | Path):
    """Read a sparsify folder (one hookpoint) into a saelab dictionary."""
    path = Path(path)
    cfg = read_json(path / CFG)
    source = path / WEIGHTS
    d_in = field(cfg, "d_in", int, path / CFG)
    n = cfg.get("num_latents") or d_in * field(cfg, "expansion_factor", int, path / CFG)
    k = field(cfg, "k", int, path / CFG)
    if cfg.get("activation", "topk") != "topk":
        raise FormatError(f"{path / CFG}: activation {cfg['activation']!r}; saelab reads "
                          "sparsify's 'topk' activation only")
    name, mapping = reader(bool(cfg.get("transcode")), bool(cfg.get("skip_connection")),
                           path / CFG)
    fields: dict[str, Any] = {"d_in": d_in, "n_latents": n, "k": k, **mapping.fixed}
    tensors = read_tensors(source)
    expect(tensors, expected_shapes(blank(name, fields, path / CFG), mapping.tensors),
           source=source)
    state = renamed_in(tensors, mapping.tensors)
    provenance = {"converted_from": "sparsify", "source": str(path), "hookpoint": path.name}
    record = cfg.get(SAELAB_KEY)
    if isinstance(record, dict) and record.get("architecture") == name:
        fields = record.get("config") or fields
        provenance = record.get("provenance") or provenance
    return make(name, fields, state, provenance, source)


def reader(transcode: bool, skip: bool, source: Path) -> tuple[str, SparsifyMapping]:
    """The saelab variant that declares sparsify's (transcode, skip_connection), and its
    mapping."""
    found = {(m.transcode, m.skip_connection): (name, m)
             for name, m in declarations("sparsify").items()}
    if (transcode, skip) not in found:
        known = "; ".join(f"{name} (transcode {t}, skip_connection {s})"
                          for (t, s), (name, _) in sorted(found.items()))
        raise FormatError(f"{source}: a sparsify dictionary with transcode {transcode} and "
                          f"skip_connection {skip} has no saelab counterpart; saelab reads {known}")
    return found[(transcode, skip)]


def to_sparsify(dictionary) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(cfg.json object, tensors) of `dictionary` in sparsify's layout; a FormatError naming what
    cannot be expressed there."""
    mapping = mapping_to(dictionary, "sparsify")
    refuse_unfixed(dictionary, mapping, "sparsify")
    if dictionary.cfg.input_norm != "none":
        raise FormatError(f"sparsify has no per-input normalisation; this dictionary has "
                          f"input_norm={dictionary.cfg.input_norm!r} (write it to SAELens or "
                          "keep saelab's format)")
    if dictionary.d_in != dictionary.d_out:
        raise FormatError(f"sparsify dictionaries have equal input and output widths; this one "
                          f"has d_in={dictionary.d_in}, d_out={dictionary.d_out}")
    state = {k: v.detach().cpu() for k, v in dictionary.state_dict().items()}
    tensors = renamed_out(state, mapping.tensors)
    n, d = dictionary.n_latents, dictionary.d_in
    cfg = {"activation": "topk", "expansion_factor": max(1, n // d), "normalize_decoder": True,
           "num_latents": n, "k": dictionary.cfg.k, "multi_topk": False,
           "skip_connection": mapping.skip_connection, "transcode": mapping.transcode, "d_in": d,
           SAELAB_KEY: saelab_record(dictionary)}
    return cfg, tensors


def save(dictionary, path: str | Path) -> Path:
    """Write `dictionary` as a sparsify folder at `path` (replaced as a whole, atomically). For a
    multi-hookpoint layout, save each dictionary to `run/<hookpoint>`."""
    cfg, tensors = to_sparsify(dictionary)
    return write_folder(path, {WEIGHTS: tensors}, (CFG, cfg))
