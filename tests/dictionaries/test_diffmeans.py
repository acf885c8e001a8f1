"""diffmeans (saelab.dictionaries.diffmeans): recovers planted concept directions from labelled
rows through saelab.fit, equals the difference of means computed at once, takes integer classes,
and refuses labels that do not fit with a message that says why."""

from __future__ import annotations

import pytest
import torch

import saelab
from saelab.dictionaries import Rows
from saelab.errors import DataError

D = 24


def labelled(n: int = 4000, concepts: int = 2, seed: int = 0):
    """(rows [n, D], labels [n, concepts] 0/1, directions [concepts, D] unit): Gaussian noise plus,
    for each concept that holds in a row, 1.5 times its direction."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(concepts, D, generator=g)
    directions /= directions.norm(dim=1, keepdim=True)
    labels = (torch.rand(n, concepts, generator=g) < 0.3).long()
    x = torch.randn(n, D, generator=g) + labels.float() @ (1.5 * directions) + 2.0
    return x, labels, directions


def fit(x, labels, n_latents):
    sae = saelab.create("diffmeans", d_in=D, n_latents=n_latents)
    return saelab.fit(sae, saelab.train.Labelled(x, labels),
                      saelab.TrainConfig(batch_size=500, epochs=1, progress=False))


def test_diffmeans_recovers_planted_concept_directions():
    x, labels, directions = labelled()
    dm = fit(x, labels, n_latents=2)
    cos = torch.nn.functional.cosine_similarity(dm.W_dec.detach(), directions, dim=1)
    assert (cos > 0.95).all(), cos
    torch.testing.assert_close(dm.mean_difference, torch.full((2,), 1.5), rtol=0.1, atol=0)


def test_atoms_are_the_unit_difference_of_means_and_codes_the_centred_projection():
    x, labels, _ = labelled()
    dm = fit(x, labels, n_latents=2)
    held = labels.bool()
    diff = torch.stack([x[held[:, c]].mean(0) - x[~held[:, c]].mean(0) for c in range(2)])
    torch.testing.assert_close(dm.W_dec.detach(), diff / diff.norm(dim=1, keepdim=True),
                               rtol=0, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(dm.encode(x), (x - x.mean(0)) @ dm.W_dec.T, rtol=0, atol=1e-4)


def test_fewer_concepts_than_latents_leave_the_other_atoms_zero():
    x, labels, directions = labelled()
    dm = fit(x, labels, n_latents=8)
    assert torch.equal(dm.W_dec[2:], torch.zeros(6, D))
    cos = torch.nn.functional.cosine_similarity(dm.W_dec[:2].detach(), directions, dim=1)
    assert (cos > 0.95).all()


def test_integer_class_labels_give_one_atom_per_class_seen():
    x, labels, directions = labelled(concepts=1)
    classes = labels[:, 0] + 1  # classes 1 and 2; class 0 never occurs
    dm = saelab.create("diffmeans", d_in=D, n_latents=5)
    with pytest.raises(DataError, match="concept 0 has no positive rows"):
        dm.fit([Rows(x, None, classes)])
    dm.fit(Rows(x_, None, c_) for x_, c_ in zip(x.split(500), labels[:, 0].split(500)))
    # class 1 against class 0 is the concept; class 0 against class 1 its opposite
    cos = torch.nn.functional.cosine_similarity(dm.W_dec[:2].detach(), directions.expand(2, D))
    torch.testing.assert_close(cos, torch.tensor([-1.0, 1.0]), rtol=0, atol=0.05)
    assert torch.equal(dm.W_dec[2:], torch.zeros(3, D))


def test_more_concepts_than_latents_are_refused_with_the_counts():
    x, labels, _ = labelled(concepts=3)
    with pytest.raises(DataError, match="3 concepts but the dictionary has n_latents=2"):
        fit(x, labels, n_latents=2)


def test_labels_of_another_row_count_are_refused():
    x, labels, _ = labelled()
    dm = saelab.create("diffmeans", d_in=D, n_latents=2)
    with pytest.raises(DataError, match=r"labels have shape \(99, 2\) for a batch of 100 rows"):
        dm.fit([Rows(x[:100], None, labels[:99])])
    with pytest.raises(DataError, match="one row of labels per row of data"):  # saelab.fit's
        saelab.fit(dm, saelab.train.Labelled(x, labels[:-1]), saelab.TrainConfig(progress=False))


def test_a_concept_without_negative_rows_is_refused_naming_it():
    x, labels, _ = labelled()
    labels[:, 1] = 1
    with pytest.raises(DataError, match="concept 1 has no negative rows"):
        fit(x, labels, n_latents=2)


def test_labels_that_are_not_zero_or_one_are_refused():
    x, labels, _ = labelled()
    dm = saelab.create("diffmeans", d_in=D, n_latents=2)
    with pytest.raises(DataError, match="must be 0 or 1"):
        dm.fit([Rows(x, None, labels * 0.5)])


def test_fitting_without_labels_is_refused():
    x, _, _ = labelled()
    with pytest.raises(saelab.errors.ConfigError, match="Labelled"):
        saelab.fit(saelab.create("diffmeans", d_in=D, n_latents=2), x,
                   saelab.TrainConfig(batch_size=500, progress=False))
    with pytest.raises(DataError, match="concept labels"):
        saelab.create("diffmeans", d_in=D, n_latents=2).fit([x])
