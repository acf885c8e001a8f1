"""Chains of thought and their step-level activations (the data of RISE).

    >>> traces = generate_traces(lm, problems, max_new_tokens=128)      # greedy, chat template
    >>> steps = step_vectors(lm, traces, "model.layers.15")             # one row per sentence
    >>> steps.vectors_ND.shape, steps.texts[0], steps.behaviours[0]

After Zhang et al. 2025, "Fantastic Reasoning Behaviors and Where to Find Them" (RISE, arXiv
2512.23988; no reference code of theirs was found): a chain of thought is split into
sentence-level steps and each step becomes one vector, the activations of its tokens at a layer
pooled (`saelab.capture.pooling`, mean by default). Where saelab departs: the problems are
small arithmetic stories (`reasoning_problems`) answered by an instruct model asked to reason
step by step, not a reasoning model's long traces; generation runs in left-padded batches,
whose greedy tokens can differ from one-at-a-time generation in rare near-ties (they are the
same for the same batch on the same machine). Positions of special tokens and of massive norm
(`saelab.capture.exclude`) are left out of each step's pool.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from saelab.capture import Capture, resolve
from saelab.capture.exclude import Exclusion
from saelab.capture.pooling import decoded_offsets, pool_segments, sentence_spans, token_ranges
from saelab.errors import ConfigError, DataError
from saelab.steer.reasoning_problems import Problem, behaviour

INSTRUCTION = "Solve the problem step by step, then check your answer."
"""Added after each question: asks for a chain of thought and for a check of it."""


class Trace(NamedTuple):
    """One greedy chain of thought."""

    problem: Problem
    """The problem it answers."""
    prompt_ids: list[int]
    """The chat-formatted prompt's token ids."""
    ids: list[int]
    """The generated token ids (up to, without, the end-of-turn token)."""
    text: str
    """The generated text."""
    steps: list[tuple[int, int]]
    """Character span of each sentence-level step in `text`."""
    ranges: list[tuple[int, int]]
    """Token range of each step in `ids` (empty where a step has no token of its own)."""

    @property
    def step_texts(self) -> list[str]:
        return [self.text[a:b] for a, b in self.steps]


class StepVectors(NamedTuple):
    """The pooled activation of every step of a set of traces."""

    vectors_ND: torch.Tensor
    """One row per step [N, d_model] (float32)."""
    trace: list[int]
    """Index of each row's trace."""
    position: list[int]
    """Index of each row's step within its trace."""
    texts: list[str]
    """Each step's text."""
    behaviours: list[str]
    """Each step's behaviour by keyword (`reasoning_problems.behaviour`)."""


def chat_prompt_ids(tokenizer, question: str, instruction: str = INSTRUCTION) -> list[int]:
    """Token ids of `question` (and `instruction`) as a user turn under the tokenizer's chat
    template, ready for the assistant's answer."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ConfigError("chains of thought need an instruct model with a chat template "
                          "(e.g. smollm2-135m)")
    content = f"{question} {instruction}".strip()
    text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
        tokenizer.eos_token_id
    if pad is None:
        raise ConfigError("the tokenizer has neither a pad nor an end-of-sequence token")
    return int(pad)


@torch.no_grad()
def generate_traces(lm, problems: Sequence[Problem], max_new_tokens: int = 128,
                    batch_size: int = 16, instruction: str = INSTRUCTION) -> list[Trace]:
    """Greedy chains of thought of `lm` (a `saelab.models.LoadedModel`, steered or not: wrap
    the call in a `Steering`) for `problems`, `batch_size` prompts a call (left-padded), each cut
    at its first end-of-turn token and split into sentence-level steps."""
    if max_new_tokens < 1 or batch_size < 1:
        raise ConfigError(f"max_new_tokens and batch_size must be at least 1, got "
                          f"{max_new_tokens} and {batch_size}")
    tok, model = lm.tokenizer, lm.model
    device = next(model.parameters()).device
    stops = {t for t in (tok.eos_token_id, tok.pad_token_id) if t is not None}
    pad = _pad_id(tok)
    traces = []
    for start in range(0, len(problems), batch_size):
        batch = list(problems[start:start + batch_size])
        prompts = [chat_prompt_ids(tok, p.question, instruction) for p in batch]
        width = max(map(len, prompts))
        ids_BT = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        mask_BT = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts],
                               device=device)
        out = model.generate(ids_BT, attention_mask=mask_BT, do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad,
                             temperature=None, top_p=None, top_k=None)
        for problem, prompt, row in zip(batch, prompts, out[:, width:].tolist()):
            cut = next((i for i, t in enumerate(row) if t in stops), len(row))
            traces.append(trace_of(tok, problem, prompt, row[:cut]))
    return traces


def trace_of(tokenizer, problem: Problem, prompt_ids: list[int], ids: list[int]) -> Trace:
    """A Trace from generated ids: the text, its sentence steps and their token ranges."""
    text, offsets = decoded_offsets(tokenizer, ids)
    steps = sentence_spans(text)
    return Trace(problem, prompt_ids, ids, text, steps, token_ranges(offsets, steps))


@torch.no_grad()
def step_vectors(lm, traces: Sequence[Trace], hookpoint: str, how: str = "mean",
                 exclusion: Exclusion | None = None) -> StepVectors:
    """The activation at `hookpoint` of every step of `traces`, pooled over the step's tokens
    (one forward of prompt + generation per trace). Steps with no kept token are left out."""
    (hp,) = _one(lm.model, hookpoint)
    exclusion = exclusion or Exclusion(special_ids=list(lm.tokenizer.all_special_ids))
    device = next(lm.model.parameters()).device
    rows, trace_of_row, position, texts = [], [], [], []
    with Capture(lm.model, [hp]) as cap:
        for t, trace in enumerate(traces):
            ids = torch.tensor([trace.prompt_ids + trace.ids], device=device)
            act_TD = cap.run(input_ids=ids)[hp.key][0].float()
            exclusion.calibrate(ids, {hp.key: act_TD[None]})
            keep_T = exclusion.keep_mask(ids, {hp.key: act_TD[None]})[0].cpu()
            n = len(trace.prompt_ids)
            usable = [(i, (a + n, b + n)) for i, (a, b) in enumerate(trace.ranges)
                      if b > a and keep_T[a + n:b + n].any()]
            if not usable:
                continue
            rows.append(pool_segments(act_TD, [r for _, r in usable], how, keep_T).cpu())
            trace_of_row += [t] * len(usable)
            position += [i for i, _ in usable]
            texts += [trace.step_texts[i] for i, _ in usable]
    if not rows:
        raise DataError(f"the {len(traces)} traces hold no step to pool: generate longer "
                        f"chains of thought")
    return StepVectors(torch.cat(rows), trace_of_row, position, texts,
                       [behaviour(s) for s in texts])


def _one(model, hookpoint: str):
    found = resolve(model, [hookpoint])
    if len(found) != 1:
        raise ConfigError(f"hookpoint {hookpoint!r} matches {len(found)} modules; name one")
    return found


@torch.no_grad()
def perplexity(lm, trace: Trace) -> float:
    """exp of the clean model's mean next-token loss on the trace's generated tokens, given its
    prompt (NaN for an empty trace): the fluency of a (steered) chain of thought."""
    if not trace.ids:
        return math.nan
    device = next(lm.model.parameters()).device
    ids = torch.tensor([trace.prompt_ids + trace.ids], device=device)
    logits = lm.model(input_ids=ids).logits[0].float()
    n = len(trace.prompt_ids)
    logp = F.log_softmax(logits[n - 1:-1], dim=-1)
    return math.exp(float(-logp.gather(-1, ids[0, n:, None]).mean()))
