"""`list_hookpoints`: every module a hookpoint can name, with its output shape from one forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from saelab.capture import capture
from saelab.capture.listing import format_hookpoints, list_hookpoints
from saelab.errors import ConfigError


def test_listed_shapes_are_those_a_capture_of_the_same_tokens_sees(tiny_lm):
    rows = list_hookpoints(tiny_lm, "model.layers.*.mlp", n_tokens=5)
    assert [r.name for r in rows] == [f"model.layers.{i}.mlp" for i in range(4)]
    acts = capture(tiny_lm, [r.name for r in rows], torch.ones(1, 5, dtype=torch.long))
    assert all(r.shape == tuple(acts[r.name].shape) for r in rows)
    assert all(r.kind == "LlamaMLP" for r in rows)


def test_without_a_pattern_every_named_module_is_listed_in_order(tiny_lm):
    names = [r.name for r in list_hookpoints(tiny_lm)]
    assert names == [n for n, _ in tiny_lm.named_modules() if n]


def test_a_model_that_takes_no_token_ids_is_listed_without_shapes():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    rows = list_hookpoints(model)
    assert [(r.name, r.kind, r.shape) for r in rows] == [("0", "Linear", None),
                                                        ("1", "ReLU", None)]
    assert format_hookpoints(rows).splitlines()[0].split() == ["0", "-", "Linear"]


def test_a_pattern_that_matches_nothing_is_a_clear_error(tiny_lm):
    with pytest.raises(ConfigError, match="no module of the model matches 'transformer.h.*'"):
        list_hookpoints(tiny_lm, "transformer.h.*")
