"""Code edits change exactly the codes they name, where they say."""

from __future__ import annotations

import pytest
import torch

from saelab.errors import ConfigError
from saelab.steer import ablate, add, clamp, scale
from saelab.steer.edits import check_features

CODES = torch.tensor([[0.0, 2.0, 1.0],
                      [3.0, 0.0, 0.5]])


def test_add_clamp_scale_ablate_change_only_the_named_feature() -> None:
    assert torch.equal(add(1, 4.0).apply(CODES), torch.tensor([[0.0, 6.0, 1.0], [3.0, 4.0, 0.5]]))
    assert torch.equal(clamp(0, 7.0).apply(CODES), torch.tensor([[7.0, 2.0, 1.0], [7.0, 0.0, 0.5]]))
    assert torch.equal(scale([1, 2], 2.0).apply(CODES),
                       torch.tensor([[0.0, 4.0, 2.0], [3.0, 0.0, 1.0]]))
    assert torch.equal(ablate(2).apply(CODES), torch.tensor([[0.0, 2.0, 0.0], [3.0, 0.0, 0.0]]))
    assert torch.equal(CODES, torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.5]]))  # not in place


def test_where_active_edits_only_rows_where_the_feature_fires() -> None:
    out = add(1, 4.0, where="active").apply(CODES)
    assert torch.equal(out[:, 1], torch.tensor([6.0, 0.0]))  # row 1 (code 0) left alone


def test_a_feature_out_of_range_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match="feature 3 is out of range.*3 latents"):
        check_features([0, 3], 3)
    with pytest.raises(ConfigError, match="unknown edit mode"):
        from saelab.steer import Edit

        Edit((0,), "shift", 1.0)  # type: ignore[arg-type]
