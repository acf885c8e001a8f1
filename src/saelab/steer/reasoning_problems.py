"""Simple problems for chains of thought, and the behaviour of each reasoning step.

    >>> problems = word_problems(64, seed=0)          # deterministic arithmetic word problems
    >>> problems[0].question, problems[0].answer
    >>> behaviour("Wait, let me check that again.")   # 'reflection'

RISE (Zhang et al. 2025, "Fantastic Reasoning Behaviors and Where to Find Them", arXiv
2512.23988) generates chains of thought on math benchmarks (MATH500, AIME) with reasoning models
and reads behaviours such as reflection and backtracking off the steps. A 135M instruct model
cannot do those benchmarks, so saelab writes its own small problems: one- and two-step
arithmetic stories whose answer is an integer, drawn from templates with a seeded generator (the
same seed gives the same problems on every machine). The behaviour of a step is read by keyword
rules (`BEHAVIOURS`), the supervised proxy the paper uses to name its unsupervised clusters.
"""

from __future__ import annotations

import random
import re
from typing import NamedTuple

from saelab.errors import ConfigError

NAMES = ("Tom", "Anna", "Ben", "Maria", "Sam", "Lena", "Omar", "Julia", "Ravi", "Emma")
ITEMS = ("apples", "pencils", "books", "marbles", "stickers", "cookies", "cards", "shells")


class Problem(NamedTuple):
    """An arithmetic word problem with an integer answer."""

    question: str
    """The problem as the user asks it."""
    answer: int
    """Its answer."""
    kind: str
    """The template it was drawn from ("add_sub", "times", "change", "share", "two_step")."""


def _add_sub(r: random.Random, who: str, item: str) -> Problem:
    a, b = r.randint(5, 40), r.randint(2, 30)
    c = r.randint(1, a + b - 1)
    return Problem(f"{who} has {a} {item}. {who} gets {b} more and then gives {c} away. How "
                   f"many {item} does {who} have now?", a + b - c, "add_sub")


def _times(r: random.Random, who: str, item: str) -> Problem:
    a, b = r.randint(2, 9), r.randint(3, 12)
    return Problem(f"{who} has {a} boxes with {b} {item} in each box. How many {item} does "
                   f"{who} have in total?", a * b, "times")


def _change(r: random.Random, who: str, item: str) -> Problem:
    price, count = r.randint(2, 9), r.randint(2, 6)
    paid = next(v for v in (10, 20, 50, 100) if v >= price * count)
    return Problem(f"One of the {item} costs {price} dollars. {who} buys {count} of them and "
                   f"pays with {paid} dollars. How much change does {who} get?",
                   paid - price * count, "change")


def _share(r: random.Random, who: str, item: str) -> Problem:
    friends, each = r.randint(2, 8), r.randint(2, 9)
    return Problem(f"{who} shares {friends * each} {item} equally among {friends} friends. How "
                   f"many {item} does each friend get?", each, "share")


def _two_step(r: random.Random, who: str, item: str) -> Problem:
    a, b, c = r.randint(2, 6), r.randint(3, 9), r.randint(1, 10)
    return Problem(f"{who} buys {a} bags of {item} with {b} in each bag, then finds {c} more. "
                   f"How many {item} does {who} have?", a * b + c, "two_step")


TEMPLATES = (_add_sub, _times, _change, _share, _two_step)


def word_problems(n: int, seed: int = 0) -> list[Problem]:
    """`n` problems drawn from the templates in turn, names, items and numbers from a
    `random.Random(seed)`: the same seed gives the same problems."""
    if n < 1:
        raise ConfigError(f"ask for at least one problem, got {n}")
    r = random.Random(seed)
    return [TEMPLATES[i % len(TEMPLATES)](r, r.choice(NAMES), r.choice(ITEMS)) for i in range(n)]


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> float | None:
    """The last number written in `text` (commas as thousands separators), or None."""
    found = _NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def is_correct(text: str, answer: int) -> bool:
    """Whether the last number of a chain of thought is the answer."""
    value = final_number(text)
    return value is not None and abs(value - answer) < 1e-9


BEHAVIOURS: dict[str, re.Pattern] = {
    "reflection": re.compile(r"\b(wait|check\w*|verif\w*|let me|double[- ]check|re-?check\w*|"
                             r"hmm|actually|mistake|make sure|confirm\w*|re-?calculat\w*)\b",
                             re.I),
    "conclusion": re.compile(r"\b(the answer is|therefore|in total|in conclusion|final answer|"
                             r"thus|so,? \w+ (has|have|gets|get|will)|the result is)\b", re.I),
    "computation": re.compile(r"\d\s*[-+*/×x÷]\s*\d|=\s*\d"),
    "planning": re.compile(r"\b(first|we need to|to find|let's|step \d|next|then we|to solve)\b",
                           re.I),
}
"""Keyword rules for the behaviour of a step, tried in this order (the first that matches
names the step; "other" when none does)."""


def behaviour(step: str) -> str:
    """The behaviour of one step (a sentence of a chain of thought): the first of `BEHAVIOURS`
    whose rule matches it, else "other"."""
    return next((name for name, rule in BEHAVIOURS.items() if rule.search(step)), "other")
