"""Label hierarchy from features: features built from a two-level hierarchy agree with it
(rank correlation near 1, the top split found), features blind to the top level do not, and
labels without a place in the hierarchy are refused."""

from __future__ import annotations

import pytest
import torch

from saelab.errors import DataError
from saelab.evaluate.ontology import hierarchy_agreement, tree_distance

PATHS = {f"{g}{i}": (g, f"{g}{i}") for g in ("digit", "photo") for i in range(4)}


def features(group_scale: float, seed: int = 0):
    """Rows of 8 classes in 2 groups: group centre * group_scale + class centre + noise."""
    g = torch.Generator().manual_seed(seed)
    names = sorted(PATHS)
    groups = {"digit": torch.randn(32, generator=g) * 3, "photo": torch.randn(32, generator=g) * 3}
    classes = {n: torch.randn(32, generator=g) for n in names}
    labels = [n for n in names for _ in range(20)]
    x = torch.stack([groups[PATHS[n][0]] * group_scale + classes[n] for n in labels])
    return x + 0.1 * torch.randn(x.shape, generator=g), labels


def test_tree_distance_counts_steps_through_the_common_ancestor():
    assert tree_distance(("digit", "7"), ("digit", "7")) == 0
    assert tree_distance(("digit", "7"), ("digit", "1")) == 2
    assert tree_distance(("digit", "7"), ("photo", "face")) == 4


def test_features_built_from_the_hierarchy_recover_it_and_blind_ones_do_not():
    x, labels = features(group_scale=1.0)
    h = hierarchy_agreement(x, labels, PATHS)
    assert h.spearman > 0.8 and h.cluster_ari == 1.0 and (h.n_classes, h.n_groups) == (8, 2)
    blind = hierarchy_agreement(*features(group_scale=0.0), PATHS)
    assert blind.spearman < 0.5 and blind.cluster_ari < 0.5


def test_labels_outside_the_hierarchy_are_refused():
    x, labels = features(1.0)
    with pytest.raises(DataError, match="without a place in the hierarchy: digit0"):
        hierarchy_agreement(x, labels, {k: v for k, v in PATHS.items() if k != "digit0"})
