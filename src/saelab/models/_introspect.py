"""Read the shape of a loaded transformers model: its kind, blocks, width and final norm."""

from __future__ import annotations

from typing import Any

from torch import nn

from saelab.errors import ConfigError

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def is_causal_lm(config: Any) -> bool:
    """Whether `config` describes a causal (next-token) LM rather than an encoder.

    The `architectures` the checkpoint was saved with decide; without them, a model type that
    transformers can load as a causal LM but not as a masked LM counts as causal (BERT-like
    encoders are in both mappings).
    """
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING

    architectures = getattr(config, "architectures", None) or []
    if architectures:
        return any(a.endswith(_CAUSAL_SUFFIXES) for a in architectures)
    kind = type(config)
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING and kind not in MODEL_FOR_MASKED_LM_MAPPING


def is_vision(model: nn.Module) -> bool:
    """Whether `model` takes images (its `main_input_name` is `pixel_values`: ViT, DINOv2,
    CLIP's vision tower, ...)."""
    return getattr(model, "main_input_name", None) == "pixel_values"


def vision_tower(model: nn.Module) -> nn.Module | None:
    """The image tower of an image-text dual encoder (CLIP's and SigLIP's `vision_model`), else
    None: saelab captures images from that tower alone."""
    tower = getattr(model, "vision_model", None)
    if isinstance(tower, nn.Module) and is_vision(tower) and hasattr(model,
                                                                        "get_image_features"):
        return tower
    return None


def layer_list(model: nn.Module, n_layers: int | None) -> tuple[str, int]:
    """Name and length of the ModuleList holding the model's blocks.

    The longest ModuleList whose length equals the config's layer count; the longest of all
    when the config gives no count. Ties go to the list with more parameters.
    """
    lists = [(name, mod) for name, mod in model.named_modules()
             if isinstance(mod, nn.ModuleList) and len(mod) > 0]
    if n_layers is not None:
        lists = [(name, mod) for name, mod in lists if len(mod) == n_layers]
    if not lists:
        raise ConfigError(f"cannot find the list of blocks of {type(model).__name__}"
                          + (f" (expected {n_layers} of them)" if n_layers else ""))
    name, mod = max(lists, key=lambda item: (len(item[1]), _n_params(item[1])))
    return name, len(mod)


def final_norm(model: nn.Module, layers_name: str) -> nn.Module | None:
    """The norm applied after the last block: the last norm module outside the blocks.

    Found by module order (Llama's `model.norm`, GPT-2's `transformer.ln_f`, OPT's
    `model.decoder.final_layer_norm`); None when the model has none.
    """
    found = None
    for name, mod in model.named_modules():
        inside_blocks = name == layers_name or name.startswith(layers_name + ".")
        if not inside_blocks and _is_norm(mod) and "embed" not in name.lower():
            found = mod
    return found


def d_model(model: nn.Module) -> int:
    """Width of the residual stream: the config's hidden size, else the embedding width."""
    size = getattr(model.config, "hidden_size", None)
    if isinstance(size, int):
        return size
    return int(model.get_input_embeddings().embedding_dim)


def n_layers(config: Any) -> int | None:
    """The config's layer count, when it states one."""
    count = getattr(config, "num_hidden_layers", None)
    return count if isinstance(count, int) else None


def _is_norm(mod: nn.Module) -> bool:
    return isinstance(mod, (nn.LayerNorm, nn.RMSNorm)) or "Norm" in type(mod).__name__


def _n_params(mod: nn.Module) -> int:
    return sum(p.numel() for p in mod.parameters())
