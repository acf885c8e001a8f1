"""Well-known pretrained releases, loadable by name when the Hub is reachable:
`saelab.load("gpt2-small-res-jb/blocks.8.hook_resid_pre")` or `saelab.io.registry.load_release`.

Each entry says where the files are (repo and path on the Hub) and in which format. Entries
taken from SAELens' pretrained directory (pretrained_saes.yaml) and sparsify's README.
Gemma Scope's own layout (`params.npz`) is read here too (`numpy.load(allow_pickle=False)`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from saelab.errors import FormatError
from saelab.io._common import expect, make
from saelab.io.detect import load_folder
from saelab.io.hub import resolve
from saelab.ops.jumprelu import log_exact


@dataclass(frozen=True)
class Release:
    """One pretrained dictionary on the Hub."""

    repo: str
    """Hub repository, owner/name."""
    path: str
    """Folder inside the repository."""
    format: str
    """saelab, saelens, sparsify, dictionary_learning or gemma_scope."""
    model: str
    """Model the dictionary was trained on."""
    note: str = ""
    """One line: what it is."""


RELEASES: dict[str, Release] = {
    **{f"gpt2-small-res-jb/blocks.{i}.hook_resid_pre": Release(
        "jbloom/GPT2-Small-SAEs-Reformatted", f"blocks.{i}.hook_resid_pre", "saelens",
        "gpt2-small", "Joseph Bloom's GPT-2 small residual-stream SAEs (24,576 latents)")
       for i in range(12)},
    "gemma-scope-2b-pt-res/layer_12/width_16k/canonical": Release(
        "google/gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_82", "gemma_scope",
        "gemma-2-2b", "Gemma Scope JumpReLU SAE, residual stream after layer 12, 16k latents"),
    "gemma-scope-2b-pt-res/layer_20/width_16k/canonical": Release(
        "google/gemma-scope-2b-pt-res", "layer_20/width_16k/average_l0_71", "gemma_scope",
        "gemma-2-2b", "Gemma Scope JumpReLU SAE, residual stream after layer 20, 16k latents"),
    **{f"sae-llama-3-8b-32x/layers.{i}": Release(
        "EleutherAI/sae-llama-3-8b-32x", f"layers.{i}", "sparsify", "meta-llama/Meta-Llama-3-8B",
        "EleutherAI's TopK SAEs on Llama 3 8B residual streams, expansion factor 32")
       for i in range(32)},
}


def names() -> list[str]:
    return sorted(RELEASES)


def load_release(name: str, cache_dir: str | None = None):
    """Download (or find in the Hub cache) the release `name` and load it."""
    if name not in RELEASES:
        raise FormatError(f"unknown release {name!r}; known releases: {', '.join(names())}")
    rel = RELEASES[name]
    folder = resolve(f"hf://{rel.repo}/{rel.path}", cache_dir=cache_dir)
    dictionary = (load_gemma_scope(folder) if rel.format == "gemma_scope"
                  else load_folder(folder, rel.format))
    dictionary.provenance.setdefault("model", rel.model)
    dictionary.provenance["release"] = name
    return dictionary


def load_gemma_scope(path: str | Path):
    """Gemma Scope's `params.npz` (W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec,
    threshold; a JumpReLU that reads x itself) as a saelab `jumprelu`."""
    path = Path(path)
    file = path / "params.npz"
    if not file.is_file():
        raise FormatError(f"{path}: no params.npz (Gemma Scope's layout)")
    try:
        with np.load(file, allow_pickle=False) as npz:
            t = {k: torch.from_numpy(np.array(npz[k])) for k in npz.files}
    except (ValueError, OSError) as e:
        raise FormatError(f"{file} is not a plain .npz of arrays ({e})") from None
    if "W_enc" not in t or t["W_enc"].ndim != 2:
        raise FormatError(f"{file}: no 2-d W_enc (found {sorted(t)})")
    d, f = t["W_enc"].shape
    expect(t, {"W_enc": (d, f), "W_dec": (f, d), "b_enc": (f,), "b_dec": (d,),
               "threshold": (f,)}, source=file)
    state = {"W_enc": t["W_enc"].t().contiguous(), "b_enc": t["b_enc"] + t["b_dec"] @ t["W_enc"],
             "W_dec": t["W_dec"], "b_dec": t["b_dec"], "log_threshold": log_exact(t["threshold"])}
    return make("jumprelu", {"d_in": d, "n_latents": f}, state,
                {"converted_from": "gemma_scope", "source": str(path)}, file)
