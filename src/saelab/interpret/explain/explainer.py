"""The explainer: a language model reads a feature's contexts, with the tokens it fires on marked,
and writes a one-sentence explanation.

As in Paulo et al. 2024, "Automatically Interpreting Millions of Features in Large Language
Models" (reference: EleutherAI/delphi, `delphi/explainers/default/` and
`delphi/explainers/explainer.py`): tokens whose activation exceeds a fraction of the context's
largest are wrapped in `<<` `>>` (a run of such tokens in one pair), each context is followed by
its marked tokens with their activations scaled to 0-10, and the model answers on a last line
that starts with `[EXPLANATION]:`. The prompt's wording is saelab's own. A reply without that
line (small models often skip it) gives its first sentence; a reply with no text at all is a
malformed answer, and an ExplainerError.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

from saelab.interpret.explain.clients import Client, ExplainerError, Messages
from saelab.interpret.explain.examples import Example

THRESHOLD = 0.3
"""Tokens above this fraction of a context's largest activation are marked."""

SYSTEM = (
    "You study what a single feature inside a language model responds to. You are shown short "
    "texts; in each, the tokens where the feature is active are wrapped like <<this>>, and the "
    "line after each text lists those tokens with the feature's strength from 0 to 10.\n"
    "Find what the marked tokens have in common, in themselves and in their surroundings. "
    "Answer with one short sentence that describes it, without mentioning the << >> marks and "
    "without listing alternatives. Put the sentence on the last line, after [EXPLANATION]:")


class Explanation(NamedTuple):
    """An explanation and the exchange that produced it."""

    text: str
    """The one-sentence explanation."""
    reply: str
    """The model's whole reply."""
    messages: Messages
    """The prompt it answered."""


def highlight(example: Example, threshold: float = THRESHOLD) -> str:
    """The example's text with the tokens above `threshold` x its largest activation marked
    `<<...>>` (consecutive ones inside one pair)."""
    top = max(example.activations, default=0.0)
    out, inside = [], False
    for piece, act in zip(example.str_tokens, example.activations):
        hot = top > 0 and act > threshold * top
        if hot and not inside:
            out.append("<<")
        elif inside and not hot:
            out.append(">>")
        inside = hot
        out.append(piece)
    return "".join(out) + (">>" if inside else "")


def strengths(example: Example, scale: float, threshold: float = THRESHOLD,
              limit: int = 8) -> str:
    """The marked tokens with their activation as 0-10 of `scale` (the feature's largest)."""
    top = max(example.activations, default=0.0)
    pairs = [(p, a) for p, a in zip(example.str_tokens, example.activations)
             if top > 0 and a > threshold * top][:limit]
    return ", ".join(f"{p.strip() or repr(p)!s} {round(10 * a / scale) if scale else 0}"
                     for p, a in pairs)


def prompt(examples: Sequence[Example]) -> Messages:
    """The explainer's chat messages for these contexts."""
    scale = max((max(e.activations, default=0.0) for e in examples), default=0.0)
    body = []
    for i, e in enumerate(examples, 1):
        body.append(f"Text {i}: {highlight(e)}\nActive: {strengths(e, scale)}")
    user = "\n\n".join(body) + "\n\nWhat does the feature respond to?"
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


MAX_WORDS = 40
"""An explanation longer than this (a model that rambles or repeats itself) is cut, with '...'."""


def parse(reply: str) -> str:
    """The explanation in a reply: the first sentence of what follows `[EXPLANATION]:` (its last
    occurrence), else of the whole reply, cut at MAX_WORDS words; markup and surrounding quotes
    removed."""
    found = re.findall(r"\[EXPLANATION\]\s*:?\s*(.+)", reply, flags=re.IGNORECASE)
    text = found[-1] if found else reply
    text = " ".join(text.replace("<<", "").replace(">>", "").split())
    text = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    words = text.split()
    if len(words) > MAX_WORDS:
        text = " ".join(words[:MAX_WORDS]) + " ..."
    return text.strip(" \"'*`")


def explain(client: Client, examples: Sequence[Example], max_tokens: int = 96,
            attempts: int = 2) -> Explanation:
    """One feature's explanation from `examples` (its activating contexts). A reply from which
    no text can be read is asked again, `attempts` times in all, then an ExplainerError."""
    if not examples:
        raise ExplainerError("no activating context to explain (the feature never fired in "
                             "the data read)")
    messages = prompt(examples)
    reply = ""
    for attempt in range(attempts):
        reply = client.generate(messages, max_tokens=max_tokens,
                                temperature=0.0 if attempt == 0 else 0.7)
        text = parse(reply)
        if text:
            return Explanation(text, reply, messages)
    raise ExplainerError(f"{client.name} gave no readable explanation in {attempts} attempts "
                         f"(last reply: {reply[:200]!r})")
