"""The capture step: a model's activations on a text or image source into an activation store
(`saelab capture`)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Literal

import torch

from saelab._paths import write_json
from saelab.capture import BATCH_CONTEXTS
from saelab.capture.exclude import NORM_FACTOR
from saelab.config import check, check_device, option, torch_device
from saelab.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class CaptureConfig:
    """Capture activations of a model on a text source into an activation store."""

    out: str = option("activations", "Folder of the activation store.")
    model: str = option("smollm2-135m", "Packaged alias, local folder or Hugging Face name.")
    hookpoints: list[str] = option([], "Module names or patterns, with an optional ':site' "
                                       "(output, input, delta); default: the middle layer. "
                                       "`saelab hookpoints MODEL` lists them.")
    layer: int | None = option(None, "Block index used when no hookpoint is given (default: "
                                     "the middle one).")
    dataset: str = option("wikipedia", "'wikipedia' (packaged), a .txt/.jsonl file or folder, "
                                       "or 'hf:NAME[:split]'; for a vision model: 'skimage', "
                                       "'lfw', 'digits', 'sklearn-samples', a folder of "
                                       "images, or 'hf:NAME[:split]'.")
    context_len: int = option(128, "Tokens per context.")
    n_tokens: int = option(250_000, "Tokens to capture (rounded to whole contexts; fewer, with a "
                                    "warning, when the text runs out).")
    skip_tokens: int = option(0, "Tokens of the dataset to skip first (to hold text out).")
    batch_contexts: int = option(BATCH_CONTEXTS, "Contexts per model forward.")
    shard_rows: int = option(1 << 16, "Rows per shard file.")
    dtype: Literal["float32", "float16", "bfloat16"] = option("float32", "Storage dtype.")
    device: str = option("cpu", "Device the model runs on: cpu, cuda, cuda:N or auto (cuda when "
                                "available). Under torchrun with cuda, each process uses the GPU "
                                "of its local rank.")
    model_dtype: Literal["float32", "float16", "bfloat16"] = option(
        "float32", "Dtype of the model's weights during capture (bfloat16 halves its memory, "
                   "and ran SmolLM2 2.8x faster on a CPU with AVX-512 BF16; activations are "
                   "stored in `dtype`).")
    norm_factor: float | None = option(NORM_FACTOR, "Leave out rows whose norm exceeds this "
                                                    "multiple of the median (massive "
                                                    "activations); None keeps all.")
    exclude_special: bool = option(True, "Leave out BOS, EOS and separator tokens.")
    image_rows: Literal["patches", "cls", "pooled", "all"] = option(
        "patches", "Vision models: the rows each image gives (every patch token, the CLS "
                   "token, the mean of the patch tokens, or every token).")
    n_images: int | None = option(None, "Vision models: images to capture (default: all).")
    skip_images: int = option(0, "Vision models: images of the dataset to skip first.")
    gradients: bool = option(False, "Also store d(next-token loss)/d(activation) as "
                                    "'<hookpoint>.grad' (one hookpoint, a causal LM), for "
                                    "gsae_gradient.")
    overwrite: bool = option(False, "Replace a store captured with other settings.")
    progress: bool = option(True, "Show progress bars.")

    def __post_init__(self) -> None:
        check(self.context_len >= 2, "context_len", "must be at least 2")
        check(self.n_tokens >= self.context_len, "n_tokens", "must be at least one context")
        check(self.skip_tokens >= 0, "skip_tokens", "must be >= 0")
        check_device(self.device)


def default_hookpoint(lm, layer: int | None) -> str:
    """The residual stream after block `layer` (default: the middle block)."""
    layer = lm.n_layers // 2 if layer is None else layer
    check(0 <= layer < lm.n_layers, "layer", f"must be in [0, {lm.n_layers - 1}], got {layer}")
    return lm.layer_template.format(layer)


def tokenise(lm, dataset: str, context_len: int, n_contexts: int, skip_contexts: int = 0):
    """Contexts [skip, skip + n) of `dataset` packed for `lm`'s tokenizer (fewer when the text
    runs out; none left after the skip is a DataError)."""
    from saelab.data import pack, read_documents

    corpus = pack(read_documents(dataset), lm.tokenizer, context_len,
                  max_contexts=skip_contexts + n_contexts)
    if corpus.tokens.shape[0] <= skip_contexts:
        raise DataError(f"{dataset} holds {corpus.tokens.shape[0] * context_len:,} tokens, none "
                        f"left after skipping {skip_contexts * context_len:,}; skip fewer "
                        f"tokens or use a larger text")
    return corpus._replace(tokens=corpus.tokens[skip_contexts:],
                           doc_ids=corpus.doc_ids[skip_contexts:])


def capture(cfg: CaptureConfig, lm=None):
    """Run a capture as configured; returns the ActivationStore. When the text runs out before
    `n_tokens`, logs a warning with the count captured, also recorded in the store's manifest
    (`requested_tokens`, `captured_tokens`). Started by torchrun, every process captures its
    share of the contexts into the one store (saelab.store.ranks)."""
    from saelab.train.distributed import init_from_env, is_initialized

    started = not is_initialized() and init_from_env(cfg.device)
    try:
        return _capture(cfg, lm)
    finally:
        if started:
            torch.distributed.destroy_process_group()


def _capture(cfg: CaptureConfig, lm):
    from saelab.models import load
    from saelab.store import capture_to_store
    from saelab.store.writer import DTYPES

    device = torch_device(cfg.device)
    if device.type == "cuda" and device.index is None and torch.distributed.is_initialized():
        device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU
    if lm is None:  # a model passed in stays where it is
        lm = load(cfg.model, dtype=DTYPES[cfg.model_dtype])
        lm.model.to(device)
    hookpoints = cfg.hookpoints or [default_hookpoint(lm, cfg.layer)]
    if lm.kind == "vision":
        return capture_images(cfg, lm, hookpoints)
    n_ctx = max(1, cfg.n_tokens // cfg.context_len)
    corpus = tokenise(lm, cfg.dataset, cfg.context_len, n_ctx, cfg.skip_tokens // cfg.context_len)
    store = capture_to_store(lm.model, corpus.tokens, hookpoints, cfg.out, model_name=lm.name,
                             doc_ids=corpus.doc_ids,
                             special_ids=corpus.special_ids if cfg.exclude_special else [],
                             norm_factor=cfg.norm_factor, batch_contexts=cfg.batch_contexts,
                             shard_rows=cfg.shard_rows, dtype=cfg.dtype, overwrite=cfg.overwrite,
                             progress=cfg.progress, gradients=cfg.gradients)
    if corpus.tokens.shape[0] < n_ctx:
        return _text_ran_out(store, cfg, corpus.tokens.numel())
    return store


def capture_images(cfg: CaptureConfig, lm, hookpoints: list[str]):
    """Capture a vision model on the images of `cfg.dataset` (saelab.data.images), preprocessed
    by the model's own processor, `cfg.image_rows` per image; returns the ActivationStore."""
    from saelab.data.images import IMAGE_SOURCES, read_images
    from saelab.data.pixels import pixel_values
    from saelab.store.images import capture_images_to_store

    if cfg.dataset == "wikipedia":
        raise DataError(f"{lm.name} is a vision model and 'wikipedia' is text: pass --dataset "
                        f"{', '.join(IMAGE_SOURCES)}, a folder of images, or hf:NAME")
    limit = None if cfg.n_images is None else cfg.skip_images + cfg.n_images
    items = read_images(cfg.dataset, limit=limit)[cfg.skip_images:]
    if not items:
        raise DataError(f"{cfg.dataset} holds no images after skipping {cfg.skip_images}")
    source = {"dataset": cfg.dataset, "skip_images": cfg.skip_images,
              "titles": [i.title for i in items], "labels": [i.label for i in items],
              "processor": json.loads(lm.processor.to_json_string())}
    return capture_images_to_store(
        lm.model, lambda start, stop: pixel_values(items[start:stop], lm.processor), len(items),
        hookpoints, cfg.out, model_name=lm.name, source=source, rows=cfg.image_rows,
        norm_factor=cfg.norm_factor, batch_images=cfg.batch_contexts, shard_rows=cfg.shard_rows,
        dtype=cfg.dtype, overwrite=cfg.overwrite, progress=cfg.progress)


def _text_ran_out(store, cfg: CaptureConfig, got: int):
    """Warn that `cfg.dataset` ran out at `got` tokens and note it in the store's manifest."""
    from saelab.store import ActivationStore

    asked = cfg.n_tokens // cfg.context_len * cfg.context_len
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return store  # rank 0 notes it in the manifest
    log.warning("the text of %s ran out: captured %s tokens of the %s asked for (after skipping "
                "%s)", cfg.dataset, f"{got:,}", f"{asked:,}", f"{cfg.skip_tokens:,}")
    manifest = json.loads((store.path / "manifest.json").read_text())
    manifest.update(requested_tokens=asked, captured_tokens=got)
    write_json(store.path / "manifest.json", manifest)
    return ActivationStore(store.path)
