"""Feature absorption on the first-letter task ("A is for Absorption: Studying Feature Splitting
and Absorption in Sparse Autoencoders", Chanin, Wilken-Smith, Dulka, Bhatnagar, Golechha and
Bloom 2024), as SAEBench computes it (Karvonen et al. 2025, "SAEBench: A Comprehensive
Benchmark for Sparse Autoencoders in Language Model Interpretability"; its absorption fraction
is Demian Till's).

Absorption: a latent that seems to track a feature (here "the token starts with the letter L")
fails to fire on some tokens that have it, because a more specific latent (e.g. one for the token
" short") fires instead and carries the feature's direction in its decoder. The steps:

1. The task comes from the model's own vocabulary: every token that reads as a space then
   ASCII letters (" cat") is a word, filed under its first letter. A letter with fewer than
   `min_words_per_letter` such tokens is skipped (`letters_skipped`); the rest are sampled down
   to `words_per_letter` each and split into train and test words per letter.
2. Each word is read in an in-context prompt, SAEBench's template: ten examples
   "{word} has the first letter: {L}", each on a line of its own, then a line with the word;
   the activation at the dictionary's hookpoint is read at the word's token.
3. A logistic-regression probe per letter (one vs the rest, balanced classes) on the training
   words' activations gives the letter's direction; `probe_accuracy` is the 26-way accuracy on
   the test words (the letter whose probe scores highest), `probe_f1` the mean one-vs-rest F1.
4. The letter's main latents: latents ranked by an L1-penalised probe on the codes; k-sparse
   probes on the top k = 1, 2, ... latents; k grows while the test F1 jumps by more than
   `f1_jump` (feature splitting: each extra latent covers part of the letter).
5. On each test word of the letter that its probe detects (score > 0), with x its activation,
   p the unit probe direction, a_i the codes and d_i the decoder rows: the probe projection
   x.p is compared with the latents' projections a_i (d_i.p). The absorption fraction is the
   share of it carried by up to three other latents aligned with the probe (cosine >= 0.1)
   where the main latents fall short; a full absorption is a word on which no main latent
   fires and one other latent aligned with the probe (cosine >= 0.025) carries at least 40%
   of x.p (a false negative of the main latents taken over by another latent).
6. Letters whose probe reaches F1 > `min_probe_f1` are evaluated: their rates over the
   detected words are averaged over letters.

Steps 1-3, the task itself, are `saelab.evaluate.first_letter`; this module does 4-6 and the
family.

Reference code (github.com/adamkarvonen/SAEBench, read at commit 8042bb3, the same files as the
sae-bench 0.6.0 wheel): `sae_bench/evals/absorption/vocab.py` (`get_alpha_tokens`),
`prompting.py` (`create_icl_prompt`, `first_letter`), `probing.py` (`train_multi_probe`,
`create_dataset_probe_training`), `k_sparse_probing.py` (`train_k_sparse_probes`,
`build_metrics_df`, `add_feature_splits_to_metrics_df`), `feature_absorption.py`
(`get_stats_and_likely_false_negative_tokens`), `feature_absorption_calculator.py`
(`FeatureAbsorptionCalculator.calculate_absorption`, `_is_full_absorption`), `main.py`
(`run_eval`, `_aggregate_results_df`) and `eval_config.py` (the defaults kept here).

Where saelab departs, and why:

- Size: SAEBench uses the whole vocabulary (31,586 words for SmolLM2's tokenizer) with one
  prompt each; here at most `words_per_letter` words per letter (300: 6,911 words for
  SmolLM2), so that it runs in about 40 s of one CPU core on SmolLM2-135M with a 4,608-latent
  SAE (25 s of model forwards, 15 s of probes). Train and test words are split per letter.
- Words: only tokens with a leading space (SAEBench also takes word pieces without one, whose
  "first letter" is the middle of a word). The prompt is built from token ids, so each word is
  exactly its one token (SAEBench tokenizes the prompt text and checks the lengths agree).
- Prompts: `contexts` (8) random sets of ten examples, shared by the words assigned to each,
  instead of fresh examples for every word; the shared prefix is computed once and reused for
  every word (the model's key-value cache), which makes the model pass about 80 times cheaper.
  Each reuse is checked against the full prompt on the first word of each context, and the full
  prompts are run when they disagree or the model takes no cache. The examples are words kept
  out of the task. SAEBench reads position -6 of the full prompt, the word's token; the rest of
  the prompt cannot change it in a causal model, so prompts end at the word.
- Probes: scikit-learn's logistic regression (L2, C = 1, balanced classes, on activations
  divided by their root mean square) instead of SAEBench's 50 epochs of Adam on the same
  loss. The L1 ranking probe on the codes is SAEBench's (Adam, 50 epochs, L1 0.01) with
  batches of 512 instead of 4,096: over the fewer words here, 4,096 gives two steps an epoch,
  and Adam then moves every weight by about the same amount, so the ranking is left to the
  initialisation (on SmolLM2, the top latent's F1 halved).
- The absorbing test is run on the same test activations the probes were scored on; SAEBench
  builds the prompts of those words anew with other random examples.
- A latent's projection on the probe is a_i (d_i.p), its contribution to the reconstruction;
  SAEBench's a_i cos(d_i, p) is the same for unit-norm decoder rows and otherwise ignores the
  norm. The dictionary's decoder is taken as linear (x_hat = codes W_dec + b_dec).
- SAEBench gives no result when fewer than 20 letters have a probe with F1 > 0.6; here the
  figures are averaged over the letters that do (`letters_evaluated` says how many) and are
  NaN only below `min_letters` (default 1). SmolLM2-135M spells worse than the >= 2B models
  SAEBench recommends.

Parity: `absorption_of_words` reproduces `FeatureAbsorptionCalculator.calculate_absorption`
(tests/evaluate/test_absorption.py runs SAEBench's own class, from the sae-bench wheel, on the
same tensors, and `select_main_latents` against its `add_feature_splits_to_metrics_df`). The
rest of SAEBench's absorption pipeline cannot run here: it needs TransformerLens models and
SAELens SAEs, which are not dependencies.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import warnings
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Sequence

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from torch import Tensor, nn

from saelab._paths import atomic_path
from saelab.capture import resolve
from saelab.capture.exclude import Exclusion
from saelab.errors import ConfigError
from saelab.evaluate._base import Context, Family
from saelab.evaluate._pooled import tokenizer_for
from saelab.evaluate._registry import register
from saelab.evaluate.first_letter import (
    LETTERS,
    AbsorptionConfig,
    LetterProbes,
    first_letter_words,
    fit_letter_probes,
    prompt_prefixes,
    word_activations,
)

log = logging.getLogger(__name__)

EPS = 1e-8
"""A latent fires when its code is at least this (SAEBench's EPS in the calculator)."""



# --- 4. the main latents -----------------------------------------------------------------------
def rank_latents(codes: Tensor, letters: Tensor, classes: Tensor,
                 config: AbsorptionConfig = AbsorptionConfig()) -> Tensor:
    """Weights [P, L] of SAEBench's L1-penalised multi-probe on the codes [N, L] (one logistic
    output per letter of `classes`, BCE with positives weighted by negatives / positives, Adam
    at 0.01 decaying exponentially to 1e-5 over `l1_epochs`, weight decay 1e-6, plus `l1_decay`
    x the mean over probes of the L1 norm of the weights); a letter's latents rank by weight."""
    g = torch.Generator().manual_seed(config.seed)
    y = (letters[:, None] == classes[None, :]).float()  # [N, P]
    n_latents = codes.shape[1]
    bound = 1 / math.sqrt(n_latents)  # nn.Linear's default initialisation
    w = ((torch.rand(len(classes), n_latents, generator=g) * 2 - 1) * bound).requires_grad_()
    b = ((torch.rand(len(classes), generator=g) * 2 - 1) * bound).requires_grad_()
    pos = y.sum(0)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=(len(y) - pos) / pos.clamp_min(1))
    opt = torch.optim.Adam([w, b], lr=0.01, weight_decay=1e-6)
    gamma = math.exp(math.log(1e-5 / 0.01) / max(1, config.l1_epochs))
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=gamma)
    with torch.enable_grad():
        for _ in range(config.l1_epochs):
            for idx in torch.randperm(len(y), generator=g).split(config.l1_batch):
                opt.zero_grad()
                loss = loss_fn(codes[idx] @ w.T + b, y[idx])
                loss = loss + config.l1_decay * w.abs().sum(-1).mean()
                loss.backward()
                opt.step()
            sched.step()
    return w.detach()


def k_sparse_f1(codes_train: Tensor, y_train: Tensor, codes_test: Tensor, y_test: Tensor,
                ranking: Tensor, max_k: int) -> tuple[list[Tensor], list[float]]:
    """For k = 1 .. max_k: the top-k latents of `ranking` [L] (largest weights) and the test F1
    of a logistic regression on their codes (max_iter 500, balanced classes; SAEBench's
    `train_k_sparse_probes` and `build_metrics_df`)."""
    feats, f1s = [], []
    for k in range(1, min(max_k, len(ranking)) + 1):
        top = ranking.topk(k).indices
        probe = LogisticRegression(max_iter=500, class_weight="balanced")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            probe.fit(codes_train[:, top].numpy(), y_train.numpy())
        pred = (codes_test[:, top].numpy() @ probe.coef_[0] + probe.intercept_[0]) > 0
        feats.append(top)
        f1s.append(float(f1_score(y_test.numpy(), pred, zero_division=0)))
    return feats, f1s


def select_main_latents(feats: Sequence[Tensor], f1s: Sequence[float],
                        f1_jump: float = 0.03) -> Tensor:
    """The main latents of a letter: those of the largest k reached while each step raises the
    F1 by more than `f1_jump` (SAEBench's `add_feature_splits_to_metrics_df`)."""
    best, main = -100.0, feats[0][:0] if feats else torch.zeros(0, dtype=torch.long)
    for top, f1 in zip(feats, f1s):
        if f1 <= best + f1_jump:
            break
        best, main = f1, top
    return main


# --- 5. absorption on the words ----------------------------------------------------------------
class WordAbsorption(NamedTuple):
    """Absorption of each word (SAEBench's `WordAbsorptionResult`, vectorised)."""

    fraction: Tensor
    """Absorption fraction in [0, 1] [N]."""
    full: Tensor
    """Full absorption: no main latent fires and one other latent carries the probe [N]
    (bool)."""
    main_fired: Tensor
    """Whether any main latent fires [N] (bool)."""


def absorption_of_words(x: Tensor, codes: Tensor, decoder: Tensor, probe: Tensor,
                        main: Tensor, config: AbsorptionConfig = AbsorptionConfig()
                        ) -> WordAbsorption:
    """Absorption of the words with activations x [N, d] and codes [N, L], for a letter whose
    probe direction is `probe` [d] and main latents `main` [M], the dictionary's decoder rows
    being `decoder` [L, d] (see the module docstring, step 5). Zero decoder rows have cosine 0
    with the probe."""
    p = probe.float() / probe.float().norm().clamp_min(1e-12)
    dec = decoder.float()
    along = dec @ p  # [L], d_i . p
    cos = along / dec.norm(dim=1).clamp_min(1e-12)
    proj = codes.float() * along  # [N, L], each latent's share of x . p
    total = x.float() @ p  # [N]
    is_main = torch.zeros(dec.shape[0], dtype=torch.bool)
    is_main[main] = True
    main_proj = proj[:, is_main].sum(1)
    # absorption fraction: up to max_absorbing other aligned latents that project positively
    candidates = proj.masked_fill(is_main | (cos < config.fraction_cos), 0).clamp_min(0)
    k = min(config.max_absorbing, candidates.shape[1])
    absorbing = candidates.topk(k, dim=1).values.sum(1) if k else torch.zeros_like(total)
    share = torch.where(total != 0, absorbing / total, torch.zeros_like(total))
    no = (main_proj >= total) | (share < config.projection_share)
    partial = torch.minimum(absorbing, total - main_proj)
    partial = (partial / (partial + main_proj).clamp_min(1e-12)).clamp(0, 1)
    fraction = torch.where(no, 0.0, torch.where(main_proj <= 0, 1.0, partial))
    # full absorption: no main latent fires, the top projecting latent carries the probe
    main_fired = (codes[:, is_main] >= EPS).any(1)
    top_proj, top = proj.max(1)
    top_share = torch.where(total != 0, top_proj / total, torch.zeros_like(total))
    full = (~main_fired & (cos[top] >= config.full_absorption_cos) & (total >= 0)
            & (top_share >= config.projection_share))
    return WordAbsorption(fraction, full, main_fired)


# --- 6. everything on activations --------------------------------------------------------------
class LetterResult(NamedTuple):
    """What the family found for one letter."""

    letter: str
    """The letter."""
    words: int
    """Words of the letter in the task (train and test)."""
    probe_f1: float
    """Test F1 of the letter's probe (one vs the rest, score > 0)."""
    main_latents: list[int]
    """The letter's main latents."""
    main_f1: float
    """Test F1 of the k-sparse probe on the main latents."""
    detected: int
    """Test words of the letter its probe detects (the words absorption is measured on)."""
    absorption_fraction: float
    """Mean absorption fraction over the detected words."""
    full_absorption_rate: float
    """Share of the detected words fully absorbed."""
    main_miss_rate: float
    """Share of the detected words on which no main latent fires."""
    evaluated: bool
    """Whether the letter counts in the figures (probe F1 > min_probe_f1, a word detected)."""


FIGURES = ("mean_absorption_fraction", "full_absorption_rate", "std_absorption_fraction",
           "std_full_absorption_rate", "num_split_features", "main_latents_f1",
           "main_miss_rate", "probe_accuracy", "probe_f1", "letters_evaluated",
           "letters_weak_probe", "letters_skipped", "words")


class AbsorptionResult(NamedTuple):
    """The figures and the per-letter table."""

    figures: dict[str, float]
    """The family's figures (FIGURES)."""
    letters: list[LetterResult]
    """One row per letter probed."""


@torch.no_grad()
def encode_rows(dictionary, x: Tensor, batch: int = 4096) -> Tensor:
    """The dictionary's codes [N, L] of x [N, d_in], on CPU in float32."""
    device = next(dictionary.parameters(), torch.empty(0)).device
    parts = [dictionary.encode(b.to(device)).float().cpu() for b in x.split(batch)]
    return torch.cat(parts) if parts else torch.zeros(0, dictionary.n_latents)


def absorption_from_activations(x: Tensor, letters: Tensor, train: Tensor, dictionary,
                                config: AbsorptionConfig = AbsorptionConfig(),
                                letters_skipped: int = 0) -> AbsorptionResult:
    """Steps 3 to 6 of the module docstring on the words' activations x [N, d_in], their first
    letters [N] (indices in LETTERS) and the train mask [N]."""
    present = letters.unique()
    nan = float("nan")
    figures = dict.fromkeys(FIGURES, nan)
    figures.update(letters_skipped=float(letters_skipped), words=float(len(x)),
                   letters_evaluated=0.0, letters_weak_probe=0.0)
    if len(present) < 2:
        log.warning("absorption: %d letter(s) with enough words; the probes need two",
                    len(present))
        return AbsorptionResult(figures, [])
    probes = fit_letter_probes(x[train], letters[train], config.seed)
    scores = probes.scores(x[~train])  # [N_test, P]
    y_test = letters[~train]
    figures["probe_accuracy"] = float((probes.letters[scores.argmax(1)] == y_test).float().mean())
    codes = encode_rows(dictionary, x)
    ranking = rank_latents(codes[train], letters[train], probes.letters, config)
    rows = [_letter(i, c, x[~train], codes, train, letters, scores, probes, ranking, dictionary,
                    config) for i, c in enumerate(probes.letters.tolist())]
    figures["probe_f1"] = statistics.fmean(r.probe_f1 for r in rows)
    return AbsorptionResult(_summarise(figures, rows, config), rows)


def _letter(i: int, c: int, x_test: Tensor, codes: Tensor, train: Tensor, letters: Tensor,
            scores: Tensor, probes: LetterProbes, ranking: Tensor, dictionary,
            config: AbsorptionConfig) -> LetterResult:
    y_train, y_test = letters[train] == c, letters[~train] == c
    detected = scores[:, i] > 0
    probe_f1 = float(f1_score(y_test.numpy(), detected.numpy(), zero_division=0))
    feats, f1s = k_sparse_f1(codes[train], y_train, codes[~train], y_test, ranking[i],
                             config.max_k)
    main = select_main_latents(feats, f1s, config.f1_jump)
    main_f1 = f1s[len(main) - 1] if len(main) else 0.0
    rows = (y_test & detected).nonzero()[:, 0]
    words = int((letters == c).sum())
    if not len(rows):
        return LetterResult(LETTERS[c], words, probe_f1, main.tolist(), main_f1, 0, 0.0, 0.0,
                            0.0, False)
    result = absorption_of_words(x_test[rows], codes[~train][rows], dictionary.W_dec.detach()
                                 .cpu(), probes.weight[i], main, config)
    return LetterResult(LETTERS[c], words, probe_f1, main.tolist(), main_f1, len(rows),
                        float(result.fraction.mean()), float(result.full.float().mean()),
                        float((~result.main_fired).float().mean()),
                        probe_f1 > config.min_probe_f1)


def _summarise(figures: dict[str, float], rows: list[LetterResult],
               config: AbsorptionConfig) -> dict[str, float]:
    used = [r for r in rows if r.evaluated]
    figures["letters_evaluated"] = float(len(used))
    figures["letters_weak_probe"] = float(sum(r.probe_f1 <= config.min_probe_f1 for r in rows))
    if len(used) < max(1, config.min_letters):
        log.warning("absorption: %d letter(s) have a probe with F1 > %.2f, fewer than "
                    "min_letters = %d; the absorption figures are NaN", len(used),
                    config.min_probe_f1, config.min_letters)
        return figures
    fractions = [r.absorption_fraction for r in used]
    fulls = [r.full_absorption_rate for r in used]
    figures.update(
        mean_absorption_fraction=statistics.fmean(fractions),
        full_absorption_rate=statistics.fmean(fulls),
        std_absorption_fraction=statistics.stdev(fractions) if len(used) > 1 else math.nan,
        std_full_absorption_rate=statistics.stdev(fulls) if len(used) > 1 else math.nan,
        num_split_features=statistics.fmean(len(r.main_latents) for r in used),
        main_latents_f1=statistics.fmean(r.main_f1 for r in used),
        main_miss_rate=statistics.fmean(r.main_miss_rate for r in used))
    return figures


# --- the whole task on a model -----------------------------------------------------------------
def tokenizer_of(model: nn.Module) -> Any:
    """The model's tokenizer (see `tokenizer_for`), whose vocabulary the task reads."""
    return tokenizer_for(model, "absorption: the first-letter task reads the vocabulary with",
                         "load the model with saelab.models.load, or set model.tokenizer = "
                         "tokenizer before evaluating")


def first_letter_absorption(model: nn.Module, tokenizer, hookpoint: str, dictionary,
                            config: AbsorptionConfig = AbsorptionConfig(),
                            exclusion: Exclusion | None = None,
                            progress: bool = False) -> AbsorptionResult:
    """The whole family on `model` (its vocabulary read with `tokenizer`) at `hookpoint`:
    words, prompts, activations, then `absorption_from_activations`. Words whose activation the
    exclusion rule drops (a norm above the dictionary's limit) are left out."""
    g = torch.Generator().manual_seed(config.seed)
    words = first_letter_words(tokenizer, config, g)
    prefixes = prompt_prefixes(tokenizer, words.examples, words.example_letters, config)
    context_of = torch.randint(len(prefixes), (len(words.token_ids),), generator=g)
    x = word_activations(model, hookpoint, prefixes, context_of, words.token_ids,
                         config.batch_words, config.reuse_prefix, progress)
    if len(x) and x.shape[1] != dictionary.d_in:
        raise ConfigError(f"absorption: the activation at {hookpoint!r} has {x.shape[1]} "
                          f"dimensions, the dictionary reads {dictionary.d_in}: pass the "
                          f"hookpoint it was trained on")
    keep = torch.ones(len(x), dtype=torch.bool)
    if exclusion is not None and len(x):
        key = resolve(model, [hookpoint])[0].key
        keep = exclusion.keep_mask(words.token_ids[:, None], {key: x[:, None]})[:, 0]
        if not keep.all():
            log.warning("absorption: %d word(s) dropped by the exclusion rule",
                        int((~keep).sum()))
    return absorption_from_activations(x[keep], words.letters[keep], words.train[keep],
                                       dictionary, config, len(words.skipped))


@register("absorption")
class Absorption(Family):
    """Feature absorption on the first-letter task (Chanin et al. 2024, as in SAEBench): where a
    letter's main latents fail to fire on words its probe detects, and other latents carry the
    probe's direction instead.

    - `mean_absorption_fraction`: the share of the probe projection that latents other than the
      main ones carry where the main ones fall short, averaged over detected words and letters;
    - `full_absorption_rate`: the share of detected words on which no main latent fires and one
      other latent carries the probe (averaged over letters);
    - `std_absorption_fraction`, `std_full_absorption_rate`: their standard deviations over
      letters;
    - `num_split_features`: main latents per letter; `main_latents_f1`: test F1 of the k-sparse
      probe on them; `main_miss_rate`: share of detected words on which no main latent fires;
    - `probe_accuracy`: 26-way first-letter accuracy of the probes on the test words;
      `probe_f1`: their mean one-vs-rest F1;
    - `letters_evaluated` (probe F1 > 0.6), `letters_weak_probe` (F1 <= 0.6),
      `letters_skipped` (too few single-token words), `words` (in the task).

    The absorption figures are NaN when fewer than `config.min_letters` letters are evaluated
    (the standard deviations also with one letter); the probe figures when fewer than two
    letters have enough words. Sizes and thresholds: `Absorption.config` (AbsorptionConfig).
    """

    needs = frozenset({"model"})
    figures = FIGURES
    headline = ("mean_absorption_fraction", "full_absorption_rate", "probe_accuracy",
                "letters_evaluated")
    conditional = ("mean_absorption_fraction", "full_absorption_rate", "std_absorption_fraction",
                   "std_full_absorption_rate", "num_split_features", "main_latents_f1",
                   "main_miss_rate", "probe_accuracy", "probe_f1")
    config: ClassVar[AbsorptionConfig] = AbsorptionConfig()
    """Sizes and thresholds (replace with another AbsorptionConfig to change them)."""

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self.letters: list[LetterResult] = []
        """The per-letter table of the last run."""

    @classmethod
    def check(cls, context: Context) -> None:
        dictionary = context.dictionary
        if "target" in getattr(dictionary, "needs", ()):
            raise ConfigError(f"absorption: a {dictionary.architecture} predicts another "
                              f"activation than it reads, so its decoder directions cannot be "
                              f"compared with a probe on its input; evaluate an SAE")
        hookpoint = cls.hookpoint(context)
        if hookpoint is None:
            raise ConfigError("absorption: the first-letter task reads the activation the "
                              "dictionary was trained on: pass hookpoint")
        if len(resolve(context.model, [hookpoint])) != 1:
            raise ConfigError(f"absorption: hookpoint {hookpoint!r} must name one module of "
                              f"the model")
        tokenizer_of(context.model)

    @staticmethod
    def hookpoint(context: Context) -> str | None:
        """The context's hookpoint, else the one the dictionary's provenance records."""
        return context.hookpoint or getattr(context.dictionary, "provenance", {}).get(
            "hookpoint")

    def run(self) -> dict[str, float]:
        c = self.context
        config = self.config
        if c.seed is not None:
            config = dataclasses.replace(config, seed=c.seed)
        result = first_letter_absorption(c.model, tokenizer_of(c.model), self.hookpoint(c),
                                         c.dictionary, config, c.exclusion, c.progress)
        self.letters = result.letters
        return result.figures

    def plot(self, out: Path) -> list[Path]:
        """absorption_letters.png: each probed letter's absorption fraction and full absorption
        rate (letters not evaluated hatched)."""
        if not self.letters:
            return []
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        at = np.arange(len(self.letters))
        fig, ax = plt.subplots(figsize=(8, 3.5), dpi=100)
        for shift, name, color in ((-0.2, "absorption_fraction", "#3b6ea8"),
                                   (0.2, "full_absorption_rate", "#c8553d")):
            bars = ax.bar(at + shift, [getattr(r, name) for r in self.letters], 0.4,
                          color=color, label=name.replace("_", " "))
            for bar, r in zip(bars, self.letters):
                bar.set_hatch("" if r.evaluated else "//")
        ax.set_xticks(at, [r.letter for r in self.letters])
        ax.set_ylim(0, 1)
        ax.set_ylabel("share of detected words")
        ax.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        path = Path(out) / "absorption_letters.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        return [path]

