"""`saelab steer`: a dictionary's feature steers a model's greedy generation; the clean and the
steered continuations side by side, with the feature's activation on each generated token."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Literal

from saelab.config import option, required
from saelab.errors import ConfigError
from saelab.steer.edits import ablate, add, clamp
from saelab.steer.generate import Comparison, Generation, compare


@dataclass
class SteerConfig:
    """Generate greedily with and without a feature's intervention, side by side."""

    sae: str = required("Dictionary folder (any format saelab.load reads).", positional=True)
    feature: int = required("Index of the feature to steer with.")
    prompt: str = required("Text the model continues.")
    model: str | None = option(None, "Model to steer (packaged alias, folder or Hub name); "
                                     "default: the model the dictionary was trained on.")
    strength: float = option(4.0, "add: added to the feature's code; clamp: the value it is "
                                  "clamped to; ablate: ignored.")
    mode: Literal["add", "clamp", "ablate"] = option("add", "add (the decoder direction times "
                                                            "the strength), clamp, or ablate.")
    where: Literal["all", "active"] = option("all", "Edit every token, or only tokens where the "
                                                    "feature already fires.")
    max_new_tokens: int = option(32, "Tokens generated for each side.")
    hookpoint: str | None = option(None, "Hookpoint the dictionary reads; default: the one it "
                                         "was trained on.")
    json: bool = option(False, "Print one JSON object (prompt, feature, clean, steered, and "
                               "per-token details) instead of the table.")


def edit_for(cfg: SteerConfig):
    """The edit the command's mode names."""
    if cfg.mode == "add":
        return add(cfg.feature, cfg.strength, cfg.where)
    if cfg.mode == "clamp":
        return clamp(cfg.feature, cfg.strength, cfg.where)
    if cfg.mode == "ablate":
        return ablate(cfg.feature)
    raise ConfigError(f"unknown mode {cfg.mode!r}; modes: add, clamp, ablate")


def run_steer(cfg: SteerConfig, dictionary=None, lm=None) -> Comparison:
    """Load the dictionary and the model (unless given) and compare the two continuations."""
    from saelab.io import load as load_dictionary
    from saelab.models import load as load_model

    if cfg.max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be at least 1, got {cfg.max_new_tokens}")
    dictionary = dictionary if dictionary is not None else load_dictionary(cfg.sae)
    name = cfg.model or getattr(dictionary, "provenance", {}).get("model")
    if lm is None:
        if name is None:
            raise ConfigError("the dictionary records no model: pass --model")
        lm = load_model(name)
    return compare(lm, dictionary, cfg.prompt, [edit_for(cfg)], cfg.feature,
                   cfg.max_new_tokens, cfg.hookpoint)


def _side(title: str, g: Generation) -> list[str]:
    tokens = " ".join(f"{t!r}:{a:.2f}" for t, a in zip(g.str_tokens, g.activations))
    return [f"{title} (mean activation {g.mean_activation:.3f}, perplexity under the clean "
            f"model {g.perplexity:.2f})", f"  {g.text!r}", f"  per token: {tokens}"]


def format_comparison(c: Comparison, as_json: bool = False) -> str:
    """The comparison as the command prints it: a JSON object, or both sides with per-token
    activations."""
    if as_json:
        data = c.to_json()
        for side in ("clean_detail", "steered_detail"):  # JSON has no NaN
            if not math.isfinite(data[side]["perplexity"]):
                data[side]["perplexity"] = None
        return json.dumps(data, ensure_ascii=False)
    lines = [f"prompt: {c.prompt!r}", f"feature {c.feature}", ""]
    return "\n".join(lines + _side("clean", c.clean) + [""] + _side("steered", c.steered))
