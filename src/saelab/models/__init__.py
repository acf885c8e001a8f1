"""Load a model and its tokenizer by packaged alias, local folder or Hugging Face Hub name.

    >>> lm = load("smollm2-135m")        # packaged: works offline
    >>> lm.layer_template.format(15)     # 'model.layers.15', a name from lm.model.named_modules()
    >>> lm.hub_id                        # 'HuggingFaceTB/SmolLM2-135M-Instruct'

Packaged aliases (see PACKAGED) load from pip packages without a network. Any other string is
a local folder or a Hub name loaded through transformers: AutoModelForCausalLM for causal LMs,
AutoModel for encoders and vision models. A vision model (one whose input is `pixel_values`:
ViT, DINOv2, ...; of an image-text model such as CLIP or SigLIP, its vision tower) comes with
its own image processor (AutoImageProcessor) instead of a tokenizer:

    >>> vit = load("vit-s14")            # packaged ViT-S/14 (DINOv2 layout): works offline
    >>> vit.kind, vit.layer_template     # ('vision', 'encoder.layer.{}')
    >>> vit.processor(images=[image], return_tensors="pt")["pixel_values"]   # [1, 3, 224, 224]
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from saelab.errors import ConfigError
from saelab.models import _hub, _introspect
from saelab.models._hub import hub_id
from saelab.models._packaged import PACKAGED, packaged_folder, resolve_alias, tokenizer_source
from saelab.models import _gemma  # noqa: F401,E402  (registers the packaged alias "gemma3-270m")

__all__ = ["PACKAGED", "ImageTextModel", "LoadedModel", "hub_id", "load", "load_image_text",
           "load_processor", "load_tokenizer"]

logger = logging.getLogger(__name__)


class LoadedModel(NamedTuple):
    """A model ready to capture activations from, with what saelab needs to know about it."""

    model: nn.Module
    """The model, in eval mode, with every parameter's requires_grad off."""
    tokenizer: Any
    """Its transformers tokenizer (None if the checkpoint ships none)."""
    name: str
    """The packaged alias, or the folder / Hub name the model was loaded from."""
    kind: str
    """"causal_lm" (next-token model with an unembedding), "encoder" (text encoder) or
    "vision" (image encoder: its input is `pixel_values`)."""
    n_layers: int
    """Number of blocks (decoder or encoder layers)."""
    d_model: int
    """Width of the residual stream."""
    layer_template: str
    """Module name of block i with `{}` for i, as in `model.named_modules()` ("model.layers.{}")."""
    unembed: torch.Tensor | None
    """Output embedding [vocab, d_model] of a causal LM (to read a direction as tokens); None for
    encoders. Shares storage with the model's weight."""
    final_norm: nn.Module | None
    """The norm applied to the last block's output before the unembedding, or None."""
    hub_id: str | None = None
    """The model's Hugging Face Hub id (for a packaged alias, the id of the model it packages;
    None for a local folder outside the Hugging Face cache). See `hub_id()`."""
    processor: Any = None
    """The image processor of a vision model (transformers' AutoImageProcessor: resize, crop,
    normalise into `pixel_values`); None for text models."""


def load(name_or_path: str, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load a model and its tokenizer: a packaged alias, a local folder or a Hub name.

    Raises MissingDependencyError (naming the pip command) when a packaged model's package is
    absent, and ConfigError when the name is neither a folder nor a model the Hub (or, offline,
    the local Hugging Face cache) has.
    """
    alias = resolve_alias(name_or_path)
    if alias is not None:
        folder, kwargs, name = str(packaged_folder(alias)), {}, alias
    else:
        kwargs = _hub.from_pretrained_kwargs(name_or_path)
        folder, name = _hub.local_path(name_or_path), name_or_path
    config = _load_config(folder, name, kwargs)
    causal = _introspect.is_causal_lm(config)
    model = _load_weights(folder, name, config, causal, dtype, kwargs)
    model.eval().requires_grad_(False)
    tower = _introspect.vision_tower(model)
    if tower is not None:  # CLIP, SigLIP: the image tower is the model images are captured from
        logger.info("%s is an image-text model: loading its vision tower", name)
        model = tower
    if _introspect.is_vision(model):
        return _describe(model, None, name, False)._replace(
            kind="vision", hub_id=hub_id(name_or_path),
            processor=_load_processor(folder, name, kwargs))
    tokenizer = _load_tokenizer(folder, name, kwargs, required=False)
    return _describe(model, tokenizer, name, causal)._replace(hub_id=hub_id(name_or_path))


class ImageTextModel(NamedTuple):
    """An image-text model whole (CLIP, SigLIP): both towers and their projections into the
    space they share, with its image processor and tokenizer."""

    model: nn.Module
    """The model (eval mode, no gradients): `get_image_features` and `get_text_features` give
    the two sides in the shared space."""
    processor: Any
    """Its image processor (AutoImageProcessor)."""
    tokenizer: Any
    """Its tokenizer."""
    name: str


def load_image_text(name_or_path: str) -> ImageTextModel:
    """Load an image-text model (CLIP, SigLIP, ...) by local folder or Hub name, both towers:
    what VL-SAE and SAE-V pair images and texts with. (`load` gives only its vision tower, the
    one images are captured from.) A model without image and text features is a ConfigError;
    none of the packaged models is one."""
    if resolve_alias(name_or_path) is not None:
        raise ConfigError(f"{name_or_path!r} is a packaged single-modality model; an image-text "
                          f"model (e.g. openai/clip-vit-base-patch32) loads by Hub name or "
                          f"folder")
    kwargs = _hub.from_pretrained_kwargs(name_or_path)
    folder = _hub.local_path(name_or_path)
    config = _load_config(folder, name_or_path, kwargs)
    model = _load_weights(folder, name_or_path, config, False, torch.float32, kwargs)
    if not all(hasattr(model, f) for f in ("get_image_features", "get_text_features")):
        raise ConfigError(f"{name_or_path!r} ({type(model).__name__}) is not an image-text model "
                          f"(it has no get_image_features / get_text_features); pass a CLIP- or "
                          f"SigLIP-like model")
    model.eval().requires_grad_(False)
    return ImageTextModel(model, _load_processor(folder, name_or_path, kwargs),
                          _load_tokenizer(folder, name_or_path, kwargs, required=True),
                          name_or_path)


def load_tokenizer(name_or_path: str) -> Any:
    """Load only the tokenizer of a model (fast: no weights are read)."""
    alias = resolve_alias(name_or_path)
    if alias is not None:
        folder, kwargs = tokenizer_source(alias)
    else:
        kwargs = _hub.from_pretrained_kwargs(name_or_path)
        folder = _hub.local_path(name_or_path)
    return _load_tokenizer(folder, alias or name_or_path, kwargs, required=True)


def load_processor(name_or_path: str) -> Any:
    """Load only the image processor of a vision model (no weights are read, except for a
    packaged model converted on first use)."""
    alias = resolve_alias(name_or_path)
    if alias is not None:
        folder, kwargs = str(packaged_folder(alias)), {}
    else:
        kwargs = _hub.from_pretrained_kwargs(name_or_path)
        folder = _hub.local_path(name_or_path)
    return _load_processor(folder, alias or name_or_path, kwargs)


def _load_config(folder: str, name: str, kwargs: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as e:
        raise _error(name, folder, e, kwargs) from None


def _load_weights(folder: str, name: str, config: Any, causal: bool, dtype: torch.dtype,
                  kwargs: dict[str, Any]) -> nn.Module:
    from transformers import AutoModel, AutoModelForCausalLM

    auto = AutoModelForCausalLM if causal else AutoModel
    logger.info("loading %s as %s", name, "a causal LM" if causal else "an encoder")
    try:
        return auto.from_pretrained(folder, config=config, dtype=dtype, **kwargs)
    except OSError as e:
        raise _error(name, folder, e, kwargs) from None


def _load_tokenizer(folder: str, name: str, kwargs: dict[str, Any], required: bool) -> Any:
    from transformers import AutoTokenizer

    if not required and Path(folder).is_dir() and not _has_tokenizer_files(Path(folder)):
        logger.warning("model folder %s holds no tokenizer: tokenizer is None", folder)
        return None
    try:
        return AutoTokenizer.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as e:
        if required:
            raise _error(name, folder, e, kwargs) from None
        logger.warning("model %s has no usable tokenizer (%s): tokenizer is None",
                       name, str(e).strip().splitlines()[0])
        return None


def _load_processor(folder: str, name: str, kwargs: dict[str, Any]) -> Any:
    """The image processor saved with a vision model (its own resize, crop and normalisation)."""
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as e:
        raise ConfigError(f"vision model {name!r} has no usable image processor "
                          f"(preprocessor_config.json): {str(e).strip().splitlines()[0]}. "
                          f"saelab preprocesses images with the model's own processor") \
            from None


def _has_tokenizer_files(folder: Path) -> bool:
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
             "tokenizer.model", "spiece.model")
    return any((folder / n).is_file() for n in names)


def _error(name: str, folder: str, error: Exception, kwargs: dict[str, Any]) -> ConfigError:
    if Path(folder).is_dir():
        return ConfigError(f"folder {folder} is not a model that transformers can load: {error}")
    return _hub.load_error(name, error, offline=bool(kwargs.get("local_files_only")))


def _describe(model: nn.Module, tokenizer: Any, name: str, causal: bool) -> LoadedModel:
    layers_name, count = _introspect.layer_list(model, _introspect.n_layers(model.config))
    unembed = None
    if causal and model.get_output_embeddings() is not None:
        unembed = model.get_output_embeddings().weight.detach()
    return LoadedModel(
        model=model, tokenizer=tokenizer, name=name,
        kind="causal_lm" if causal else "encoder",
        n_layers=count, d_model=_introspect.d_model(model),
        layer_template=layers_name + ".{}", unembed=unembed,
        final_norm=_introspect.final_norm(model, layers_name) if causal else None,
    )
