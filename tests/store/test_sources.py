"""Sources: every kind of training data becomes row-aligned batches with one feed per dictionary;
keyed data (a store, {hookpoint: tensor}, dict batches) is read once for all of them."""

from __future__ import annotations

import pytest
import torch

import saelab
from saelab.errors import ConfigError, DataError
from saelab.store import Want, open_source

CFG = saelab.TrainConfig(batch_size=32, seed=1)


def test_mapping_feeds_each_dictionary_its_hookpoint_and_target():
    x, y = torch.randn(128, 8), torch.randn(128, 4)
    src = open_source({"x": x, "y": y}, [Want("x", 8, 8), Want("x", 8, 4, target="y"),
                                         Want("y", 4, 4)], CFG)
    batch = next(src.batches(0))
    assert len(batch) == 2  # x and y, each once
    rows = {tuple(r.tolist()): i for i, r in enumerate(x)}
    for feed, (inp, tgt) in zip(src.feeds, [("x", None), ("x", "y"), ("y", None)]):
        got, target, _ = feed.split(batch)
        ref = {"x": x, "y": y}
        idx = [rows[tuple(r.tolist())] for r in batch[0]]  # the rows drawn this batch
        assert torch.equal(got, ref[inp][idx])
        assert (target is None) if tgt is None else torch.equal(target, ref[tgt][idx])
    assert src.per_epoch == 4


def test_an_iterable_of_dict_batches_is_read_by_hookpoint():
    batches = [{"a": torch.randn(16, 8), "b": torch.randn(16, 8)} for _ in range(3)]
    src = open_source(batches, [Want("b", 8, 8), Want("a", 8, 8)], CFG)
    first = next(src.batches(1))  # from batch index 1 on
    assert torch.equal(src.feeds[0].split(first)[0], batches[1]["b"])
    assert torch.equal(src.feeds[1].split(first)[0], batches[1]["a"])
    with pytest.raises(DataError, match="hookpoints"):
        next(open_source(batches, [Want("c", 8, 8)], CFG).batches(0))


def test_an_iterable_of_tensors_or_pairs_feeds_one_dictionary():
    x, y = torch.randn(16, 8), torch.randn(16, 4)
    feed = open_source([x], [Want(None, 8, 8)], CFG).feeds[0]
    assert feed.split((x,))[1] is None  # no target in a batch of one tensor
    assert torch.equal(feed.split((x, y))[1], y)


def test_keyed_data_needs_hookpoints_that_it_holds():
    x = torch.randn(64, 8)
    with pytest.raises(DataError, match="no rows for z"):
        open_source({"x": x}, [Want("z", 8, 8)], CFG)
    with pytest.raises(ConfigError, match="keyed by hookpoint"):
        open_source({"x": x}, [Want(None, 8, 8)], CFG)
    with pytest.raises(DataError, match="row-aligned"):
        open_source({"x": x, "y": x[:10]}, [Want("x", 8, 8), Want("y", 8, 8)], CFG)


def test_a_store_is_read_once_for_every_hookpoint_a_dictionary_needs(tiny_lm, tokens, tmp_path):
    from saelab.store import capture_to_store

    hps = ["model.layers.1", "model.layers.2"]
    store = capture_to_store(tiny_lm, tokens, hps, tmp_path / "s", model_name="tiny",
                             progress=False)
    src = open_source(store.path, [Want(hps[0], 32, 32, target=hps[1]), Want(hps[1], 32, 32)],
                      CFG)
    batch = next(src.batches(0))
    assert len(batch) == 2
    assert src.feeds[0].target == src.feeds[1].input
    assert src.feeds[0].describe["target_hookpoint"] == hps[1]
    with pytest.raises(DataError, match="d_in=16"):
        open_source(store.path, [Want(hps[0], 16, 16)], CFG)
