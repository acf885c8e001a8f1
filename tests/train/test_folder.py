"""The run folder: a run killed before its first checkpoint reruns with the same command,
`overwrite` removes only what saelab wrote, and no run folder may overlap the store it reads."""

from __future__ import annotations

import json

import pytest
import torch

import saelab
from saelab.errors import ConfigError, OutputExistsError
from tests.steps import killed_at

HP = "model.layers.1"


def cfg(**kw):
    return saelab.TrainConfig(**{**dict(steps=12, batch_size=128, progress=False,
                                        checkpoint_every=100, log_every=2), **kw})


def topk():
    return saelab.create("topk", d_in=32, n_latents=64, k=3)


@pytest.fixture(scope="module")
def store(tiny_lm, tmp_path_factory):
    from saelab.store import capture_to_store

    tokens = torch.randint(3, 64, (8, 16), generator=torch.Generator().manual_seed(2))
    path = tmp_path_factory.mktemp("folder") / "store"
    capture_to_store(tiny_lm, tokens, [HP], path, model_name="tiny", progress=False)
    return path


def fit_killed_at(step: int, *args) -> None:
    """Run saelab.fit(*args), killed when it reaches `step`."""
    with killed_at(step), pytest.raises(KeyboardInterrupt):
        saelab.fit(*args)


def test_a_run_killed_before_its_first_checkpoint_reruns_with_the_same_command(planted,
                                                                              tmp_path):
    out = tmp_path / "run"
    fit_killed_at(5, topk(), planted.x[:4096], cfg(out=str(out)))
    assert not (out / "checkpoint").exists() and (out / "metrics.jsonl").exists()
    saelab.fit(topk(), planted.x[:4096], cfg(out=str(out)))  # no overwrite needed
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(2, 13, 2))  # one line per logged step: the killed run's are gone


def test_another_run_is_refused_without_overwrite_and_nothing_is_deleted(planted, tmp_path):
    out = tmp_path / "run"
    fit_killed_at(5, topk(), planted.x[:4096], cfg(out=str(out)))
    before = (out / "metrics.jsonl").read_text()
    with pytest.raises(OutputExistsError, match="other settings"):
        saelab.fit(topk(), planted.x[:4096], cfg(out=str(out), lr=1e-3))
    assert (out / "metrics.jsonl").read_text() == before


def test_overwrite_removes_only_what_saelab_wrote(planted, tmp_path):
    out = tmp_path / "run"
    saelab.fit(topk(), planted.x[:4096], cfg(out=str(out), checkpoint_every=6))
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="notes.txt"):
        saelab.fit(topk(), planted.x[:4096], cfg(out=str(out), lr=1e-3))
    saelab.fit(topk(), planted.x[:4096], cfg(out=str(out), lr=1e-3, overwrite=True))
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "run.json").read_text())["train"]["lr"] == 1e-3
    assert (out / "sae" / "cfg.json").exists()


@pytest.mark.parametrize("where", ["store", "store/inside", "parent"])
def test_a_run_folder_overlapping_its_store_is_refused_even_with_overwrite(store, where):
    out = {"store": store, "store/inside": store / "inside", "parent": store.parent}[where]
    files = sorted(p.name for p in store.iterdir())
    with pytest.raises(ConfigError, match="overlaps the data it reads"):
        saelab.fit(topk(), store, cfg(out=str(out), overwrite=True))
    assert sorted(p.name for p in store.iterdir()) == files


def test_metrics_hold_each_logged_step_once_after_a_resume_and_a_rerun(planted, tmp_path):
    out = tmp_path / "run"
    args = dict(steps=30, out=str(out), checkpoint_every=10, log_every=5)
    fit_killed_at(17, topk(), planted.x[:4096], cfg(**args))  # last checkpoint at step 10
    saelab.fit(topk(), planted.x[:4096], cfg(**args))
    saelab.fit(topk(), planted.x[:4096], cfg(**args))  # a rerun of the finished run
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 20, 25, 30]


def test_a_second_run_into_a_locked_folder_is_refused_and_a_killed_holder_leaves_no_lock(
        planted, tmp_path):
    import signal
    import subprocess
    import sys

    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, pathlib\n"
         "from saelab.train.folder import locked\n"
         f"with locked(pathlib.Path({str(out)!r})):\n"
         "    print('holding', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(OutputExistsError, match=f"in use by another saelab run "
                                                    f"\\(process {holder.pid}\\)"):
            saelab.fit(topk(), planted.x[:4096], cfg(out=str(out)))
    finally:
        holder.send_signal(signal.SIGKILL)  # a kill -9: the OS releases its lock
        holder.wait()
    saelab.fit(topk(), planted.x[:4096], cfg(out=str(out)))
    assert (out / "sae" / "cfg.json").exists()
