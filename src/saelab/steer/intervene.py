"""Interventions: a dictionary's codes edited during the forwards of a model, as a context
manager over the hookpoint the dictionary reads.

At each forward the activation x [B, T, d] at the hookpoint is encoded, the edits change the
codes, and x + decode(edited codes) - decode(codes) replaces x: the reconstruction with the
edited codes plus the dictionary's error term x - x_hat, kept so that the intervention changes
only what it names (SAELens' `use_error_term`, "Sparse Feature Circuits", Marks et al. 2024). When
the edits leave every code as it was, the activation is returned untouched, so a zero strength
or a scale of 1 gives the clean model's output bit for bit.

Positions the dictionary was not trained on (its provenance's exclusion rule: special tokens and
massive-norm rows, e.g. SmolLM2's first position) are left untouched, as splicing does.

Several edits of one intervention apply in order to the same codes (one encode). Interventions
nest: on different hookpoints or dictionaries they simply compose; a second one on the same
hookpoint reads the activation the first one wrote. The replacement itself goes through
`saelab.capture.patch`, the mechanism splicing uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from saelab.capture import Hookpoint, resolve
from saelab.capture.exclude import Exclusion
from saelab.capture.patch import patch
from saelab.errors import ConfigError
from saelab.steer.edits import CodeEdit, check_features


def model_module(model) -> nn.Module:
    """The nn.Module of `model`: itself, or a `saelab.models.LoadedModel`'s model."""
    return model.model if hasattr(model, "layer_template") else model


def dictionary_hookpoint(dictionary, model: nn.Module, hookpoint: str | None = None
                         ) -> Hookpoint:
    """The one module of `model` at which `dictionary` is read: `hookpoint`, else the one its
    provenance records. A ConfigError names what is missing or what the model lacks."""
    spec = hookpoint or getattr(dictionary, "provenance", {}).get("hookpoint")
    if spec is None:
        raise ConfigError("the dictionary records no hookpoint (it was not trained by saelab): "
                          "pass the hookpoint it reads, e.g. hookpoint='model.layers.15'")
    try:
        found = resolve(model, [spec])
    except ConfigError as e:
        trained = getattr(dictionary, "provenance", {}).get("model")
        on = f" (trained on {trained})" if trained else ""
        raise ConfigError(f"the dictionary reads hookpoint {spec!r}{on}, which this model lacks: "
                          f"{e}") from None
    if len(found) != 1:
        raise ConfigError(f"steering needs one module, but hookpoint {spec!r} matches "
                          f"{len(found)}; name a single module")
    return found[0]


def to_dictionary(dictionary, rows: Tensor) -> Tensor:
    """`rows` on the device and in the dtype of the dictionary's first parameter or buffer
    (float32 on the CPU for a dictionary that holds neither)."""
    held = next(iter([*dictionary.parameters(), *dictionary.buffers()]), None)
    if held is None:
        return rows.float()
    return rows.to(device=held.device, dtype=held.dtype)


def check_steerable(dictionary) -> None:
    """Refuse a dictionary that predicts another activation (a transcoder): its decoder writes
    somewhere other than where it reads, so 'edit the codes, decode, add back' has no meaning."""
    if "target" in getattr(dictionary, "needs", ()) or dictionary.d_in != dictionary.d_out:
        raise ConfigError(f"steering needs a dictionary that reconstructs its input (an SAE); a "
                          f"{getattr(dictionary, 'architecture', 'dictionary')} reads "
                          f"{dictionary.d_in} dimensions and predicts {dictionary.d_out} of "
                          f"another activation")


def check_width(dictionary, hookpoint: Hookpoint, act: Tensor) -> None:
    """Refuse an activation whose width is not the dictionary's input width."""
    if act.shape[-1] != dictionary.d_in:
        raise ConfigError(f"the dictionary reads {dictionary.d_in} dimensions, but hookpoint "
                          f"{hookpoint.key!r} of this model has {act.shape[-1]}: it was trained "
                          f"on another model or site")


class Steering:
    """While active, `edits` change `dictionary`'s codes at its hookpoint in every forward.

    >>> with Steering(lm, sae, [add(123, 4.0), ablate([7, 9])]):
    ...     lm.model.generate(ids, max_new_tokens=20)

    `readings` holds, per forward, the codes [B, T, F] of the features the edits name before
    the edits (0 at positions left untouched), in the order of `features`.
    """

    def __init__(self, model, dictionary, edits: Sequence[CodeEdit],
                 hookpoint: str | None = None, exclusion: Exclusion | None = None):
        self.model = model_module(model)
        self.dictionary = dictionary
        self.edits = list(edits)
        check_steerable(dictionary)
        check_features((f for e in self.edits for f in e.features), dictionary.n_latents)
        self.hookpoint = dictionary_hookpoint(dictionary, self.model, hookpoint)
        self.exclusion = exclusion if exclusion is not None else Exclusion.from_json(
            getattr(dictionary, "provenance", {}).get("data_exclusion"))
        self.features = list(dict.fromkeys(f for e in self.edits for f in e.features))
        self.readings: list[Tensor] = []
        self._tokens: Tensor | None = None
        self._stack: list = []

    def __enter__(self) -> "Steering":
        self._stack = [self.model.register_forward_pre_hook(self._record_tokens,
                                                             with_kwargs=True)]
        context = patch(self.model, self.hookpoint, self._replace)
        context.__enter__()
        self._stack.append(context)
        return self

    def __exit__(self, *exc) -> None:
        context = self._stack.pop()
        context.__exit__(*exc)
        self._stack.pop().remove()
        self._tokens = None

    def _record_tokens(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self._tokens = ids if isinstance(ids, Tensor) else None

    def keep_mask(self, act_BTD: Tensor) -> Tensor:
        """Bool [B, T]: positions the dictionary edits (those its exclusion rule keeps)."""
        tokens = self._tokens
        if tokens is None or tokens.shape != act_BTD.shape[:-1]:
            tokens = torch.full(act_BTD.shape[:-1], -1, dtype=torch.long, device=act_BTD.device)
        return self.exclusion.keep_mask(tokens, {self.hookpoint.key: act_BTD})

    @torch.no_grad()
    def _replace(self, act_BTD: Tensor) -> Tensor:
        check_width(self.dictionary, self.hookpoint, act_BTD)
        keep_BT = self.keep_mask(act_BTD)
        rows_ND = to_dictionary(self.dictionary, act_BTD[keep_BT])
        codes_NL = self.dictionary.encode(rows_ND)
        reading = act_BTD.new_zeros(*act_BTD.shape[:-1], len(self.features))
        reading[keep_BT] = codes_NL[:, self.features].to(reading)
        self.readings.append(reading)
        edited_NL = codes_NL
        for edit in self.edits:
            edited_NL = edit.apply(edited_NL)
        if torch.equal(edited_NL, codes_NL):
            return act_BTD  # nothing changed: the clean activation, bit for bit
        delta_ND = self.dictionary.decode(edited_NL) - self.dictionary.decode(codes_NL)
        new = act_BTD.clone()
        new[keep_BT] = act_BTD[keep_BT] + delta_ND.to(act_BTD)
        return new


def steer(model, dictionary, *edits: CodeEdit, hookpoint: str | None = None) -> Steering:
    """`Steering(model, dictionary, edits, hookpoint)`: `with steer(lm, sae, add(5, 4.0)): ...`"""
    return Steering(model, dictionary, edits, hookpoint)
