"""Writing SAELens' layout (see `saelab.io.saelens` for the layout and the reading side).

The variant's own declaration (`formats["saelens"]`, a `SaeLensMapping`) says which SAELens
architecture it is written as and how its tensors and fields are named; this module does what
every variant shares: W_enc transposed to [d_in, d_sae], cfg.json with the sizes, dtype,
`apply_b_dec_to_input`, `normalize_activations` and metadata. saelab's own architecture, config
and scalar buffers go under `metadata.saelab`, so that reading the folder back gives the saelab
dictionary it came from.

`metadata.model_name` is the model's Hugging Face Hub id and `metadata.hook_name` TransformerLens'
hook name where TransformerLens knows the model, so that SAEBench and SAELens' users load the
right model and hook; saelab's own names stay in `metadata.saelab_model` and
`metadata.saelab_hookpoint` (see `saelab.io.saelens_hooks`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch import Tensor

from saelab.errors import ConfigError, FormatError
from saelab.io._common import SAELAB_KEY, saelab_record, write_folder
from saelab.io.mapping import mapping_to, refuse_unfixed, renamed_out
from saelab.io.saelens import CFG, LAYOUT_VERSION, SPARSITY, TRANSPOSED, WEIGHTS
from saelab.io.saelens_hooks import saelens_metadata


def to_saelens(dictionary) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(cfg.json object, tensors) of `dictionary` in SAELens' layout; a FormatError naming what
    cannot be expressed there."""
    original = dictionary
    mapping = mapping_to(dictionary, "saelens")
    if mapping.written_as is not None:  # e.g. BatchTopK, written as its inference JumpReLU
        try:
            dictionary = mapping.written_as(dictionary)
        except ConfigError as e:
            raise FormatError(f"cannot write it to SAELens: {e}") from None
        mapping = mapping_to(dictionary, "saelens")
    refuse_unfixed(dictionary, mapping, "saelens")
    if mapping.centre is not None and dictionary.d_in != dictionary.d_out:
        raise FormatError(f"a saelab {original.architecture} with d_in={dictionary.d_in} != "
                          f"d_out={dictionary.d_out} has no SAELens counterpart")
    state = {k: v.detach().cpu() for k, v in dictionary.state_dict().items()}
    tensors = renamed_out(state, mapping.tensors, TRANSPOSED)
    if mapping.write is not None:
        mapping.write(dictionary, tensors)
    fields = {theirs: getattr(dictionary.cfg, ours) for theirs, ours in mapping.fields.items()}
    prov = original.provenance
    meta = {"sae_lens_version": LAYOUT_VERSION, "sae_lens_training_version": None,
            **saelens_metadata(prov), "dataset_path": prov.get("dataset"),
            SAELAB_KEY: saelab_record(original)}
    cfg = {"architecture": mapping.architecture, "d_in": dictionary.d_in,
           "d_sae": dictionary.n_latents, "dtype": str(tensors["W_dec"].dtype).replace("torch.", ""),
           "device": "cpu", "apply_b_dec_to_input": mapping.centre is not None,
           "normalize_activations": original.cfg.input_norm, "reshape_activations": "none",
           **fields, **mapping.written, "metadata": _json_safe(meta)}
    return cfg, tensors


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def save(dictionary, path: str | Path, sparsity: Tensor | None = None) -> Path:
    """Write `dictionary` as a SAELens folder at `path` (replaced as a whole, atomically)."""
    cfg, tensors = to_saelens(dictionary)
    files = {WEIGHTS: tensors}
    if sparsity is not None:
        files[SPARSITY] = {"sparsity": sparsity.detach().cpu()}
    return write_folder(path, files, (CFG, cfg))
