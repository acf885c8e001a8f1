"""The first-letter task of the absorption family (`saelab.evaluate.absorption`, whose
docstring gives the method, SAEBench's reference files and where saelab departs): the words
taken from the model's own vocabulary, the in-context prompts and the activations at each word,
and the ground-truth letter probes. Its sizes and thresholds are `AbsorptionConfig`."""

from __future__ import annotations

import copy
import inspect
import logging
import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from torch import Tensor, nn
from tqdm.auto import tqdm

from saelab.capture import Capture, resolve

log = logging.getLogger(__name__)

LETTERS = "abcdefghijklmnopqrstuvwxyz"
"""The 26 classes of the first-letter task."""

@dataclass(frozen=True)
class AbsorptionConfig:
    """Sizes and thresholds of the absorption family (the thresholds are SAEBench's). The family
    reads `Absorption.config`: set it to another AbsorptionConfig to change them, e.g.
    `saelab.evaluate.family("absorption").config = AbsorptionConfig(words_per_letter=1000)`."""

    words_per_letter: int = 300
    """Words of each letter kept at most (a seeded random sample; SAEBench keeps all)."""
    min_words_per_letter: int = 20
    """A letter with fewer single-token words is skipped (counted in `letters_skipped`)."""
    test_fraction: float = 0.2
    """Share of each letter's words held out to score the probes and measure absorption."""
    icl_examples: int = 10
    """Examples "{word} has the first letter: {L}" before each word (SAEBench: 10)."""
    contexts: int = 8
    """Distinct sets of examples; each word is read after one of them, drawn at random."""
    template: str = "{word} has the first letter:"
    """The prompt of an example and of the word (SAEBench's); the answer follows it as " L"."""
    separator: str = "\n"
    """Between examples, and before the first (SAEBench prepends it)."""
    reuse_prefix: bool = True
    """Compute each context's examples once and reuse them (the model's key-value cache) for
    every word; False runs each full prompt."""
    batch_words: int = 64
    """Words per model forward."""
    min_probe_f1: float = 0.6
    """A letter is evaluated when its probe's F1 on the test words exceeds this."""
    min_letters: int = 1
    """Below this many evaluated letters the absorption figures are NaN (SAEBench: 20)."""
    max_k: int = 10
    """Largest number of latents of the k-sparse probes."""
    f1_jump: float = 0.03
    """k grows while the k-sparse probe's F1 rises by more than this (feature splitting)."""
    l1_decay: float = 0.01
    """L1 penalty of the ranking probe on the codes."""
    l1_epochs: int = 50
    """Epochs of the ranking probe (Adam, learning rate 0.01 decaying to 1e-5)."""
    l1_batch: int = 512
    """Rows per step of the ranking probe (SAEBench: 4096 over its whole vocabulary, hundreds
    of steps; 512 over the ~5,500 training words here gives about as many, 550)."""
    full_absorption_cos: float = 0.025
    """Full absorption: the top latent's cosine with the probe is at least this."""
    fraction_cos: float = 0.1
    """Absorption fraction: a latent that may absorb has at least this cosine with the probe."""
    projection_share: float = 0.4
    """The absorbing latents must carry at least this share of the probe projection."""
    max_absorbing: int = 3
    """At most this many latents absorb together (absorption fraction)."""
    seed: int = 0
    """Seed of the word sample, the split, the examples and the probes (the evaluation's seed
    replaces it when given)."""


# --- 1. the words ------------------------------------------------------------------------------
class Words(NamedTuple):
    """The first-letter task on a tokenizer's vocabulary."""

    token_ids: Tensor
    """Token id of each word [N] (int64)."""
    letters: Tensor
    """Index of its first letter in LETTERS [N] (int64)."""
    train: Tensor
    """True for the words the probes are fitted on, False for the test words [N] (bool)."""
    examples: Tensor
    """Token ids of the in-context examples [contexts, icl_examples] (int64), kept out of the
    task's words."""
    example_letters: Tensor
    """Their first letters [contexts, icl_examples] (int64)."""
    skipped: str
    """Letters with too few single-token words, e.g. "qxz"."""


def token_words(tokenizer) -> dict[int, str]:
    """Token id -> its text, for every token that reads as a space then ASCII letters (special
    tokens left out). A SentencePiece token whose decoding drops its "▁" gets its space back (as
    SAEBench's `convert_tokens_to_string`)."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids = [i for i in range(len(tokenizer)) if i not in special]
    texts = tokenizer.batch_decode([[i] for i in ids])
    pieces = tokenizer.convert_ids_to_tokens(ids)
    words = {}
    for i, text, piece in zip(ids, texts, pieces):
        if isinstance(piece, str) and piece.startswith("▁") and not text.startswith(" "):
            text = " " + text
        if len(text) > 1 and text[0] == " " and text[1:].isascii() and text[1:].isalpha():
            words[i] = text
    return words


def first_letter_words(tokenizer, config: AbsorptionConfig = AbsorptionConfig(),
                       generator: torch.Generator | None = None) -> Words:
    """The task's words: the examples of the prompts are drawn first (kept out of the task),
    then each letter with at least `min_words_per_letter` words keeps up to `words_per_letter`
    of them at random, `test_fraction` of which (at least one) are held out."""
    g = generator or torch.Generator().manual_seed(config.seed)
    words = token_words(tokenizer)
    ids = torch.tensor(sorted(words), dtype=torch.long)
    letters = torch.tensor([LETTERS.index(words[int(i)][1].lower()) for i in ids],
                           dtype=torch.long)
    contexts, icl = _example_budget(config, len(ids))
    n_examples = contexts * icl
    order = torch.randperm(len(ids), generator=g)
    example_at, rest = order[:n_examples], order[n_examples:]
    keep, train, skipped = [], [], ""
    for c in range(len(LETTERS)):
        members = rest[letters[rest] == c]
        if len(members) < config.min_words_per_letter:
            skipped += LETTERS[c]
            continue
        members = members[:config.words_per_letter]  # already in random order
        n_test = min(max(1, round(config.test_fraction * len(members))), len(members) - 1)
        keep.append(members)
        train.append(torch.arange(len(members)) >= n_test)
    keep_at = torch.cat(keep) if keep else ids[:0]
    shape = (contexts, icl)
    return Words(ids[keep_at], letters[keep_at],
                 torch.cat(train) if train else torch.zeros(0, dtype=torch.bool),
                 ids[example_at].view(shape), letters[example_at].view(shape), skipped)


def _example_budget(config: AbsorptionConfig, n_words: int) -> tuple[int, int]:
    """(contexts, examples per context): the config's, unless they would take more than a
    quarter of the tokenizer's words; then fewer contexts, down to one, then fewer examples
    (logged)."""
    contexts, icl = max(1, config.contexts), max(0, config.icl_examples)
    budget = n_words // 4
    if contexts * icl > budget:
        contexts = max(1, min(contexts, budget // max(1, icl)))
        icl = min(icl, budget // contexts)
        log.warning("absorption: the tokenizer has %d single-token words; the prompts use %d "
                    "context(s) of %d examples (a quarter of them at most)", n_words, contexts,
                    icl)
    return contexts, icl


# --- 2. the prompts and their activations ------------------------------------------------------
def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def prompt_prefixes(tokenizer, examples: Tensor, example_letters: Tensor,
                    config: AbsorptionConfig = AbsorptionConfig()) -> list[list[int]]:
    """Token ids of each context's prompt up to the word [contexts][T_c]: the tokenizer's
    leading special tokens (a BOS), then for each example separator + template with the example
    + " L" (its first letter, capital), then separator + the template's text before the word.
    Pieces are tokenized separately, so the word is its own token."""
    before, after = config.template.split("{word}")
    with_special = list(tokenizer(config.separator)["input_ids"])
    sep = _encode(tokenizer, config.separator)
    lead = with_special[:len(with_special) - len(sep)] if with_special[-len(sep):] == sep \
        else []
    head, tail = _encode(tokenizer, before), _encode(tokenizer, after)
    prefixes = []
    for ex_ids, ex_letters in zip(examples.tolist(), example_letters.tolist()):
        ids = list(lead)
        for word, letter in zip(ex_ids, ex_letters):
            ids += sep + head + [word] + tail + _encode(tokenizer, " " + LETTERS[letter].upper())
        prefixes.append(ids + sep + head)
    return prefixes


def _cache_argument(model: nn.Module) -> str:
    """The name under which the model's forward takes a key-value cache ("cache" in
    transformers >= 5.2x, "past_key_values" before)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _prefix_cache(model: nn.Module, prefix: Tensor) -> Any:
    """The key-value cache of one forward over prefix [1, T], or None when the model gives
    none (logged)."""
    try:
        out = model(input_ids=prefix, use_cache=True)
    except Exception as e:  # noqa: BLE001 - a model without a cache runs the full prompts
        log.info("absorption: the model gives no key-value cache (%s: %s); running full "
                 "prompts", type(e).__name__, e)
        return None
    for name in ("cache", "past_key_values"):
        cache = getattr(out, name, None) if not isinstance(out, dict) else out.get(name)
        if cache is not None and hasattr(cache, "batch_repeat_interleave"):
            return cache
    log.info("absorption: the model returns no key-value cache; running full prompts")
    return None


@torch.no_grad()
def word_activations(model: nn.Module, hookpoint: str, prefixes: Sequence[Sequence[int]],
                     context_of: Tensor, word_ids: Tensor, batch_words: int = 64,
                     reuse_prefix: bool = True, progress: bool = False) -> Tensor:
    """The activation at `hookpoint` [N, d] of each word's token after its context's prefix
    (prompt = prefixes[context_of[i]] + [word_ids[i]]). With `reuse_prefix`, each prefix runs
    once and its key-value cache serves every word; this is checked against the full prompt on
    the context's first word, and the full prompts are run where the two disagree (beyond
    1e-3 relative) or the model takes no cache."""
    hps = resolve(model, [hookpoint])
    key = hps[0].key
    device = next(model.parameters()).device
    prompts = [torch.tensor([list(p)], dtype=torch.long, device=device) for p in prefixes]
    caches = [_prefix_cache(model, p) if reuse_prefix else None for p in prompts]  # no hooks yet
    out = torch.zeros(0)
    bar = tqdm(total=len(word_ids), desc="absorption: prompts", disable=not progress)
    with Capture(model, hps) as cap:
        def full(c: int, ids: Tensor) -> Tensor:
            batch = torch.cat([prompts[c].expand(len(ids), -1), ids[:, None]], 1)
            return cap.run(input_ids=batch)[key][:, -1].float().cpu()

        def cached(c: int, ids: Tensor) -> Tensor:
            kv = copy.deepcopy(caches[c])
            kv.batch_repeat_interleave(len(ids))
            return cap.run(input_ids=ids[:, None], **{_cache_argument(model): kv}
                           )[key][:, -1].float().cpu()

        for c in range(len(prompts)):
            idx = (context_of == c).nonzero()[:, 0]
            if not len(idx):  # (an empty tensor splits into one empty chunk)
                continue
            if caches[c] is not None:
                caches[c] = _checked(cached, full, c, word_ids[idx[:1]].to(device), caches[c])
            for chunk in idx.split(batch_words):
                ids = word_ids[chunk].to(device)
                acts = cached(c, ids) if caches[c] is not None else full(c, ids)
                if not len(out):
                    out = torch.zeros(len(word_ids), acts.shape[1])
                out[chunk] = acts
                bar.update(len(chunk))
    bar.close()
    return out


def _checked(cached, full, c: int, first: Tensor, cache: Any) -> Any:
    """`cache` if reusing it reproduces the full prompt's activation of the word `first` [1],
    else None (logged)."""
    expected = full(c, first)
    try:
        got = cached(c, first)
    except Exception as e:  # noqa: BLE001 - any failure of the shortcut falls back to full prompts
        log.info("absorption: reusing the prompt prefix failed (%s: %s); running full prompts",
                 type(e).__name__, e)
        return None
    err = float((got - expected).norm() / expected.norm().clamp_min(1e-12))
    if err > 1e-3:
        log.info("absorption: the cached prefix gives another activation (relative error %.2g) "
                 "than the full prompt; running full prompts", err)
        return None
    return cache


# --- 3. the ground-truth probes ----------------------------------------------------------------
class LetterProbes(NamedTuple):
    """One-vs-rest logistic-regression probes, one per letter present."""

    letters: Tensor
    """The letter (index in LETTERS) of each probe [P] (int64)."""
    weight: Tensor
    """Probe directions in the units of the activations [P, d] (score = x . w + b)."""
    bias: Tensor
    """Their biases [P]."""

    def scores(self, x: Tensor) -> Tensor:
        """Scores [N, P] of the activations x [N, d]; > 0 means the probe detects its letter."""
        return x.float() @ self.weight.T + self.bias


def fit_letter_probes(x: Tensor, letters: Tensor, seed: int = 0) -> LetterProbes:
    """A probe per letter in `letters` [N] on x [N, d]: scikit-learn's logistic regression (L2,
    C = 1, classes weighted to balance, as SAEBench's pos_weight) on x divided by its root mean
    square (one scale for every dimension, so that the direction is not reweighted)."""
    scale = float(x.float().pow(2).mean().sqrt().clamp_min(1e-12))
    xs = (x.float() / scale).numpy()
    present = letters.unique()
    weight, bias = [], []
    for c in present.tolist():
        probe = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000,
                                   random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            probe.fit(xs, (letters == c).numpy())
        weight.append(torch.from_numpy(probe.coef_[0]).float() / scale)
        bias.append(float(probe.intercept_[0]))
    return LetterProbes(present, torch.stack(weight), torch.tensor(bias))
