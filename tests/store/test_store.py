"""Activation store: layout, exclusion, resume after a kill, corrupt files, shuffled reading."""

from __future__ import annotations

import json

import pytest
import torch

from saelab.errors import FormatError, OutputExistsError
from saelab.store import ActivationStore, capture_to_store, stream_batches, tensor_batches
from saelab.store import writer
from saelab.store.shuffle import ShuffledBatches

HP = ["model.layers.1", "model.layers.2"]


def make_store(tiny_lm, tokens, path, **kw):
    args = dict(model_name="tiny", special_ids=[2], shard_rows=64, batch_contexts=4,
                progress=False)
    return capture_to_store(tiny_lm, tokens, HP, path, **{**args, **kw})


def test_store_layout_rows_and_metadata(tiny_lm, tokens, tmp_path):
    tokens = tokens.clone()
    tokens[:, 0] = 2  # a special token at every context start
    store = make_store(tiny_lm, tokens, tmp_path / "s")
    m = store.manifest
    assert store.complete and store.hookpoints == HP and store.d("model.layers.1") == 32
    assert len(m["shards"]) > 1 and store.n_rows + m["excluded_rows"] == tokens.numel()
    rows = store.row_index()
    assert not (rows["token"] == 2).any()
    assert torch.equal(rows["token"], tokens[rows["ctx"], rows["pos"]])
    # the stored activation of a row is what the model computes there
    from saelab.capture import capture
    acts = capture(tiny_lm, HP, tokens[:4])
    stored, ids = next(store.iter_rows("model.layers.2", batch_size=10))
    i = 3
    assert torch.allclose(stored[i], acts["model.layers.2"][rows["ctx"][i], rows["pos"][i]])
    assert store.mean_squared_norm("model.layers.1") > 0


def test_killed_capture_resumes_to_the_same_store(tiny_lm, tokens, tmp_path, monkeypatch):
    full = make_store(tiny_lm, tokens, tmp_path / "full")
    calls = {"n": 0}
    original = writer.flush_shard

    def dying_flush(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(writer, "flush_shard", dying_flush)
    with pytest.raises(KeyboardInterrupt):
        make_store(tiny_lm, tokens, tmp_path / "part")
    partial = json.loads((tmp_path / "part" / "manifest.json").read_text())
    assert not partial["complete"] and len(partial["shards"]) == 2
    monkeypatch.setattr(writer, "flush_shard", original)
    resumed = make_store(tiny_lm, tokens, tmp_path / "part")
    assert resumed.n_rows == full.n_rows
    a = torch.cat([x for x, _ in full.iter_rows("model.layers.1")])
    b = torch.cat([x for x, _ in resumed.iter_rows("model.layers.1")])
    assert torch.equal(a, b)


def test_other_settings_in_the_same_folder_are_refused(tiny_lm, tokens, tmp_path):
    make_store(tiny_lm, tokens, tmp_path / "s")
    with pytest.raises(OutputExistsError, match="overwrite"):
        make_store(tiny_lm, tokens[:10], tmp_path / "s")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        make_store(tiny_lm, tokens, tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_truncated_shard_and_corrupt_manifest_are_detected(tiny_lm, tokens, tmp_path):
    store = make_store(tiny_lm, tokens, tmp_path / "s")
    shard = store.path / store.manifest["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(FormatError, match="truncated"):
        ActivationStore(store.path)
    (store.path / "manifest.json").write_text("{not json")
    with pytest.raises(FormatError, match="corrupt"):
        ActivationStore(store.path)


def test_nan_activations_are_reported_with_the_hookpoint(tiny_lm, tokens, tmp_path):
    handle = tiny_lm.model.layers[1].register_forward_hook(
        lambda m, a, out: (out[0] * float("nan"),) + tuple(out[1:]) if isinstance(out, tuple)
        else out * float("nan"))
    try:
        from saelab.errors import DataError
        with pytest.raises(DataError, match="model.layers.1"):
            make_store(tiny_lm, tokens, tmp_path / "s")
    finally:
        handle.remove()


def test_shuffled_batches_cover_every_row_once_per_epoch_within_the_buffer():
    x = torch.arange(1000).float()[:, None]
    chunks = [x[i:i + 100] for i in range(0, 1000, 100)]
    loaded = []

    def load(i):
        loaded.append(i)
        return (chunks[i],)

    sb = ShuffledBatches([100] * 10, load, batch_size=50, buffer_rows=300, seed=0)
    assert all(sum(100 for _ in g) <= 300 for g in sb.groups(0))
    it = sb.iterate()
    epoch = torch.cat([next(it)[0] for _ in range(sb.batches_per_epoch(0))])
    assert sorted(epoch[:, 0].tolist()) == list(range(1000))
    assert not torch.equal(epoch[:, 0], torch.arange(1000).float())


def test_resuming_the_stream_at_a_batch_skips_without_reading():
    x = torch.randn(1000, 3)
    sb = tensor_batches(x, batch_size=64, seed=5)
    it = sb.iterate()
    first = [next(it)[0] for _ in range(40)]  # crosses an epoch boundary
    later = sb.iterate(start=25)
    for i in range(25, 40):
        assert torch.equal(next(later)[0], first[i])


def test_streaming_batches_come_from_the_model(tiny_lm, tokens):
    batches = list(stream_batches(tiny_lm, tokens, "model.layers.1", 32, buffer_rows=100,
                                  special_ids=[2], norm_factor=None))
    assert batches and all(b[0].shape == (32, 32) for b in batches)
    total = sum(b[0].shape[0] for b in batches)
    assert total > 0.8 * (tokens != 2).sum()


def flip_last_byte(file) -> None:
    """Alter one byte of a shard's data (the last byte of the file), leaving its header intact."""
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF
    file.write_bytes(bytes(data))


def test_a_shard_whose_data_bytes_were_altered_is_refused_when_read(tiny_lm, tokens, tmp_path):
    store = make_store(tiny_lm, tokens, tmp_path / "s")
    flip_last_byte(store.path / store.manifest["shards"][-1]["file"])
    opened = ActivationStore(store.path)  # opening reads no data: same size, header intact
    with pytest.raises(FormatError, match="does not match the checksum"):
        list(opened.iter_rows("model.layers.1"))
    with pytest.raises(FormatError, match="does not match the checksum"):
        ActivationStore(store.path).verify()
    rows = sum(len(x) for x, _ in ActivationStore(store.path, verify=False).iter_rows(
        "model.layers.1"))  # the explicit opt-out reads it
    assert rows == store.n_rows


def test_a_manifest_that_overstates_a_shards_rows_is_refused_naming_both_counts(
        tiny_lm, tokens, tmp_path):
    store = make_store(tiny_lm, tokens, tmp_path / "s")
    manifest = json.loads((store.path / "manifest.json").read_text())
    real = manifest["shards"][0]["rows"]
    manifest["shards"][0]["rows"] = real + 5
    (store.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FormatError, match=f"holds {real + 5} rows, the shard holds {real}"):
        list(ActivationStore(store.path).iter_rows("model.layers.1"))
    with pytest.raises(FormatError, match=f"holds {real + 5} rows, the shard holds {real}"):
        next(iter(ActivationStore(store.path).shuffled(32, "model.layers.1")))
