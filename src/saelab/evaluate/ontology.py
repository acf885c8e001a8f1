"""Do a dictionary's features recover the label hierarchy of a labelled image set? (after
"Probing the Representational Power of Sparse Autoencoders in Vision Models", 2025,
arXiv 2508.11277, which reports that SAE features on vision models reflect a known ontology).

Each class is described by its profile, the mean of its images' features (the codes of a
dictionary, or the raw activations as the reference), and two classes are as far apart as their
profiles' correlation distance (1 - Pearson correlation, scipy's `correlation` metric). The
known hierarchy gives every class a path from the root (`("digit", "7")`,
`("photo", "face")`); two classes are as far apart as the steps between them in that tree. The
figures:

- `spearman`: Spearman's rank correlation, over the pairs of classes, of the profile distance
  with the tree distance (1: every pair the tree puts further apart is further apart in the
  features);
- `cluster_ari`: the adjusted Rand index of the top-level groups against a cut of the average-
  linkage clustering of the profiles into as many clusters (1: the clustering's top split is
  the hierarchy's; about 0: unrelated).

Only the summary of the paper could be read here and no reference code was found: the
measures are saelab's choice, standard ones (a representational-similarity correlation and a
clustering agreement), not a reproduction of the paper's pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from saelab.errors import DataError


class Hierarchy(NamedTuple):
    """How well class profiles follow a known hierarchy."""

    spearman: float
    """Rank correlation of profile distance with tree distance over the pairs of classes."""
    cluster_ari: float
    """Adjusted Rand index of the top-level groups against the profiles' clustering."""
    n_classes: int
    """Classes compared."""
    n_groups: int
    """Top-level groups of the hierarchy among them."""


def tree_distance(a: Sequence[str], b: Sequence[str]) -> int:
    """Steps between two nodes given by their paths from the root."""
    common = 0
    for x, y in zip(a, b):
        if x != y:
            break
        common += 1
    return len(a) + len(b) - 2 * common


def class_profiles(features: Tensor, labels: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The classes (sorted) and their mean feature vectors [C, F] (float64)."""
    if len(labels) != len(features):
        raise DataError(f"{len(labels)} labels for {len(features)} rows of features: give one "
                        f"label per row")
    names = sorted(set(labels))
    index = torch.tensor([names.index(label) for label in labels])
    x = features.double()
    return names, np.stack([x[index == c].mean(0).numpy() for c in range(len(names))])


def hierarchy_agreement(features: Tensor, labels: Sequence[str],
                        paths: Mapping[str, Sequence[str]]) -> Hierarchy:
    """How well the class profiles of `features` [N, F] (rows labelled `labels` [N]) follow the
    hierarchy `paths` (label -> its path from the root, the label last). Needs at least three
    classes and two top-level groups."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist
    from scipy.stats import spearmanr
    from sklearn.metrics import adjusted_rand_score

    missing = sorted(set(labels) - set(paths))
    if missing:
        raise DataError(f"labels without a place in the hierarchy: {', '.join(missing[:5])}")
    names, profiles = class_profiles(features, labels)
    groups = [paths[n][0] for n in names]
    if len(names) < 3 or len(set(groups)) < 2:
        raise DataError(f"the hierarchy check needs at least 3 classes in at least 2 top-level "
                        f"groups, got {len(names)} in {len(set(groups))}")
    if (profiles.std(1) == 0).any():
        raise DataError("a class's mean features are constant (e.g. no latent fires on it): "
                        "its correlation distance is undefined")
    distance = pdist(profiles, "correlation")
    tree = [tree_distance(paths[a], paths[b]) for i, a in enumerate(names)
            for b in names[i + 1:]]
    clusters = fcluster(linkage(distance, "average"), len(set(groups)), "maxclust")
    return Hierarchy(float(spearmanr(distance, tree).statistic),
                     float(adjusted_rand_score(groups, clusters)), len(names), len(set(groups)))
