"""Greedy generation with and without an intervention, side by side, and what the clean model
reads in each continuation: the feature's activation on every generated token and the
continuation's perplexity (the fluency cost of steering).

The reading is one forward of the clean model over prompt + continuation. At the hookpoint the
dictionary reads, that is also what the steered model computed there before the edit (an edit
at a layer changes only what comes after it), so the activations shown are the concept as the
model carries it into the intervention, token by token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from saelab.capture import Capture
from saelab.capture.exclude import Exclusion
from saelab.errors import ConfigError
from saelab.steer.edits import CodeEdit, check_features
from saelab.steer.intervene import (Steering, check_width, dictionary_hookpoint, model_module,
                                    to_dictionary)


class Generation(NamedTuple):
    """One greedy continuation and the clean model's reading of it."""

    text: str
    """The continuation (without the prompt)."""
    tokens: list[int]
    """Its token ids."""
    str_tokens: list[str]
    """Each token as text."""
    activations: list[float]
    """The feature's code on each generated token (0 where the exclusion rule leaves it out)."""
    perplexity: float
    """exp of the clean model's mean next-token loss on the continuation, given the prompt."""

    @property
    def mean_activation(self) -> float:
        """Mean of `activations` (0 for an empty continuation)."""
        return sum(self.activations) / len(self.activations) if self.activations else 0.0


class Comparison(NamedTuple):
    """A prompt continued by the clean and by the steered model."""

    prompt: str
    """The prompt both continue."""
    feature: int
    """The feature whose activation the generations report."""
    clean: Generation
    """Without the intervention."""
    steered: Generation
    """With it."""

    def to_json(self) -> dict:
        """A JSON-ready dict: prompt, feature, and `clean` / `steered` texts, with each side's
        tokens, activations and perplexity under `clean_detail` / `steered_detail`."""
        return {"prompt": self.prompt, "feature": self.feature, "clean": self.clean.text,
                "steered": self.steered.text, "clean_detail": self.clean._asdict(),
                "steered_detail": self.steered._asdict()}


def tokenizer_of(lm, tokenizer=None):
    """The tokenizer given, else the LoadedModel's; a ConfigError when there is none."""
    tok = tokenizer if tokenizer is not None else getattr(lm, "tokenizer", None)
    if tok is None:
        raise ConfigError("generation needs the model's tokenizer: pass a LoadedModel from "
                          "saelab.models.load, or tokenizer=")
    return tok


@torch.no_grad()
def greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> list[int]:
    """Token ids of the greedy continuation of `prompt` (stops early at end of sequence)."""
    module = model_module(model)
    device = next(module.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
    if ids.shape[1] == 0:
        raise ConfigError("the prompt is empty: give some text to continue")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
        else tokenizer.eos_token_id
    out = module.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                          max_new_tokens=max_new_tokens, pad_token_id=pad,
                          temperature=None, top_p=None, top_k=None)
    return out[0, ids.shape[1]:].tolist()


@torch.no_grad()
def read(model, tokenizer, dictionary, prompt: str, continuation: Sequence[int], feature: int,
         hookpoint: str | None = None) -> Generation:
    """The clean model's reading of `prompt` + `continuation`: the feature's code on each
    continuation token and the continuation's perplexity."""
    module = model_module(model)
    check_features([int(feature)], dictionary.n_latents)
    hp = dictionary_hookpoint(dictionary, module, hookpoint)
    device = next(module.parameters()).device
    prompt_ids = tokenizer(prompt, return_tensors="pt").input_ids[0].tolist()
    ids = torch.tensor([prompt_ids + list(continuation)], device=device)
    n_prompt, n_new = len(prompt_ids), len(continuation)
    with Capture(module, [hp], stop_early=False) as cap:
        logits = module(input_ids=ids).logits[0].float()  # [T, vocab]
    act_TD = cap.acts[hp.key][0]
    check_width(dictionary, hp, act_TD)
    exclusion = Exclusion.from_json(getattr(dictionary, "provenance", {}).get("data_exclusion"))
    keep_T = exclusion.keep_mask(ids, {hp.key: act_TD[None]})[0]
    codes_T = dictionary.encode(to_dictionary(dictionary, act_TD))[:, feature]
    codes_T = codes_T.float().cpu() * keep_T.cpu()
    if n_new:
        logp = F.log_softmax(logits[n_prompt - 1:-1], dim=-1)  # predicts the continuation
        nll = -logp.gather(-1, ids[0, n_prompt:, None])[:, 0]
        ppl = math.exp(float(nll.mean()))
    else:
        ppl = float("nan")
    return Generation(text=tokenizer.decode(list(continuation), skip_special_tokens=True),
                      tokens=list(continuation),
                      str_tokens=[tokenizer.decode([t]) for t in continuation],
                      activations=[round(float(a), 6) for a in codes_T[n_prompt:]],
                      perplexity=ppl)


def generate(model, dictionary, prompt: str, edits: Sequence[CodeEdit] = (),
             feature: int | None = None, max_new_tokens: int = 32, hookpoint: str | None = None,
             tokenizer=None) -> Generation:
    """The greedy continuation of `prompt` under `edits` (none: the clean model), read by the
    clean model for `feature` (default: the first feature the edits name)."""
    tok = tokenizer_of(model, tokenizer)
    feature = _feature(edits, feature)
    if edits:
        with Steering(model, dictionary, edits, hookpoint):
            new = greedy(model, tok, prompt, max_new_tokens)
    else:
        new = greedy(model, tok, prompt, max_new_tokens)
    return read(model, tok, dictionary, prompt, new, feature, hookpoint)


def compare(model, dictionary, prompt: str, edits: Sequence[CodeEdit],
            feature: int | None = None, max_new_tokens: int = 32, hookpoint: str | None = None,
            tokenizer=None) -> Comparison:
    """`prompt` continued greedily by the clean model and under `edits`, side by side."""
    feature = _feature(edits, feature)
    Steering(model, dictionary, edits, hookpoint)  # refuses bad input before any generation
    clean = generate(model, dictionary, prompt, (), feature, max_new_tokens, hookpoint, tokenizer)
    steered = generate(model, dictionary, prompt, edits, feature, max_new_tokens, hookpoint,
                       tokenizer)
    return Comparison(prompt, feature, clean, steered)


def _feature(edits: Sequence[CodeEdit], feature: int | None) -> int:
    if feature is not None:
        return int(feature)
    if not edits:
        raise ConfigError("name the feature to read (feature=) when there are no edits")
    return edits[0].features[0]
