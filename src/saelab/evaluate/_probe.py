"""Probing machinery shared by the concept families (`sparse_probing`, `tpp`): a stratified
train/test split of labelled texts, SAEBench's balanced one-vs-rest sets, and logistic-regression
probes (scikit-learn).

`one_vs_rest` follows `prepare_probe_data` in `sae_bench/evals/sparse_probing/probe_training.py`
(github.com/adamkarvonen/SAEBench): every text of the class is a positive, and as many negatives
are drawn evenly from the other classes, so that chance accuracy is 0.5.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor

TEST_FRACTION = 0.2
"""Share of each class's texts held out to score the probes (SAEBench: 1,000 of 5,000)."""
MAX_ITER = 1000
"""Iterations of the logistic regression's solver (SAEBench's `train_sklearn_probe`)."""


def stratified_split(targets: Tensor, test_fraction: float = TEST_FRACTION,
                     generator: torch.Generator | None = None) -> Tensor:
    """A random train mask [N] (bool): in each class, round(test_fraction x its count) texts (at
    least one, and at least one left to train on) are held out, the rest train."""
    train = torch.ones(len(targets), dtype=torch.bool)
    for c in targets.unique():
        members = (targets == c).nonzero()[:, 0]
        n_test = min(max(1, round(test_fraction * len(members))), len(members) - 1)
        held = members[torch.randperm(len(members), generator=generator)[:n_test]]
        train[held] = False
    return train


class ProbeSet(NamedTuple):
    """A balanced one-vs-rest set of texts."""

    index: Tensor
    """Indices of the texts (into the rows given) [M] (int64)."""
    y: Tensor
    """1 for a text of the class, 0 for the others [M] (int64)."""


def one_vs_rest(targets: Tensor, positive: int,
                generator: torch.Generator | None = None) -> ProbeSet:
    """The texts of class `positive` and as many of the other classes, drawn evenly from each
    (ceil(P / other classes) from each, then P of those at random; SAEBench's
    `prepare_probe_data`). When the other classes hold fewer texts than P, positives are drawn
    down to their number. Shuffled."""
    pos = (targets == positive).nonzero()[:, 0]
    others = [c for c in targets.unique().tolist() if c != positive]
    per_class = math.ceil(len(pos) / max(1, len(others)))
    neg = []
    for c in others:
        members = (targets == c).nonzero()[:, 0]
        neg.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    neg = torch.cat(neg) if neg else pos[:0]
    m = min(len(pos), len(neg))
    pos = pos[torch.randperm(len(pos), generator=generator)[:m]]
    neg = neg[torch.randperm(len(neg), generator=generator)[:m]]
    index = torch.cat([pos, neg])
    y = torch.cat([torch.ones(m, dtype=torch.long), torch.zeros(m, dtype=torch.long)])
    order = torch.randperm(len(index), generator=generator)
    return ProbeSet(index[order], y[order])


def fit_probe(x: Tensor, y: Tensor, standardize: bool = False, seed: int = 0):
    """A logistic-regression probe (L2, C = 1, as SAEBench's `train_sklearn_probe`) fitted on
    x [M, D] -> y [M]; with `standardize`, on features scaled to unit variance (the raw
    activations, whose dimensions differ in scale by orders of magnitude). A scikit-learn
    estimator (`predict`)."""
    probe = LogisticRegression(C=1.0, max_iter=MAX_ITER, random_state=seed)
    if standardize:
        probe = make_pipeline(StandardScaler(), probe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(_np(x), _np(y))
    return probe


def accuracy(probe, x: Tensor, y: Tensor) -> float:
    """Share of the rows x [M, D] whose prediction is y [M]."""
    return float((probe.predict(_np(x)) == _np(y)).mean())


def raw_weight(probe) -> Tensor:
    """The probe's weight vector in the units of its input [D]: coef / scale for a standardised
    probe (so that w . x differs from the decision function by a constant)."""
    if hasattr(probe, "steps"):
        scaler, lr = probe.steps[0][1], probe.steps[-1][1]
        return torch.from_numpy(lr.coef_[0] / scaler.scale_).float()
    return torch.from_numpy(probe.coef_[0]).float()


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
