"""`TrainConfig.log_to`: the same metric rows in metrics.jsonl, TensorBoard event files and
Weights & Biases; a missing optional package is a ConfigError naming the extra to install."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import saelab
from saelab.errors import ConfigError


def _fit(out, log_to, steps=6):
    x = torch.randn(512, 16, generator=torch.Generator().manual_seed(0))
    cfg = saelab.TrainConfig(steps=steps, batch_size=64, progress=False, log_every=2,
                             out=str(out), log_to=log_to)
    return saelab.fit(saelab.create("topk", d_in=16, n_latents=32, k=4), x, cfg)


def test_jsonl_is_the_default_and_the_only_default():
    assert saelab.TrainConfig().log_to == ["jsonl"]


def test_tensorboard_gets_the_rows_of_metrics_jsonl(tmp_path):
    pytest.importorskip("tensorboard", reason="pip install saelab[tensorboard]")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _fit(tmp_path, ["jsonl", "tensorboard"])
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"fvu", "l0", "dead_fraction", "lr", "loss"} <= set(tags)
    for tag in ("fvu", "loss", "lr"):
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in logged] == [r["step"] for r in rows] == [2, 4, 6]
        assert [v for _, v in logged] == pytest.approx([r[tag] for r in rows], rel=1e-6)


def test_tensorboard_alone_writes_no_metrics_jsonl(tmp_path):
    pytest.importorskip("tensorboard", reason="pip install saelab[tensorboard]")
    _fit(tmp_path, ["tensorboard"])
    assert not (tmp_path / "metrics.jsonl").exists()
    assert any((tmp_path / "tensorboard").iterdir())


@pytest.mark.parametrize("kind,module", [("tensorboard", "torch.utils.tensorboard"),
                                         ("wandb", "wandb")])
def test_a_missing_package_says_which_extra_to_install(tmp_path, monkeypatch, kind, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(ConfigError, match=rf"pip install saelab\[{kind}\]"):
        _fit(tmp_path / "run", [kind])
    assert not (tmp_path / "run").exists()  # refused before any work


def test_log_to_is_validated(tmp_path):
    with pytest.raises(ConfigError, match="log_to.*'csv'"):
        saelab.TrainConfig(log_to=["jsonl", "csv"])
    assert saelab.TrainConfig(log_to="tensorboard").log_to == ["tensorboard"]
    x = torch.randn(256, 16)
    with pytest.raises(ConfigError, match="tensorboard.*set out"):
        saelab.fit(saelab.create("topk", d_in=16, n_latents=32, k=4), x,
                   saelab.TrainConfig(steps=2, batch_size=64, progress=False,
                                      log_to=["tensorboard"]))


def test_wandb_gets_the_rows_of_metrics_jsonl(tmp_path, monkeypatch):
    """Through a stand-in `wandb` module recording what saelab calls (no account, no network)."""
    import types

    calls: dict = {"log": []}

    class FakeRun:
        def log(self, values, step):
            calls["log"].append((step, values))

        def finish(self):
            calls["finished"] = True

    def init(**kw):
        calls["init"] = kw
        return FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    _fit(tmp_path, ["jsonl", "wandb"])
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [s for s, _ in calls["log"]] == [r["step"] for r in rows]
    for (_, values), row in zip(calls["log"], rows):
        assert values == {k: v for k, v in row.items() if k != "step"}
    assert calls["finished"] and calls["init"]["config"]["train"]["batch_size"] == 64
