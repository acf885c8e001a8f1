"""What the detection and fuzzing scorers share: a language model labels texts, a few per
prompt, with 1 or 0 given an explanation, and the score is the balanced accuracy of its labels.

As delphi's classifier scorers (`delphi/scorers/classifier/classifier.py`): the samples are
shuffled, shown `per_prompt` at a time, and the model answers with a list such as `[1, 0, 0]`.
A reply that cannot be read as a list of that length leaves those samples unlabelled (counted in
`unparsed`), never guessed; a score with no labelled sample is NaN. A client that can continue a
reply it is given (a local model: `prefill`) is given "[" as the start of its answer, which small
models otherwise ignore the format for.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Sequence
from typing import NamedTuple

from saelab.interpret.explain.clients import Client


class Classified(NamedTuple):
    """The labels a classifier gave and what they score."""

    score: float
    """Balanced accuracy: the mean of the recall on the positives and on the negatives (0.5 is
    chance); NaN when no sample was labelled."""
    predictions: list[bool | None]
    """Per sample, in the order given: the model's label (None where the reply was unreadable)."""
    unparsed: int
    """Samples left unlabelled."""


def parse_labels(reply: str, n: int) -> list[bool] | None:
    """`n` labels from a reply: the first [...] list of 0/1 of length n; else the first n of a
    list the reply opens with and runs on past n (small models do not stop); else exactly n
    standalone 0/1 digits once "Example i:" labels are taken out; None otherwise."""
    for match in re.findall(r"\[[^\[\]]*\]", reply):
        try:
            values = json.loads(match.replace("True", "1").replace("False", "0"))
        except ValueError:
            continue
        if isinstance(values, list) and len(values) == n and all(v in (0, 1) for v in values):
            return [bool(v) for v in values]
    run_on = re.match(r"\s*\[\s*([01](?:\s*,\s*[01])*)", reply)  # "[1, 0, 1, 0, 0, 1, 0, 1"
    if run_on and len(values := re.findall(r"[01]", run_on.group(1))) >= n:
        return [v == "1" for v in values[:n]]
    bare = re.sub(r"(?i)(example|text)\s*\d+\s*[:.)]?", " ", reply)  # "Example 2: 1" -> "1"
    digits = re.findall(r"(?<![\w.])[01](?![\w.])", bare)
    return [d == "1" for d in digits] if len(digits) == n else None


def balanced_accuracy(predictions: Sequence[bool | None], labels: Sequence[bool]) -> float:
    """Mean recall of the two classes over the labelled samples (NaN if a class has none)."""
    recalls = []
    for cls in (True, False):
        got = [p == cls for p, y in zip(predictions, labels) if y == cls and p is not None]
        recalls.append(sum(got) / len(got) if got else math.nan)
    return float(sum(recalls) / 2)


def classify(client: Client, system: str, explanation: str, texts: Sequence[str],
             labels: Sequence[bool], per_prompt: int = 5, seed: int = 0) -> Classified:
    """Ask `client` to label `texts` (shuffled, `per_prompt` at a time) under `system`'s rule;
    score against `labels`."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    predictions: list[bool | None] = [None] * len(texts)
    for start in range(0, len(order), per_prompt):
        chunk = order[start:start + per_prompt]
        shown = "\n".join(f"Example {i + 1}: {texts[j]}" for i, j in enumerate(chunk))
        user = (f"Explanation: {explanation}\n\n{shown}\n\nAnswer with a list of {len(chunk)} "
                f"numbers, one per example in order, 1 or 0, for instance "
                f"{json.dumps([1, 0] * (len(chunk) // 2) + [0] * (len(chunk) % 2))}.")
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        if getattr(client, "prefill", False):  # a local model starts its answer with "["
            messages.append({"role": "assistant", "content": "["})
        reply = client.generate(messages, max_tokens=8 + 4 * len(chunk))
        got = parse_labels(reply, len(chunk))
        for i, j in enumerate(chunk):
            predictions[j] = None if got is None else got[i]
    unparsed = sum(p is None for p in predictions)
    return Classified(balanced_accuracy(predictions, labels), predictions, unparsed)
