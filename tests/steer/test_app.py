"""APP (attenuation via posterior probabilities) on codes whose classes are known."""

from __future__ import annotations

import pytest
import torch

from saelab.errors import DataError
from saelab.steer.app import Attenuation, concept_features, masking_edit


def classes(n: int = 400, seed: int = 0) -> dict[str, torch.Tensor]:
    """Feature 0 fires only for 'sea'; feature 1 fires for both, near 5 for 'sea' and near 1
    for 'land'; feature 2 fires only for 'land'; feature 3 never."""
    g = torch.Generator().manual_seed(seed)
    sea, land = torch.zeros(n, 4), torch.zeros(n, 4)
    sea[:, 0] = 2 + torch.rand(n, generator=g)
    sea[:, 1] = 5 + 0.3 * torch.randn(n, generator=g)
    land[:, 1] = 1 + 0.3 * torch.randn(n, generator=g).abs()
    land[:, 2] = 3.0
    return {"sea": sea, "land": land}


def test_monosemantic_features_are_masked_and_polysemantic_ones_attenuated() -> None:
    assert concept_features(classes(), "sea") == ([0], [1])
    app = Attenuation.fit(classes(), "sea")
    codes = torch.tensor([[2.5, 5.0, 0.0, 0.0],    # a 'sea' row
                          [0.0, 1.0, 3.0, 0.0],    # a 'land' row
                          [0.0, 9.0, 0.0, 0.0]])   # feature 1 far in the tail of 'sea'
    out = app.apply(codes)
    assert out[0, 0] == 0  # monosemantic: masked
    assert out[0, 1] < 0.05 * 5.0  # where 'sea' is far likelier: almost removed
    assert out[1, 1] == pytest.approx(1.0, abs=0.05)  # where 'land' is likelier: kept
    assert out[2, 1] == 9.0  # tails are left alone
    assert torch.equal(out[:, 2:], codes[:, 2:])  # features not of the concept untouched


def test_full_masking_zeroes_every_feature_active_for_the_concept() -> None:
    edit = masking_edit(classes(), "sea")
    assert edit.features == (0, 1) and edit.mode == "scale" and edit.value == 0


def test_a_concept_without_classes_to_compare_is_refused() -> None:
    with pytest.raises(DataError, match="at least one other class"):
        concept_features({"sea": classes()["sea"]}, "sea")
