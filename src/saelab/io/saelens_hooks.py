"""What a SAELens folder written by saelab names its model and hook: the names SAEBench and
SAELens' users load by.

SAELens' `cfg.json` says which model and which activation an SAE reads in `metadata.model_name`
and `metadata.hook_name`. Tools that consume SAELens folders pass `model_name` to
`HookedTransformer.from_pretrained` (SAEBench's evaluations) or to transformers, and read the
layer from `hook_name` (SAEBench takes its first integer). saelab knows a model by its alias or
path and an activation by a module name of the Hugging Face model (`model.layers.15`), so the
writer translates:

- `model_name`: the model's Hugging Face Hub id, recorded when the model was loaded
  (`provenance["model_hub_id"]`) or derived from saelab's model name (`saelab.models.hub_id`);
  saelab's own name stays in `metadata.saelab_model`.
- `hook_name`: TransformerLens' hook name where TransformerLens knows the model (its
  `HookedTransformer` list, or the models its TransformerBridge is verified on) and the hookpoint
  has a TransformerLens counterpart; otherwise saelab's hookpoint as it is (a module name, which
  is what SAELens' `AutoModelForCausalLM` loader, `HookedProxyLM`, hooks). saelab's hookpoint
  stays in `metadata.saelab_hookpoint`, and `metadata.saelab_hook_names` says which convention
  `hook_name` follows: "HookedTransformer", "TransformerBridge", "module", or "TransformerLens"
  for a hookpoint that already was a TransformerLens name (read from a SAELens folder).
  `metadata.hook_layer` is the block index, and `metadata.model_class_name` is
  "HookedTransformer" where HookedTransformer loads the model.

Hookpoints with a TransformerLens counterpart, for the decoder layouts `model.layers.N` (Llama,
Mistral, Qwen, Gemma, SmolLM2), `transformer.h.N` (GPT-2, GPT-J, GPT-Neo) and
`gpt_neox.layers.N` (Pythia):

| saelab hookpoint | TransformerLens |
|---|---|
| `<layers>.N` (block output) | `blocks.N.hook_resid_post` |
| `<layers>.N:input` | `blocks.N.hook_resid_pre` |
| `<layers>.N.mlp` | `blocks.N.hook_mlp_out` |
| `<layers>.N.self_attn`, `.attn`, `.attention` | `blocks.N.hook_attn_out` |

The MLP and attention rows hold only for architectures whose sub-layer output is added to the
residual stream as it is (`PLAIN_SUBLAYERS`); Gemma 2 and 3, OLMo 2 and others normalise it
first, and TransformerLens' `hook_attn_out` / `hook_mlp_out` are then taken after that norm, so
those hookpoints keep their module names. `:delta`, `:z` and other sites keep theirs too.

Whether TransformerLens knows a model is read from its own registries (`supported_models.py`
and the TransformerBridge list `tools/model_registry/data/supported_models.json`), from the
installed package's files, without importing it (an import takes seconds). Without
transformer-lens installed, hook names stay module names and a warning says so.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import logging
import re
from pathlib import Path
from typing import Any, NamedTuple

from saelab.models import hub_id

log = logging.getLogger(__name__)

HOOKED = "HookedTransformer"
"""`hook_name` is TransformerLens' and HookedTransformer loads the model (SAEBench does)."""
BRIDGE = "TransformerBridge"
"""`hook_name` is TransformerLens' and only TransformerLens 3's TransformerBridge (SAELens'
SAETransformerBridge) loads the model; HookedTransformer does not know it."""
MODULE = "module"
"""`hook_name` is saelab's hookpoint: a module name of the Hugging Face model."""
AS_READ = "TransformerLens"
"""`hook_name` is saelab's hookpoint, which is already a TransformerLens hook name (a dictionary
read from a SAELens folder, say)."""

PLAIN_SUBLAYERS = frozenset({
    "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
    "GemmaForCausalLM", "OlmoForCausalLM", "GPT2LMHeadModel", "GPTJForCausalLM",
    "GPTNeoForCausalLM", "GPTNeoXForCausalLM"})
"""Architectures whose attention and MLP outputs enter the residual stream unchanged, so that the
module's output is TransformerLens' `hook_attn_out` / `hook_mlp_out`."""

_BLOCK = re.compile(r"^(?:model\.layers|transformer\.h|gpt_neox\.layers)\.(?P<layer>\d+)"
                    r"(?:\.(?P<sub>[\w.]+?))?(?::(?P<site>\w+))?$")
_TL_NAME = re.compile(r"^blocks\.(?P<layer>\d+)\.(?:[\w]+\.)*hook_\w+$")
_ATTENTION = ("self_attn", "attn", "attention")
_BRIDGE_VERIFIED = 1
"""`status` of a model TransformerLens' bridge registry lists as verified."""


class HookName(NamedTuple):
    """The hook a SAELens folder names for a saelab hookpoint."""

    name: str
    """`metadata.hook_name`: TransformerLens' hook name, or saelab's hookpoint as it is."""
    layer: int | None
    """The block index (`metadata.hook_layer`), where the hookpoint is inside a block."""
    convention: str
    """Which names `name` follows: HOOKED, BRIDGE, MODULE or AS_READ."""


def saelens_metadata(provenance: dict[str, Any]) -> dict[str, Any]:
    """The model and hook entries of SAELens' `metadata` for a dictionary's provenance."""
    model, hookpoint = provenance.get("model"), provenance.get("hookpoint")
    hub = provenance.get("model_hub_id") or hub_id(model)
    if model is not None and hub is None:
        log.warning("model %r has no known Hugging Face Hub id: SAELens' model_name is written "
                    "as %r (SAEBench and delphi load models by Hub id)", model, model)
    meta: dict[str, Any] = {"model_name": hub or model, "hook_name": hookpoint}
    if model is not None:
        meta["saelab_model"] = model
    if hookpoint is None:
        return meta
    meta["saelab_hookpoint"] = hookpoint
    named = hook_name(str(hookpoint), hub)
    meta.update(hook_name=named.name, saelab_hook_names=named.convention)
    if named.layer is not None:
        meta["hook_layer"] = named.layer
    if named.convention == HOOKED:
        meta["model_class_name"] = HOOKED
    return meta


def hook_name(hookpoint: str, model_hub_id: str | None) -> HookName:
    """TransformerLens' name for `hookpoint` of the model `model_hub_id` where TransformerLens
    knows the model and the hookpoint has a counterpart; else the hookpoint itself."""
    tl_name = _TL_NAME.match(hookpoint)
    if tl_name is not None:
        return HookName(hookpoint, int(tl_name["layer"]), AS_READ)
    found = _BLOCK.match(hookpoint)
    layer = int(found["layer"]) if found else None
    loader, architecture = transformer_lens_knows(model_hub_id)
    if found is None or loader is None:
        return HookName(hookpoint, layer, MODULE)
    sub, site = found["sub"], found["site"] or "output"
    plain = architecture in PLAIN_SUBLAYERS or (architecture is None and loader == HOOKED)
    name = None
    if sub is None and site in ("output", "input"):
        name = "hook_resid_post" if site == "output" else "hook_resid_pre"
    elif site == "output" and plain and sub == "mlp":
        name = "hook_mlp_out"
    elif site == "output" and plain and sub in _ATTENTION:
        name = "hook_attn_out"
    if name is None:
        return HookName(hookpoint, layer, MODULE)
    return HookName(f"blocks.{layer}.{name}", layer, loader)


def transformer_lens_knows(model_hub_id: str | None) -> tuple[str | None, str | None]:
    """(HOOKED, BRIDGE or None: which TransformerLens class loads the model; its architecture
    where TransformerLens' registry says it)."""
    if not model_hub_id:
        return None, None
    registry = _registry()
    if registry is None:
        return None, None
    official, bridge = registry
    architecture = bridge.get(model_hub_id)
    if model_hub_id.lower() in official:
        return HOOKED, architecture or bridge.get(official[model_hub_id.lower()])
    return (BRIDGE, architecture) if architecture is not None else (None, None)


@functools.lru_cache(maxsize=1)
def _registry() -> tuple[dict[str, str], dict[str, str]] | None:
    """(HookedTransformer's names and aliases, lower-cased -> official name; the bridge's
    verified models -> architecture), read from transformer-lens' files; None without it."""
    spec = importlib.util.find_spec("transformer_lens")
    if spec is None or not spec.submodule_search_locations:
        log.warning("transformer-lens is not installed: SAELens hook_name stays saelab's module "
                    "name (pip install transformer-lens to write TransformerLens' names)")
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    try:
        lists = _literals(root / "supported_models.py", ("OFFICIAL_MODEL_NAMES", "MODEL_ALIASES"))
        bridge = json.loads((root / "tools/model_registry/data/supported_models.json").read_text())
    except (OSError, ValueError, SyntaxError) as e:
        log.warning("could not read transformer-lens' model registry (%s): SAELens hook_name "
                    "stays saelab's module name", e)
        return None
    official = {name.lower(): name for name in lists.get("OFFICIAL_MODEL_NAMES", [])}
    for name, aliases in (lists.get("MODEL_ALIASES") or {}).items():
        official.update({alias.lower(): name for alias in aliases})
    verified = {m["model_id"]: m.get("architecture_id") for m in bridge.get("models", [])
                if m.get("status") == _BRIDGE_VERIFIED}
    return official, verified


def _literals(file: Path, names: tuple[str, ...]) -> dict[str, Any]:
    """The values of the module-level assignments `names` in `file`, read as Python literals
    (the file is parsed, not run)."""
    out = {}
    for node in ast.parse(file.read_text()).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            target, value = node.target.id, node.value
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            target, value = node.targets[0].id, node.value
        else:
            continue
        if target in names and value is not None:
            out[target] = ast.literal_eval(value)
    return out
