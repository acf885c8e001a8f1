"""Feature Monosemanticity Score (FMS): does one unit carry a concept, and only that unit?
(Härle, Friedrich, Brack, Wäldchen, Deiseroth, Schramowski, Kersting 2025, "Measuring and
Guiding Monosemanticity", NeurIPS 2025).

For a concept (a binary labelling of inputs), a Gini decision tree is fitted on the units'
activations (SAE latents, or the model's neurons) and scored on the inputs it was fitted on:

- capacity, accs_0: the accuracy of the tree's root split alone (the best single unit);
- local disentanglement, FMS_local@p = 2 (accs_0 - accs_p): accs_p is the root-only accuracy after
  the p best root units have been removed one after the other (zeroed, the tree refitted each
  time, its new root removed next); a concept held by one unit falls to chance (0.5 on the
  balanced sets used here, where a split never scores below 0.5, so FMS_local@p is at most 1);
- global disentanglement, FMS_global = 1 - A(n) / n with A(n) = sum over i = 1..n of
  (accs_cum_i - accs_0): accs_cum_i is the accuracy of the full tree (grown until its leaves are
  pure) cut after depth i + 1, n its depth minus one; a concept held by one unit needs no further
  split;
- FMS@p = mean over concepts of accs_0 x (FMS_local@p + FMS_global) / 2.

Reference code (github.com/ml-research/measuring-and-guiding-monosemanticity): `cut_RTP_tree`,
`cut_SP_tree` and `cut_PII_tree` in `utils/create_trees.py` (remove the root, refit, ten times),
`get_tree_stats` and `get_root_node` in `utils/tree_loader.py` (accuracy of the tree cut at each
depth, from the node counts of the data it was fitted on), the notebook `eval/FMS_Scores.ipynb`
(MS_local, MS_global, FMS = Accuracy x (MS_local + MS_global) / 2, read at 1 and 5 cuts) and
`RTP_latents` in `eval/FMS_RTP_SP.py` (a text's latents averaged over its tokens).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import torch
from sklearn.tree import DecisionTreeClassifier
from torch import Tensor

from saelab.evaluate._pooled import ConceptFamily
from saelab.evaluate._probe import one_vs_rest
from saelab.evaluate._registry import register

CUTS = (1, 5)
"""Numbers of root units removed for FMS_local@p and FMS@p (the paper reports p = 1 and 5)."""
MAX_PER_SIDE = 1000
"""Texts of the concept (and as many of the rest) a concept's trees see at most (a seeded
sample beyond it), bounding a full tree's fit on many latents to seconds."""


def tree_accuracies(tree: DecisionTreeClassifier) -> Tensor:
    """Accuracy of a fitted tree cut after each depth, on the inputs it was fitted on
    [depth + 1]: entry d predicts, for each input, the majority class of the deepest node of its
    path at depth <= d (entry 0: the root's majority, entry 1: the root split alone). Read from
    the node counts, as the reference's `get_tree_stats`."""
    t = tree.tree_
    depth = torch.from_numpy(t.compute_node_depths().astype(np.int64)) - 1  # root at depth 0
    value = torch.from_numpy(np.asarray(t.value)[:, 0, :]).double()  # [nodes, classes]
    counts = value / value.sum(1, keepdim=True) * torch.from_numpy(
        np.asarray(t.weighted_n_node_samples)).double()[:, None]
    right = counts.max(1).values  # inputs each node predicts right [nodes]
    leaf = torch.from_numpy(t.children_left == -1)
    total = float(counts[0].sum())
    out = []
    for d in range(int(depth.max()) + 1):
        frontier = (depth == d) | (leaf & (depth < d))
        out.append(float(right[frontier].sum()) / total)
    return torch.tensor(out, dtype=torch.float64)


def _fit(x: np.ndarray, y: np.ndarray, max_depth: int | None, seed: int) -> DecisionTreeClassifier:
    return DecisionTreeClassifier(criterion="gini", max_depth=max_depth,
                                  random_state=seed).fit(x, y)


class ConceptFMS(NamedTuple):
    """The FMS parts of one concept."""

    capacity: float
    """accs_0: accuracy of the best single unit (the tree's root split)."""
    local: Tensor
    """FMS_local@p for each p of `cuts` [len(cuts)]."""
    global_: float
    """FMS_global."""
    fms: Tensor
    """FMS@p = capacity x (local + global) / 2 [len(cuts)]."""
    roots: list[int]
    """The root units in the order they were removed (fewer when no split was left)."""


def concept_fms(acts: Tensor, y: Tensor, cuts: Sequence[int] = CUTS, seed: int = 0) -> ConceptFMS:
    """FMS of one concept from the activations acts [M, D] of M inputs and their labels y [M]
    (1: the concept, 0: not). The trees are fitted and scored on the same inputs, as the
    reference's; a tree with no split (every unit constant) has n = 0 and FMS_global = 1."""
    x = acts.detach().float().cpu().numpy().copy()
    labels = y.cpu().numpy()
    stump = _fit(x, labels, 1, seed)
    capacity = float(stump.score(x, labels))  # a tree without a split scores its majority
    full = tree_accuracies(_fit(x, labels, None, seed))
    gains = full[2:] - capacity  # accs_cum_i - accs_0 for i = 1..n (the same root split)
    global_ = 1.0 - (float(gains.mean()) if len(gains) else 0.0)
    accs, roots = [capacity], []
    for _ in range(max(cuts)):
        root = int(stump.tree_.feature[0])
        if root >= 0:  # else no unit splits the inputs any more, and nothing changes
            roots.append(root)
            x[:, root] = 0.0
            stump = _fit(x, labels, 1, seed)
        accs.append(float(stump.score(x, labels)))
    local = torch.tensor([2.0 * (capacity - accs[p]) for p in cuts])
    return ConceptFMS(capacity, local, global_, capacity * (local + global_) / 2, roots)


class FMSScores(NamedTuple):
    """FMS of each concept (one-vs-rest over the classes of labelled inputs)."""

    classes: list[int]
    """The class indices, in the order of the rows below."""
    cuts: tuple[int, ...]
    """The p of the local and FMS@p columns."""
    capacity: Tensor
    """accs_0 of each concept [C]."""
    local: Tensor
    """FMS_local@p [C, len(cuts)]."""
    global_: Tensor
    """FMS_global [C]."""
    fms: Tensor
    """FMS@p of each concept [C, len(cuts)] (the paper's FMS@p is its mean over concepts)."""
    roots: list[list[int]]
    """For each concept, its root units in the order they were removed (the concept's unit
    first)."""


def fms_scores(acts: Tensor, targets: Tensor, cuts: Sequence[int] = CUTS, seed: int = 0,
               max_per_side: int = MAX_PER_SIDE) -> FMSScores:
    """FMS of each class of `targets` [N] on the activations acts [N, D]: per class, a balanced
    one-vs-rest set (the class's inputs and as many drawn evenly from the others, at most
    `max_per_side` each; seeded, so the same `targets` and `seed` give the same sets for
    latents and for neurons), then `concept_fms`."""
    g = torch.Generator().manual_seed(seed)
    cuts = tuple(cuts)
    classes = targets.unique().tolist()
    rows = []
    for c in classes:
        s = one_vs_rest(targets, c, g)
        pos, neg = s.index[s.y == 1][:max_per_side], s.index[s.y == 0][:max_per_side]
        index = torch.cat([pos, neg])
        y = torch.cat([torch.ones(len(pos), dtype=torch.long),
                       torch.zeros(len(neg), dtype=torch.long)])
        rows.append(concept_fms(acts[index], y, cuts, seed))
    return FMSScores(classes, cuts, torch.tensor([r.capacity for r in rows]),
                     torch.stack([r.local for r in rows]),
                     torch.tensor([r.global_ for r in rows]),
                     torch.stack([r.fms for r in rows]), [r.roots for r in rows])


def fms_figures(scores: FMSScores, prefix: str = "") -> dict[str, float]:
    """The figures of `scores`, each the mean over concepts, named with `prefix` ("" for the
    latents, "neuron_" for the raw activations): `fms_at_{p}` (the paper's FMS@p),
    `fms_capacity`, `fms_local_at_{p}`, `fms_global`."""
    out = {f"{prefix}fms_at_{p}": float(scores.fms[:, j].mean())
           for j, p in enumerate(scores.cuts)}
    out[f"{prefix}fms_capacity"] = float(scores.capacity.mean())
    out.update({f"{prefix}fms_local_at_{p}": float(scores.local[:, j].mean())
                for j, p in enumerate(scores.cuts)})
    out[f"{prefix}fms_global"] = float(scores.global_.mean())
    return out


def _names(prefix: str) -> tuple[str, ...]:
    return (*(f"{prefix}fms_at_{p}" for p in CUTS), f"{prefix}fms_capacity",
            *(f"{prefix}fms_local_at_{p}" for p in CUTS), f"{prefix}fms_global")


@register("fms")
class FeatureMonosemanticity(ConceptFamily):
    """Feature Monosemanticity Score (Härle et al. 2025, "Measuring and Guiding
    Monosemanticity"), for the dictionary's latents and, side by side, for the model's neurons at
    the same hookpoint (the raw activation's dimensions), on labelled texts: each class is a
    concept (one-vs-rest, balanced, at most 1,000 texts a side), and a Gini decision tree on the
    units' activations finds the unit that best tells it apart.

    Figures (under `report["fms"]`), each the mean over concepts; `neuron_...` the same on the
    raw activations:

    - `fms_at_1`, `fms_at_5`: FMS@p = capacity x (FMS_local@p + FMS_global) / 2, at most 1
      (higher: one unit holds the concept, alone);
    - `fms_capacity`: accuracy of the best single unit (the tree's root split; 0.5 is chance);
    - `fms_local_at_1`, `fms_local_at_5`: 2 x (capacity - the root-only accuracy once the best
      1 or 5 units are removed, one after the other);
    - `fms_global`: 1 - the mean gain in accuracy of the full tree cut at each further depth
      over the root split alone;
    - `n_classes`, `n_texts`: the concepts and the texts pooled.

    Labels and pooling as for `sparse_probing` (the packaged Wikipedia topics from the command
    line: `saelab eval SAE STORE --metrics fms [--labels FILE]`); a text's activation and codes
    are averaged over its tokens, as the reference does for its toxicity and Shakespeare
    concepts (`RTP_latents`).

    Departures from the reference: the concepts are the classes of the labelled texts, each
    one-vs-rest on a balanced set (so chance is 0.5 and FMS_local is at most 1, as the factor 2
    assumes), where the paper's are binary datasets (toxicity, Shakespearean style) and PII
    types labelled per token; token-level concept labels are not available here, so units are
    judged on per-text averages. The tree cut at each depth is scored with each input at the
    deepest node of its path (the reference's `get_tree_stats` counts inputs in leaves above
    the cut as right; it matters only for impure leaves), and A(n) runs over the cuts after
    depths 2..n + 1 as in the paper's formula, where the notebook's average also takes in the
    cut before any split (Nodes = 0, the majority's accuracy), which makes FMS_global exceed 1
    for a one-split tree. Units are removed for FMS_local with stumps (max_depth 1) where the
    reference fits depth-3 trees and reads their root: the root is the same. A tree with no
    split (every unit constant, e.g. an all-dead dictionary) has FMS_global = 1 and capacity
    0.5. As in the reference, the trees are scored on the texts they were fitted on (the score
    measures where a concept lives, not how well it generalises): the best of many units fits
    noise a little better, so a dictionary with more latents than the model has neurons gains a
    little capacity by chance.

    Measured (a 4,608-latent TopK SAE, k = 32, trained like the demo's on SmolLM2-135M's
    `model.layers.15`; the Wikipedia topics, 200 texts each, seed 0): `fms_at_1` 0.378 against
    `neuron_fms_at_1` 0.360, `fms_at_5` 0.412 against 0.385, capacity 0.831 against 0.813,
    `fms_local_at_1` 0.035 against 0.028: the best unit of a topic is rarely alone in carrying
    it, among latents and neurons alike.
    """

    figures = _names("") + _names("neuron_") + ("n_classes", "n_texts")
    headline = ("fms_at_1", "neuron_fms_at_1", "fms_at_5", "neuron_fms_at_5")

    def run(self) -> dict[str, float]:
        labels, pooled, targets, seed = self.inputs()
        latents = fms_scores(pooled.codes, targets, CUTS, seed)
        neurons = fms_scores(pooled.raw, targets, CUTS, seed)
        out = {**fms_figures(latents), **fms_figures(neurons, "neuron_"),
               "n_classes": len(latents.classes), "n_texts": len(labels)}
        return {name: out.get(name, math.nan) for name in self.figures}
