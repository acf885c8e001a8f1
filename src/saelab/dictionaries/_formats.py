"""How a variant maps to other libraries' formats: the values of `Dictionary.formats`.

A variant declares, in its own file, which SAELens and sparsify dictionaries it is:

    formats = {"saelens": SaeLensMapping(architecture="topk", fields={"k": "k"},
                                         written={"rescale_acts_by_decoder_norm": False},
                                         read=unscale_by_decoder_norm),
               "sparsify": SparsifyMapping()}

`saelab.io.saelens` and `saelab.io.sparsify` read these declarations; a variant without an
entry for a format is refused by that format's reader and writer with the list of formats it
does have. What every variant of a format shares (SAELens' transposed `W_enc`, its
`apply_b_dec_to_input`, `normalize_activations`, metadata, sparsify's `cfg.json` keys) is done
by those modules; the declaration holds only what differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from torch import Tensor

from saelab.errors import FormatError

PLAIN = {"W_enc": "W_enc", "b_enc": "b_enc", "W_dec": "W_dec", "b_dec": "b_dec"}
"""SAELens tensor name -> saelab state name of an SAE with one encoder and one decoder."""
SPARSIFY_PLAIN = {"encoder.weight": "W_enc", "encoder.bias": "b_enc", "W_dec": "W_dec",
                  "b_dec": "b_dec"}
"""sparsify tensor name -> saelab state name (sparsify's encoder is an nn.Linear: its weight
has saelab's [n_latents, d_in] layout)."""

Shift = Callable[[dict[str, Tensor], Tensor], None]
"""Folds into a state (saelab names, in place) a shift [n_latents] of the encoder's
pre-activations: what a file whose encoder reads x, not x - b_dec, needs (shift = b_dec W_enc)."""
FieldsHook = Callable[[dict[str, Any], dict[str, Any]], None]
"""(the file's config, saelab config fields) -> None: completes or converts the fields in place,
or refuses the file with a FormatError."""
StateHook = Callable[[dict[str, Any], dict[str, Tensor]], dict[str, Tensor]]
"""(the file's config, state in saelab names) -> tensors to keep as the dictionary's
`exact_tensors` (foreign values its parameters cannot hold bit for bit); converts the state in
place, keeping the shapes."""
WriteHook = Callable[[Any, dict[str, Tensor]], None]
"""(dictionary, tensors in the file's names) -> None; changes the tensors in place."""


def shift_biases(*names: str) -> Shift:
    """A `Shift` that adds the shift to each named bias (the usual case: `b_enc`)."""

    def fold(state: dict[str, Tensor], shift: Tensor) -> None:
        for name in names:
            state[name] = state[name] + shift

    fold.__name__ = fold.__qualname__ = "shift_" + "_".join(names)  # how docs show it
    return fold


def inference_form(dictionary):
    """`dictionary.to_inference()`: the form a training-time variant is written as
    (`SaeLensMapping.written_as`)."""
    return dictionary.to_inference()


def whole_k(cfg: dict, fields: dict) -> None:
    """`k` as an int: SAELens' training-time BatchTopK configs store it as a float."""
    k = fields["k"]
    if isinstance(k, bool) or not isinstance(k, (int, float)) or k != int(k):
        raise FormatError(f"field 'k' is {k!r}, expected a whole number")
    fields["k"] = int(k)


@dataclass(frozen=True)
class SaeLensMapping:
    """How a variant maps to SAELens' format (SAELens 6.x: cfg.json + sae_weights.safetensors)."""

    architecture: str
    """SAELens' `architecture` read as this variant (and written, unless `written_as`)."""
    tensors: Mapping[str, str] = field(default_factory=lambda: dict(PLAIN))
    """SAELens tensor name -> saelab state name, both ways. SAELens' `W_enc` is [d_in, d_sae]
    and is transposed to saelab's [n_latents, d_in]; every other tensor keeps its shape."""
    fields: Mapping[str, str] = field(default_factory=dict)
    """SAELens cfg.json key -> saelab config field, both ways (besides d_in and d_sae)."""
    fixed: Mapping[str, Any] = field(default_factory=dict)
    """saelab config values this SAELens architecture implies: set on read; writing a dictionary
    whose config differs is refused, naming the field."""
    written: Mapping[str, Any] = field(default_factory=dict)
    """Constant cfg.json keys written (e.g. topk's rescale_acts_by_decoder_norm: false)."""
    centre: Shift | None = shift_biases("b_enc")
    """How the encoder absorbs b_dec when the file's encoder reads x (apply_b_dec_to_input
    false); None for dictionaries whose encoder reads x anyway (transcoders), which are written
    with apply_b_dec_to_input false and must have d_out == d_in otherwise."""
    read_fields: FieldsHook | None = None
    """Conversion of the config on read beyond `fields` and `fixed`."""
    read: StateHook | None = None
    """Conversion of the tensors on read beyond renaming (after the centring fold)."""
    write: WriteHook | None = None
    """Conversion on write beyond renaming."""
    written_as: Callable[[Any], Any] | None = None
    """The dictionary written in this one's place (its inference form, e.g. BatchTopK's
    JumpReLU), with that one's mapping; the saelab record in the metadata keeps this one, so
    saelab reads it back as it was."""


@dataclass(frozen=True)
class SparsifyMapping:
    """How a variant maps to EleutherAI sparsify's format (cfg.json + sae.safetensors, TopK
    activation, d_out == d_in)."""

    transcode: bool = False
    """sparsify's `transcode`: the dictionary predicts a module's output from its input."""
    skip_connection: bool = False
    """sparsify's `skip_connection`: a linear skip term W_skip [d_in, d_in]."""
    tensors: Mapping[str, str] = field(default_factory=lambda: dict(SPARSIFY_PLAIN))
    """sparsify tensor name -> saelab state name, both ways (nothing is transposed)."""
    fixed: Mapping[str, Any] = field(default_factory=dict)
    """saelab config values sparsify implies (e.g. activation "topk"): set on read; writing a
    dictionary whose config differs is refused, naming the field."""


FORMAT_NAMES = {"saelens": "SAELens", "sparsify": "sparsify"}
"""Keys of `Dictionary.formats` and the libraries they name."""
