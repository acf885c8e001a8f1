"""`saelab hookpoints MODEL`: every module a hookpoint can name, with the shape of its output.

The shapes come from one tiny forward (a few tokens; for a vision model, a blank image of a few
patches) with a hook on every module; a module the forward never reaches is listed without a
shape.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from saelab.capture import first_tensor, module_pattern
from saelab.config import option, required
from saelab.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class HookpointsConfig:
    """List the hookpoints of a model with their output shapes."""

    model: str = required("Packaged alias (smollm2-135m), local folder or Hugging Face name.",
                          positional=True)
    pattern: str | None = option(None, "Only modules whose name matches this name or pattern "
                                       "(`model.layers.*.mlp`; `*` one dotted part, `**` any).")
    n_tokens: int = option(4, "Tokens of the forward that measures the shapes (vision models: "
                              "patches, rounded up to a square grid).")


class HookpointInfo(NamedTuple):
    """One module of a model, as `saelab hookpoints` lists it."""

    name: str
    """Module name, usable as a hookpoint (`NAME` or `NAME:SITE`)."""
    kind: str
    """The module's class name (Linear, LlamaDecoderLayer, ...)."""
    shape: tuple[int, ...] | None
    """Shape of its output tensor in the measuring forward ([1, n_tokens, d] for a block of a
    language model); None when the forward never reaches it or it returns no tensor."""


@torch.no_grad()
def list_hookpoints(model: nn.Module, pattern: str | None = None,
                    n_tokens: int = 4) -> list[HookpointInfo]:
    """The modules of `model` (those matching `pattern`), in order, with their output shapes
    from one forward of `n_tokens` tokens (token id 1 each, batch of one); for a vision model
    (input `pixel_values`), of a blank image of about `n_tokens` patches."""
    regex = module_pattern(pattern) if pattern else None
    modules = [(n, m) for n, m in model.named_modules() if n and (
        regex is None or regex.fullmatch(n))]
    if not modules:
        raise ConfigError(f"no module of the model matches {pattern!r}; run without --pattern "
                          f"to see every name")
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [m.register_forward_hook(_recorder(n, shapes)) for n, m in modules]
    try:
        model(**_measuring_input(model, n_tokens))
    except (TypeError, ValueError, RuntimeError) as e:  # a model that takes no token ids
        log.warning("a forward on %d tokens failed (%s): shapes are not shown",
                    n_tokens, str(e).splitlines()[0] if str(e) else type(e).__name__)
    finally:
        for h in handles:
            h.remove()
    return [HookpointInfo(n, type(m).__name__, shapes.get(n)) for n, m in modules]


def _measuring_input(model: nn.Module, n_tokens: int) -> dict[str, torch.Tensor]:
    """Token ids, or for a vision model a blank image of ceil(sqrt(n_tokens))^2 patches."""
    if getattr(model, "main_input_name", None) != "pixel_values":
        return {"input_ids": torch.ones(1, n_tokens, dtype=torch.long)}
    config = model.config
    patch = getattr(config, "patch_size", 16)
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    side = patch * math.ceil(math.sqrt(n_tokens))
    channels = getattr(config, "num_channels", 3)
    return {"pixel_values": torch.zeros(1, channels, side, side)}


def _recorder(name: str, shapes: dict[str, tuple[int, ...]]):
    def hook(module, args, output):
        try:
            shapes[name] = tuple(first_tensor(output).shape)
        except TypeError:  # returns no tensor (a cache object, None, ...)
            pass
    return hook


def format_hookpoints(rows: list[HookpointInfo]) -> str:
    """A table: name, output shape, module class."""
    width = max(len(r.name) for r in rows)
    lines = []
    for r in rows:
        shape = "-" if r.shape is None else "[" + ", ".join(map(str, r.shape)) + "]"
        lines.append(f"{r.name:<{width}}  {shape:<18} {r.kind}")
    return "\n".join(lines)
