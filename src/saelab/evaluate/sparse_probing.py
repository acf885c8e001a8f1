"""Sparse probing: can a handful of latents tell a concept apart? (Gurnee et al. 2023, "Finding
Neurons in a Haystack: Case Studies with Sparse Probing"; in SAEBench, Karvonen et al. 2025,
"SAEBench: A Comprehensive Benchmark for Sparse Autoencoders in Language Model
Interpretability").

For each class of labelled texts, one-vs-rest on a balanced set: the k latents whose mean pooled
activation differs most between the class and the rest (on the training texts) feed a
logistic-regression probe, scored on held-out texts, for k = 1, 2, 5, 20; a probe on the raw
activations (every dimension) is the reference. A dictionary whose latents isolate the concepts
reaches the raw probe's accuracy with few latents.

Reference code: `train_probe_on_activations`, `prepare_probe_data`, `get_top_k_mean_diff_mask`
and `train_sklearn_probe` in `sae_bench/evals/sparse_probing/probe_training.py`, and
`run_eval_single_dataset` in `sae_bench/evals/sparse_probing/main.py`
(github.com/adamkarvonen/SAEBench). Gurnee et al. choose the k neurons by several rankings; the
mean difference is SAEBench's choice, kept here.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from saelab.evaluate._pooled import ConceptFamily
from saelab.evaluate._probe import accuracy, fit_probe, one_vs_rest, stratified_split
from saelab.evaluate._registry import register

KS = (1, 2, 5, 20)
"""Numbers of latents the sparse probes read (SAEBench: 1, 2, 5; 20 added, as in the issue)."""


def top_k_mean_diff(acts: Tensor, y: Tensor, k: int) -> Tensor:
    """Indices [min(k, D)] of the k columns of acts [M, D] whose mean differs most (in absolute
    value) between the rows with y == 1 and those with y == 0, largest difference first (ties in
    column order); SAEBench's `get_top_k_mean_diff_mask`, as indices."""
    diff = (acts[y == 1].mean(0) - acts[y == 0].mean(0)).abs()
    return torch.argsort(diff, descending=True, stable=True)[:k]


class SparseProbes(NamedTuple):
    """Held-out accuracies of the probes of each class (one-vs-rest, balanced)."""

    classes: list[int]
    """The class indices probed, in the order of the rows below."""
    ks: tuple[int, ...]
    """Numbers of latents of the sparse probes (each at most the number of latents)."""
    sparse: Tensor
    """Accuracy of the probe on the top-k latents [classes, len(ks)]."""
    latents: list[Tensor]
    """For each class, the latents chosen for the largest k, best first."""
    all_latents: Tensor
    """Accuracy of a probe on every latent (standardised) [classes]."""
    raw: Tensor
    """Accuracy of a probe on every raw dimension (standardised) [classes]."""


def sparse_probes(codes: Tensor, raw: Tensor, targets: Tensor, train: Tensor,
                  ks: Sequence[int] = KS, seed: int = 0) -> SparseProbes:
    """k-sparse probes on the pooled codes [N, F] and dense probes on the codes and on the raw
    activations [N, D], per class of `targets` [N] (one-vs-rest, balanced within the train and
    the test texts separately, as SAEBench), fitted on the texts where `train` [N] is True and
    scored on the others. The latents are ranked by `top_k_mean_diff` on the training set."""
    g = torch.Generator().manual_seed(seed)
    ks = tuple(min(k, codes.shape[1]) for k in ks)
    train_idx, test_idx = train.nonzero()[:, 0], (~train).nonzero()[:, 0]
    classes = targets.unique().tolist()
    sparse = torch.zeros(len(classes), len(ks))
    dense, raw_acc, latents = torch.zeros(len(classes)), torch.zeros(len(classes)), []
    for row, c in enumerate(classes):
        tr, te = one_vs_rest(targets[train_idx], c, g), one_vs_rest(targets[test_idx], c, g)
        tr_i, te_i = train_idx[tr.index], test_idx[te.index]
        order = top_k_mean_diff(codes[tr_i], tr.y, max(ks))
        latents.append(order)
        for j, k in enumerate(ks):
            probe = fit_probe(codes[tr_i][:, order[:k]], tr.y, seed=seed)
            sparse[row, j] = accuracy(probe, codes[te_i][:, order[:k]], te.y)
        probe = fit_probe(codes[tr_i], tr.y, standardize=True, seed=seed)
        dense[row] = accuracy(probe, codes[te_i], te.y)
        probe = fit_probe(raw[tr_i], tr.y, standardize=True, seed=seed)
        raw_acc[row] = accuracy(probe, raw[te_i], te.y)
    return SparseProbes(classes, ks, sparse, latents, dense, raw_acc)


@register("sparse_probing")
class SparseProbing(ConceptFamily):
    """k-sparse probes on the dictionary's latents against a probe on the raw activations
    (SAEBench's sparse probing; Gurnee et al. 2023), on labelled texts: the model runs on each
    text, activations and codes are averaged over its tokens (see below), and for each class
    (one-vs-rest, balanced) the k latents with the largest difference in mean between the class
    and the rest feed a logistic regression. 80% of each class's texts train, 20% score.

    Figures (under `report["sparse_probing"]`), each the mean over classes of held-out accuracy
    (0.5 is chance):

    - `sae_accuracy_k1`, `sae_accuracy_k2`, `sae_accuracy_k5`, `sae_accuracy_k20`: probes on
      the top 1, 2, 5, 20 latents (at most the number of latents);
    - `sae_accuracy`: a probe on every latent;
    - `raw_accuracy`: a probe on every dimension of the raw activation (the reference);
    - `n_classes`, `n_texts`: the classes probed and the texts pooled.

    Labels: `saelab.evaluate(sae, metrics=("sparse_probing",), model=lm.model,
    labels="wikipedia-topics", hookpoint=...)` (the packaged Wikipedia summaries' 11 topics, 200
    texts each), a .jsonl / .csv file with "text" and "label", a (texts, labels) pair, or a
    `saelab.data.labelled.LabelledTexts`; from the command line, `saelab eval SAE STORE
    --metrics sparse_probing [--labels FILE]` (the Wikipedia topics without --labels). Classes
    with fewer than 10 texts are dropped (named in a warning). Pooling: texts cut to 128 tokens;
    the first position, padding and what the store's exclusion rule drops are left out of the
    average (see saelab.evaluate._pooled).

    Departures from SAEBench: its eight Hugging Face datasets (professions, review categories
    and sentiment, code languages, news topics, languages), 4,000 training and 1,000 test texts
    each, cannot be downloaded here, so the default is the Wikipedia topics; its raw-activation
    probe is trained by gradient with early stopping on the test accuracy (which picks the best
    test score), here it is a scikit-learn logistic regression on standardised activations
    scored once; the probe on all latents is standardised likewise. The k-sparse probes are
    SAEBench's (same ranking, same unscaled L2 logistic regression): with sae-bench 0.6.0
    installed (`pip install --no-deps sae-bench==0.6.0 tabulate`), the tests run SAEBench's
    `prepare_probe_data`, `get_top_k_mean_diff_mask` and `train_sklearn_probe` on the same
    tensors and get the same latents and the same accuracies (to 1e-6). Its
    `train_probe_on_activations` itself cannot be called on tensors here: jaxtyping 0.3 binds
    the dimension name it gives the per-class activations to the balanced set of twice the size
    in the nested call, and refuses it.
    """

    figures = ("sae_accuracy_k1", "sae_accuracy_k2", "sae_accuracy_k5", "sae_accuracy_k20",
               "sae_accuracy", "raw_accuracy", "n_classes", "n_texts")
    headline = ("sae_accuracy_k1", "sae_accuracy_k5", "sae_accuracy_k20", "raw_accuracy")

    def run(self) -> dict[str, float]:
        labels, pooled, targets, seed = self.inputs()
        train = stratified_split(targets, generator=torch.Generator().manual_seed(seed))
        result = sparse_probes(pooled.codes, pooled.raw, targets, train, KS, seed)
        out = {f"sae_accuracy_k{k}": float(result.sparse[:, j].mean())
               for j, k in enumerate(KS)}
        out.update(sae_accuracy=float(result.all_latents.mean()),
                   raw_accuracy=float(result.raw.mean()),
                   n_classes=len(result.classes), n_texts=len(labels))
        return {name: out.get(name, math.nan) for name in self.figures}
