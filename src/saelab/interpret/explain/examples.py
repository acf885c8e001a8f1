"""The contexts an explainer reads and a scorer tests: windows of text around a feature's
activations, with the activation of every token.

Following Paulo et al. 2024, "Automatically Interpreting Millions of Features in Large Language
Models" (reference: EleutherAI/delphi, `delphi/latents/` and `delphi/scorers/classifier/sample.py`):
the explainer sees the top-activating contexts plus a few drawn from every activation quantile
(so that it does not describe only the strongest firings), and the scorers test on other
contexts drawn from the quantiles, against negatives where the feature does not fire: random
contexts, or hard negatives, contexts where the features whose decoder directions are closest
fire but this one does not.

Codes are gathered in one pass over the rows, keeping only the positive codes of the features
asked for (memory grows with their firings, not with the rows). A row is one token of a context
(`ctx`, `pos`); positions the store left out (BOS, separators, massive activations) read 0.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from saelab.errors import DataError


class Example(NamedTuple):
    """A window of text with the feature's activation on each token."""

    tokens: list[int]
    """Token ids of the window."""
    str_tokens: list[str]
    """Each token as text (the tokenizer's decoding of that one id)."""
    activations: list[float]
    """The feature's activation on each token (0 where it did not fire)."""
    kind: str
    """Where it comes from: "top", "quantile Q" (Q = 1 for the weakest), "random" or "hard"."""

    @property
    def text(self) -> str:
        """The window as plain text."""
        return "".join(self.str_tokens)

    @property
    def activating(self) -> bool:
        """Whether the feature fires anywhere in the window."""
        return max(self.activations, default=0.0) > 0


class FeatureExamples(NamedTuple):
    """What the explainer and the scorers of one feature are given."""

    feature: int
    """Index of the latent."""
    explain: list[Example]
    """Contexts the explainer reads: the top ones, then some from each quantile."""
    test: list[Example]
    """Activating contexts held out from the explainer, drawn from every quantile."""
    negatives: list[Example]
    """Contexts where the feature does not fire (random or hard negatives)."""
    fire_count: int
    """Tokens on which the feature fired in the data read."""
    max_activation: float
    """Its largest activation there."""


@dataclass
class Sampling:
    """How many contexts of each sort are drawn, and how."""

    window: int = 32
    """Tokens per context shown (the strongest activation sits three quarters of the way in)."""
    n_top: int = 10
    """Top-activating contexts the explainer reads."""
    n_quantiles: int = 5
    """Activation quantiles (by each context's largest activation) the others are drawn from."""
    n_explain_per_quantile: int = 1
    """Contexts per quantile the explainer reads besides the top ones."""
    n_test_per_quantile: int = 2
    """Held-out activating contexts per quantile for the scorers."""
    n_negatives: int = 10
    """Non-activating contexts for the scorers."""
    negatives: str = "random"
    """"random" (contexts where the feature never fires) or "hard" (where its nearest features
    by decoder cosine fire and it does not; random ones make up any shortfall)."""
    n_neighbours: int = 5
    """Nearest features (decoder cosine) whose contexts are hard negatives."""
    seed: int = 0
    """Seed of the draws."""


class Codes(NamedTuple):
    """Positive codes of some features over every row, sparse."""

    rows: list[Tensor]
    """Per feature asked for: the row ids where it fired (int64)."""
    values: list[Tensor]
    """Per feature asked for: its codes on those rows (float32)."""


@torch.no_grad()
def gather_codes(dictionary, batches: Iterable[tuple[Tensor, Tensor]],
                 features: Sequence[int]) -> Codes:
    """The positive codes of `features` over `batches` of (acts [B, d_in], row ids [B])."""
    param = next(iter(dictionary.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    index = torch.tensor(list(features), dtype=torch.long, device=device)
    rows: list[list[Tensor]] = [[] for _ in features]
    values: list[list[Tensor]] = [[] for _ in features]
    for acts, row_ids in batches:
        codes_BF = dictionary.encode(acts.to(device=device, dtype=dtype))[:, index].float().cpu()
        hit_B, hit_F = (codes_BF > 0).nonzero(as_tuple=True)
        for j in hit_F.unique().tolist():
            sel = hit_B[hit_F == j]
            rows[j].append(row_ids[sel].long())
            values[j].append(codes_BF[sel, j])
    empty_i, empty_f = torch.zeros(0, dtype=torch.long), torch.zeros(0)
    return Codes([torch.cat(r) if r else empty_i for r in rows],
                 [torch.cat(v) if v else empty_f for v in values])


@torch.no_grad()
def decoder_directions(dictionary, features: Sequence[int] | None = None) -> Tensor:
    """What adding code 1 of each feature adds to the output [len(features), d_out]:
    decode(e_f) - decode(0), which holds for any dictionary, with or without a decoder bias."""
    n = dictionary.n_latents
    feats = list(range(n)) if features is None else list(features)
    param = next(iter(dictionary.parameters()), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    zero = dictionary.decode(torch.zeros(1, n, dtype=dtype, device=device))
    out = []
    for chunk in torch.tensor(feats).split(1024):
        one_hot = torch.zeros(len(chunk), n, dtype=dtype, device=device)
        one_hot[torch.arange(len(chunk)), chunk.to(device)] = 1.0
        out.append((dictionary.decode(one_hot) - zero).float().cpu())
    return torch.cat(out)


def nearest_features(dictionary, features: Sequence[int], n: int) -> dict[int, list[int]]:
    """The `n` features whose decoder directions are closest (cosine) to each of `features`."""
    if n <= 0:
        return {f: [] for f in features}
    dirs = torch.nn.functional.normalize(decoder_directions(dictionary), dim=1)  # [L, d]
    out = {}
    for f in features:
        cos = dirs @ dirs[f]
        cos[f] = -2.0
        out[f] = cos.topk(min(n, cos.numel() - 1)).indices.tolist()
    return out


class Text:
    """The text behind the rows: contexts of token ids and where each row sits in them."""

    def __init__(self, tokens_NT: Tensor, ctx_R: Tensor, pos_R: Tensor, tokenizer: Any):
        self.tokens_NT, self.ctx_R, self.pos_R, self.tokenizer = tokens_NT, ctx_R, pos_R, tokenizer
        self.cache: dict[int, str] = {}

    def piece(self, token: int) -> str:
        """One token as text."""
        if token not in self.cache:
            self.cache[token] = self.tokenizer.decode([token])
        return self.cache[token]

    def context_acts(self, rows: Tensor, values: Tensor) -> dict[int, Tensor]:
        """Per context a feature fired in: its activation at every position [T]."""
        T = self.tokens_NT.shape[1]
        ctx, pos = self.ctx_R[rows], self.pos_R[rows]
        out: dict[int, Tensor] = {}
        for c in ctx.unique().tolist():
            dense = torch.zeros(T)
            sel = ctx == c
            dense[pos[sel]] = values[sel]
            out[c] = dense
        return out

    def window(self, c: int, acts_T: Tensor | None, centre: int, width: int, kind: str
               ) -> Example:
        """The window of context `c` that puts position `centre` three quarters of the way in."""
        T = self.tokens_NT.shape[1]
        width = min(width, T)
        start = max(0, min(centre - (width - width // 4) + 1, T - width))
        ids = self.tokens_NT[c, start:start + width].tolist()
        acts = [0.0] * len(ids) if acts_T is None else acts_T[start:start + width].tolist()
        return Example(ids, [self.piece(t) for t in ids], acts, kind)


def _quantile_draws(ordered: list[int], sampling: Sampling, rng: random.Random
                    ) -> tuple[list[int], list[int], list[str], list[str]]:
    """Contexts (by index into `ordered`, strongest first) for the explainer and the test,
    drawn without overlap from each activation quantile; with their kinds."""
    rest = list(range(sampling.n_top, len(ordered)))
    explain, test, explain_kinds, test_kinds = [], [], [], []
    q = sampling.n_quantiles
    for i in range(q):  # quantile q is the strongest part of `rest`
        part = rest[i * len(rest) // q:(i + 1) * len(rest) // q]
        rng.shuffle(part)
        kind = f"quantile {q - i}"
        n_e = sampling.n_explain_per_quantile
        explain += part[:n_e]
        explain_kinds += [kind] * len(part[:n_e])
        test += part[n_e:n_e + sampling.n_test_per_quantile]
        test_kinds += [kind] * len(part[n_e:n_e + sampling.n_test_per_quantile])
    return explain, test, explain_kinds, test_kinds


def feature_examples(feature: int, rows: Tensor, values: Tensor, text: Text, sampling: Sampling,
                     neighbour_codes: Sequence[tuple[Tensor, Tensor]] = ()) -> FeatureExamples:
    """The explainer's and the scorers' contexts of one feature, from its positive codes on
    `rows` (with `neighbour_codes`, the (rows, values) of its nearest features, for hard
    negatives)."""
    rng = random.Random(sampling.seed * 1_000_003 + feature)
    per_ctx = text.context_acts(rows, values)
    ordered = sorted(per_ctx, key=lambda c: -float(per_ctx[c].max()))
    explain_idx, test_idx, e_kinds, t_kinds = _quantile_draws(ordered, sampling, rng)

    def make(c: int, kind: str) -> Example:
        acts = per_ctx[c]
        return text.window(c, acts, int(acts.argmax()), sampling.window, kind)

    explain = [make(c, "top") for c in ordered[:sampling.n_top]]
    explain += [make(ordered[i], k) for i, k in zip(explain_idx, e_kinds)]
    test = [make(ordered[i], k) for i, k in zip(test_idx, t_kinds)]
    negatives = _negatives(set(per_ctx), text, sampling, rng, neighbour_codes)
    return FeatureExamples(feature, explain, test, negatives, int(rows.numel()),
                           float(values.max()) if values.numel() else 0.0)


def _negatives(active: set[int], text: Text, sampling: Sampling, rng: random.Random,
               neighbour_codes: Sequence[tuple[Tensor, Tensor]]) -> list[Example]:
    """Contexts where the feature never fires: hard ones first when asked for, then random."""
    out: list[Example] = []
    best: dict[int, tuple[float, int]] = {}  # context -> (neighbour activation, position)
    if sampling.negatives == "hard":
        for rows, values in neighbour_codes:
            for c, acts in text.context_acts(rows, values).items():
                if c not in active and float(acts.max()) > best.get(c, (0.0, 0))[0]:
                    best[c] = (float(acts.max()), int(acts.argmax()))
        hard = sorted(best, key=lambda c: -best[c][0])[:sampling.n_negatives]
        out = [text.window(c, None, best[c][1], sampling.window, "hard") for c in hard]
    taken = set(best)
    pool = [c for c in range(text.tokens_NT.shape[0]) if c not in active and c not in taken]
    rng.shuffle(pool)
    T = text.tokens_NT.shape[1]
    for c in pool[:max(0, sampling.n_negatives - len(out))]:
        centre = rng.randrange(min(sampling.window, T) - 1, T)
        out.append(text.window(c, None, centre, sampling.window, "random"))
    return out


def examples_for(dictionary, batches: Iterable[tuple[Tensor, Tensor]], text: Text,
                 features: Sequence[int], sampling: Sampling) -> list[FeatureExamples]:
    """Every feature's examples from one pass over `batches` (row ids index `text`'s rows)."""
    features = [int(f) for f in features]
    bad = [f for f in features if not 0 <= f < dictionary.n_latents]
    if bad:
        raise DataError(f"features {bad[:5]} are out of range: the dictionary has "
                        f"{dictionary.n_latents} latents")
    neighbours = (nearest_features(dictionary, features, sampling.n_neighbours)
                  if sampling.negatives == "hard" else {f: [] for f in features})
    wanted = list(dict.fromkeys(features + [n for f in features for n in neighbours[f]]))
    codes = gather_codes(dictionary, batches, wanted)
    at = {f: i for i, f in enumerate(wanted)}
    out = []
    for f in features:
        near = [(codes.rows[at[n]], codes.values[at[n]]) for n in neighbours[f]]
        out.append(feature_examples(f, codes.rows[at[f]], codes.values[at[f]], text, sampling,
                                    near))
    return out
