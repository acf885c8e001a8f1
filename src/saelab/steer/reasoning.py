"""Step-level reasoning vectors (RISE): cluster the decoder directions of an SAE trained on the
steps of chains of thought, name the clusters by their steps, and steer with one.

    >>> traces = generate_traces(lm, word_problems(96), max_new_tokens=128)
    >>> steps = step_vectors(lm, traces, "model.layers.20")
    >>> sae = saelab.fit(saelab.create("topk", d_in=576, n_latents=256, k=8), steps.vectors_ND,
    ...                  saelab.TrainConfig(epochs=40, batch_size=128))
    >>> groups = cluster_directions(sae, steps.vectors_ND, n_clusters=8)
    >>> named = describe_clusters(sae, steps, groups)        # behaviour shares of each cluster
    >>> edit = direction_edit(sae, groups[2], strength=40.0) # one cluster's mean direction
    >>> rates = measure(lm, sae, problems, {"clean": [], "+reflect": [edit]}, "model.layers.20")

After Zhang et al. 2025, "Fantastic Reasoning Behaviors and Where to Find Them: Unsupervised
Discovery of the Reasoning Process" (RISE, arXiv 2512.23988; no reference code of theirs was
found, so this follows the paper's text). The paper trains SAEs on sentence-level step
activations of reasoning models, finds that decoder columns of behaviours such as reflection and
backtracking fall in separable regions (clustering and UMAP of the decoder columns), and adds or
subtracts such a column during generation to raise or lower the number of reflection steps
(e.g. about 90 reflection steps down to 34 on AIME25).

Where saelab departs, and why:
- the model is the packaged 135M instruct model on small arithmetic problems, not a reasoning
  model on competition math: the behaviours it has are fewer and weaker;
- clusters are k-means (scikit-learn) on the unit decoder directions of the latents that fire on
  at least `min_steps` steps (dead latents' directions are noise), and each step is assigned to
  the cluster whose latents carry most of its codes;
- a cluster steers with its mean unit direction scaled to `strength` (in the units of the
  residual stream), added at every position through `Steering`, which keeps the SAE's error
  term and leaves special tokens alone; the fluency cost is the perplexity of the steered chain
  of thought under the clean model.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from saelab.capture.exclude import Exclusion
from saelab.errors import ConfigError, DataError
from saelab.steer.edits import CodeEdit, check_features
from saelab.steer.intervene import Steering
from saelab.steer.reasoning_problems import BEHAVIOURS, Problem, behaviour, is_correct
from saelab.steer.reasoning_steps import StepVectors, Trace, generate_traces, perplexity

KINDS = (*BEHAVIOURS, "other")
"""Every behaviour a step can have."""


def decoder_directions(dictionary) -> Tensor:
    """The unit decoder direction of every latent [n_latents, d] (float32)."""
    w = dictionary.W_dec.detach().float().cpu()
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def step_codes(dictionary, vectors_ND: Tensor) -> Tensor:
    """The dictionary's codes of step vectors [N, n_latents] (float32, on the CPU)."""
    held = next(dictionary.parameters())
    return dictionary.encode(vectors_ND.to(held)).float().cpu()


def cluster_directions(dictionary, vectors_ND: Tensor, n_clusters: int, min_steps: int = 3,
                       seed: int = 0) -> list[list[int]]:
    """Latents grouped by k-means on their unit decoder directions (10 starts), among those
    that fire on at least `min_steps` of the step vectors; groups in order of size, largest
    first. A ConfigError when fewer live latents than clusters remain."""
    from sklearn.cluster import KMeans

    live = (step_codes(dictionary, vectors_ND) > 0).sum(0) >= min_steps
    latents = live.nonzero()[:, 0].numpy()
    if not 1 < n_clusters <= len(latents):
        raise ConfigError(f"n_clusters must lie between 2 and the {len(latents)} latents that "
                          f"fire on at least {min_steps} steps, got {n_clusters}: train longer "
                          f"or on more steps, or lower min_steps")
    directions = decoder_directions(dictionary)[latents].numpy()
    labels = KMeans(n_clusters, n_init=10, random_state=seed).fit_predict(directions)
    groups = [latents[labels == c].tolist() for c in range(n_clusters)]
    return sorted(groups, key=len, reverse=True)


@dataclass
class Cluster:
    """A group of latents and the steps it carries."""

    latents: list[int]
    """The latents whose decoder directions fell in the group."""
    steps: int
    """Steps assigned to the group (most of their codes on its latents)."""
    shares: dict[str, float]
    """Share of the group's steps of each behaviour (`KINDS`)."""
    enrichment: dict[str, float]
    """Each share divided by that behaviour's share of all steps (1: as common as anywhere)."""
    position: float
    """Mean relative position of its steps in their traces (0 first step, 1 last)."""
    examples: list[str] = field(default_factory=list)
    """The steps where the group's latents carry most of the codes (strongest first)."""

    @property
    def label(self) -> str:
        """The behaviour most over-represented among the group's steps."""
        return max(self.enrichment, key=lambda k: (self.enrichment[k], self.shares[k]))


def describe_clusters(dictionary, steps: StepVectors, groups: Sequence[Sequence[int]],
                      n_examples: int = 3) -> list[Cluster]:
    """Each group of latents named by its steps: each step goes to the group whose latents hold
    the largest sum of its codes, and a group is described by the behaviours of its steps."""
    codes_NL = step_codes(dictionary, steps.vectors_ND)
    mass_NG = torch.stack([codes_NL[:, list(g)].sum(1) for g in groups], 1)  # [N, groups]
    owner_N = mass_NG.argmax(1)
    share_N = mass_NG.max(1).values / codes_NL.sum(1).clamp_min(1e-12)
    overall = Counter(steps.behaviours)
    base = {k: overall[k] / len(steps.behaviours) for k in KINDS}
    lengths = Counter(steps.trace)
    out = []
    for g, latents in enumerate(groups):
        mine = (owner_N == g).nonzero()[:, 0].tolist()
        counts = Counter(steps.behaviours[i] for i in mine)
        shares = {k: counts[k] / len(mine) if mine else 0.0 for k in KINDS}
        enrich = {k: shares[k] / base[k] if base[k] else 0.0 for k in KINDS}
        where = [steps.position[i] / max(1, lengths[steps.trace[i]] - 1) for i in mine]
        best = sorted(mine, key=lambda i: -float(share_N[i]))[:n_examples]
        out.append(Cluster(list(latents), len(mine), shares, enrich,
                           float(np.mean(where)) if where else math.nan,
                           [steps.texts[i] for i in best]))
    return out


@dataclass(frozen=True)
class DirectionEdit:
    """Adds `amounts[i]` to the code of `features[i]` at every row: with a linear decoder,
    x += sum_i amounts[i] W_dec[features[i]] (one steering vector made of atoms)."""

    features: tuple[int, ...]
    """The latents whose codes change."""
    amounts: tuple[float, ...]
    """What each one's code gains."""

    def apply(self, codes_NL: Tensor) -> Tensor:
        out = codes_NL.clone()
        out[:, list(self.features)] += torch.tensor(self.amounts, dtype=out.dtype,
                                                    device=out.device)
        return out


def direction_edit(dictionary, latents: Sequence[int], strength: float) -> DirectionEdit:
    """The edit that adds `strength` times the group's mean unit decoder direction, normalised
    to norm 1 (negative `strength` subtracts it)."""
    latents = [int(f) for f in latents]
    if not latents:
        raise ConfigError("a direction needs at least one latent")
    check_features(latents, dictionary.n_latents)
    w = dictionary.W_dec.detach().float().cpu()[latents]
    norms = w.norm(dim=1).clamp_min(1e-12)
    mean = (w / norms[:, None]).sum(0)
    scale = strength / float(mean.norm().clamp_min(1e-12))
    return DirectionEdit(tuple(latents), tuple((scale / norms).tolist()))


@dataclass
class Behaviour:
    """What one condition (clean or steered) does to the chains of thought."""

    name: str
    """The condition ("clean" or the name given)."""
    steps: float
    """Mean number of steps per chain of thought."""
    tokens: float
    """Mean number of generated tokens."""
    rates: dict[str, float]
    """Share of all steps of each behaviour (`KINDS`)."""
    per_trace: dict[str, float]
    """Mean number of steps of each behaviour per chain of thought."""
    accuracy: float
    """Share of problems whose last written number is the answer."""
    perplexity: float
    """Geometric mean over traces of the perplexity under the clean model (fluency)."""
    traces: list[Trace] = field(default_factory=list)
    """The chains of thought."""


def summarise(name: str, traces: Sequence[Trace], ppl: Sequence[float]) -> Behaviour:
    """The figures of one condition from its traces and their perplexities."""
    kinds = [behaviour(s) for t in traces for s in t.step_texts]
    counts = Counter(kinds)
    n = max(1, len(traces))
    logs = [math.log(p) for p in ppl if p > 0 and math.isfinite(p)]
    return Behaviour(name, len(kinds) / n, sum(len(t.ids) for t in traces) / n,
                     {k: counts[k] / max(1, len(kinds)) for k in KINDS},
                     {k: counts[k] / n for k in KINDS},
                     sum(is_correct(t.text, t.problem.answer) for t in traces) / n,
                     math.exp(sum(logs) / len(logs)) if logs else math.nan, list(traces))


def measure(lm, dictionary, problems: Sequence[Problem],
            conditions: Mapping[str, Sequence[CodeEdit]], hookpoint: str | None = None,
            max_new_tokens: int = 128, batch_size: int = 16) -> list[Behaviour]:
    """Chains of thought of `problems` under each condition (a name and its edits; no edits:
    the clean model), with their step counts, behaviour rates, accuracy and fluency."""
    if not problems:
        raise DataError("measure needs at least one problem")
    exclusion = Exclusion(special_ids=list(lm.tokenizer.all_special_ids), norm_factor=None)
    out = []
    for name, edits in conditions.items():
        if edits:
            with Steering(lm, dictionary, list(edits), hookpoint, exclusion):
                traces = generate_traces(lm, problems, max_new_tokens, batch_size)
        else:
            traces = generate_traces(lm, problems, max_new_tokens, batch_size)
        out.append(summarise(name, traces, [perplexity(lm, t) for t in traces]))
    return out
