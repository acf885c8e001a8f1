"""`saelab.config.build`, the strict way in from data: unknown keys are refused with a did-you-mean,
wrong types name the field and the expected type, for the Python API as for config files."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

import saelab
from saelab.config import build, field_help, load_config_file, option, required
from saelab.errors import ConfigError
from saelab.pipeline import CaptureConfig, DemoConfig


@dataclass
class Example:
    """A config with one field of each kind `build` checks."""

    name: str = required("A required string.")
    count: int = option(3, "An int.")
    rate: float = option(0.5, "A float.")
    mode: Literal["fast", "slow"] = option("fast", "A choice.")
    sizes: tuple[int, ...] = option((1, 2), "A tuple of ints.")
    tags: list[str] | None = option(None, "Optional list of strings.")
    flag: bool = option(False, "A boolean.")


def test_create_names_the_field_and_type_of_a_wrong_value():
    with pytest.raises(ConfigError, match=r"'k' expects int, got str '3'"):
        saelab.create("topk", d_in=8, n_latents=16, k="3")


def test_create_refuses_an_unknown_field_with_a_did_you_mean():
    with pytest.raises(ConfigError, match=r"'kk' \(did you mean 'k'\?\)"):
        saelab.create("topk", d_in=8, n_latents=16, kk=3)


def test_train_config_from_data_refuses_a_string_for_steps():
    with pytest.raises(ConfigError, match=r"'steps' expects int \| None, got str 'twenty'"):
        build(saelab.TrainConfig, {"steps": "twenty"})


@pytest.mark.parametrize("values, message", [
    ({"name": "a", "count": 2.5}, r"'count' expects int, got float 2.5"),
    ({"name": "a", "count": True}, r"'count' expects int, got bool True"),
    ({"name": "a", "mode": "medium"}, r"'mode' expects one of 'fast', 'slow', got str 'medium'"),
    ({"name": "a", "sizes": [1, "2"]}, r"'sizes' expects tuple\[int, \.\.\.\]"),
    ({"name": "a", "tags": ["x", 3]}, r"'tags' expects list\[str\] \| None"),
    ({"name": 7}, r"'name' expects str, got int 7"),
    ({"count": 2}, r"missing 1 required .*'name'"),
    ({"name": "a", "rat": 0.1}, r"'rat' \(did you mean 'rate'\?\)"),
])
def test_build_refuses_wrong_types_unknown_and_missing_fields_naming_them(values, message):
    with pytest.raises(ConfigError, match=message):
        build(Example, values)


def test_build_accepts_json_shapes_of_the_right_values():
    cfg = build(Example, {"name": "a", "rate": 1, "sizes": [4, 5], "tags": ["x"], "flag": True,
                          "mode": "slow"})
    assert cfg == Example("a", 3, 1, "slow", (4, 5), ["x"], True)


def test_nested_config_given_as_a_dict_keeps_the_defaults_it_does_not_name():
    cfg = build(DemoConfig, {"train": {"lr": 0.002}, "capture": {"n_tokens": 4096}})
    assert cfg.train.lr == 0.002 and cfg.train.batch_size == 1024 and cfg.train.epochs == 4.0
    assert cfg.capture.n_tokens == 4096 and cfg.capture.model == "smollm2-135m"
    with pytest.raises(ConfigError, match=r"'train'.*'batch_sise' \(did you mean 'batch_size'"):
        build(DemoConfig, {"train": {"batch_sise": 8}})


def test_value_checks_still_run_after_the_type_checks():
    with pytest.raises(ConfigError, match="context_len: must be at least 2"):
        build(CaptureConfig, {"context_len": 1})


def test_config_files_are_read_as_json_or_yaml_and_must_be_mappings(tmp_path):
    (tmp_path / "a.json").write_text('{"count": 4}')
    (tmp_path / "b.yml").write_text("count: 4\ntags: [x, y]\n")
    (tmp_path / "c.json").write_text("[1, 2]")
    (tmp_path / "d.yaml").write_text("count: [4\n")
    assert load_config_file(tmp_path / "a.json") == {"count": 4}
    assert load_config_file(tmp_path / "b.yml") == {"count": 4, "tags": ["x", "y"]}
    with pytest.raises(ConfigError, match="mapping"):
        load_config_file(tmp_path / "c.json")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config_file(tmp_path / "d.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "none.json")


def test_field_help_reads_the_help_of_a_field():
    assert field_help(Example, "rate") == "A float."
    assert field_help(saelab.TrainConfig, "seed").startswith("Seed")


def test_demo_defaults_are_the_settings_its_published_figures_came_from():
    cfg = DemoConfig()
    assert (cfg.capture.model, cfg.capture.dataset, cfg.capture.layer, cfg.capture.context_len,
            cfg.capture.n_tokens) == ("smollm2-135m", "wikipedia", None, 128, 250_000)
    assert (cfg.capture.batch_contexts, cfg.capture.norm_factor, cfg.capture.dtype) == (
        8, 5.0, "float32")
    assert (cfg.eval_tokens, cfg.eval.splice_tokens, cfg.dashboard.n_features) == (
        16_384, 8192, 200)
    assert (cfg.architecture, cfg.n_latents, cfg.k) == ("topk", 4608, 32)
    t = cfg.train
    assert (t.epochs, t.batch_size, t.lr, t.seed, t.steps, t.checkpoint_every) == (
        4.0, 1024, None, 0, None, 250)
