"""The delta captured into an activation store on disk: the same rows as in memory, with
(image, step, position) per row; resumable; saelab.fit trains on it."""

from __future__ import annotations

import pytest
import torch

import saelab
from saelab.errors import OutputExistsError
from saelab.steer import diffusion_store
from saelab.steer.diffusion import capture_deltas, initial_latents, random_conditioning
from saelab.steer.diffusion_store import capture_deltas_to_store
from tests.diffusion.conftest import BLOCK, N_STEPS

STEPS = [1, 3]


@pytest.fixture(scope="module")
def five(model):
    return random_conditioning(model, 5, seed=2), initial_latents(model, 5, seed=2)


def store_rows(store):
    x = torch.cat([a for a, _ in store.iter_rows()])
    (step,) = zip(*(store.read_shard(i, ["step"]) for i in range(len(store.manifest["shards"]))))
    return x, store.row_index(), torch.cat(step)


def capture(model, five, out, **kw):
    return capture_deltas_to_store(model, BLOCK, *five, N_STEPS, out, steps=STEPS,
                                   batch_images=2, shard_rows=600, **kw)


def test_store_holds_the_in_memory_rows_with_image_step_and_position(model, five, tmp_path):
    store = capture(model, five, tmp_path / "s")
    rows = capture_deltas(model, BLOCK, *five, N_STEPS, steps=STEPS, batch_images=2)
    x, index, step = store_rows(store)
    assert store.complete and store.n_rows == 5 * len(STEPS) * 256 == rows.x.shape[0]
    assert len(store.manifest["shards"]) == 3 and store.manifest["context_len"] == 512
    assert store.manifest["diffusion"]["grid"] == [16, 16]
    # the same (image, step, position) -> the same row, bit for bit
    key = lambda img, st, pos: (img * 10 + st) * 1000 + pos  # noqa: E731
    ours = torch.argsort(key(index["ctx"], step, index["pos"]))
    theirs = torch.argsort(key(rows.image, rows.step, rows.position))
    assert torch.equal(x[ours], rows.x[theirs])
    assert torch.equal(index["token"], torch.full_like(index["token"], -1))


def test_a_killed_capture_resumes_to_the_same_store(model, five, tmp_path, monkeypatch):
    whole = store_rows(capture(model, five, tmp_path / "whole"))
    real, calls = diffusion_store._batch_rows, []

    def dies_on_the_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(diffusion_store, "_batch_rows", dies_on_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        capture(model, five, tmp_path / "s")
    killed = saelab.store.ActivationStore(tmp_path / "s")
    assert not killed.complete and killed.manifest["contexts_done"] == 4
    starts: list[int] = []
    monkeypatch.setattr(diffusion_store, "_batch_rows",
                        lambda *a, **k: starts.append(a[6]) or real(*a, **k))
    resumed = capture(model, five, tmp_path / "s")
    x, index, step = store_rows(resumed)
    assert starts == [4]  # only the last image was captured again
    assert torch.equal(x, whole[0]) and torch.equal(step, whole[2])
    assert all(torch.equal(index[k], whole[1][k]) for k in ("ctx", "pos"))


def test_other_inputs_in_the_same_folder_are_refused_without_overwrite(model, five, tmp_path):
    capture(model, five, tmp_path / "s")
    other = (five[0], five[1] + 1)
    with pytest.raises(OutputExistsError, match="other settings"):
        capture(model, other, tmp_path / "s")
    assert capture(model, other, tmp_path / "s", overwrite=True).complete


def test_fit_on_the_store_records_the_block_for_steering(model, five, tmp_path):
    store = capture(model, five, tmp_path / "s")
    sae = saelab.fit(saelab.create("topk", d_in=32, n_latents=64, k=4, seed=0), store,
                     saelab.TrainConfig(epochs=1, batch_size=256, progress=False))
    assert sae.provenance["hookpoint"] == f"{BLOCK}:delta"
    assert sae.provenance["model"] == "tiny-unet"
