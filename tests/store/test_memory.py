"""The store reader's memory stays bounded by its shuffle buffer, whatever the store's size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import weakref

import pytest
import torch
from torch import nn

from saelab.store import ShuffledBatches, capture_to_store
from tests.store.test_store import HP, make_store


def test_reading_straight_into_the_buffer_gives_the_rows_of_read_shard(tiny_lm, tokens,
                                                                          tmp_path):
    store = make_store(tiny_lm, tokens, tmp_path / "s", shard_rows=100)
    names = [f"acts/{k}" for k in store.hookpoints]
    for i in range(len(store.manifest["shards"])):
        expected = store.read_shard(i, names)
        dest = tuple(torch.full_like(t, float("nan")) for t in expected)
        assert store.read_shard_into(i, names, dest)
        assert all(torch.equal(a, b) for a, b in zip(dest, expected))
    wrong = (torch.empty(1, 1),) * len(names)
    assert not store.read_shard_into(0, names, wrong)


def test_shuffled_store_batches_do_not_depend_on_how_the_buffer_is_filled(tiny_lm, tokens,
                                                                          tmp_path):
    store = make_store(tiny_lm, tokens, tmp_path / "s", shard_rows=60)
    direct = store.shuffled_hookpoints(HP, 32, buffer_rows=150, seed=2)
    through_copies = store.shuffled_hookpoints(HP, 32, buffer_rows=150, seed=2)
    through_copies.load_into = None
    a, b = direct.iterate(), through_copies.iterate()
    n = 2 * direct.batches_per_epoch()
    assert n > 4
    for _ in range(n):
        x, y = next(a), next(b)
        assert len(x) == 2 and all(torch.equal(u, v) for u, v in zip(x, y))


def test_one_buffer_for_the_whole_iteration_filled_in_place():
    """Groups are read straight into one buffer allocated once: no second copy, no buffer per
    group (only the very first chunk goes through `load`, to learn the row shape)."""
    x = torch.randn(1000, 4)
    bases: list[weakref.ref] = []
    events = []

    def load(i):
        events.append("load")
        return (x[i * 100:(i + 1) * 100].clone(),)

    def load_into(i, dest):
        events.append("into")
        if not bases or bases[-1]() is not dest[0]._base:
            bases.append(weakref.ref(dest[0]._base))
        dest[0].copy_(x[i * 100:(i + 1) * 100])
        return True

    sb = ShuffledBatches([100] * 10, load, batch_size=50, buffer_rows=300, seed=0,
                         load_into=load_into)
    it = sb.iterate()
    epochs = [torch.cat([next(it)[0] for _ in range(sb.batches_per_epoch(e))]) for e in (0, 1)]
    assert len(sb.groups(0)) >= 4
    assert len(bases) == 1 and bases[0]() is not None
    assert bases[0]().shape[0] == 300  # the buffer, not the data
    assert events.count("load") == 1 and events.count("into") == 19
    for rows in epochs:  # every row of a group that fills whole batches, once per epoch
        assert len(set(rows[:, 0].tolist())) == rows.shape[0]
        assert set(rows[:, 0].tolist()) <= set(x[:, 0].tolist())
    assert not torch.equal(epochs[0], epochs[1])


class _Synthetic(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.embed = nn.Embedding(512, d)
        self.acts = nn.Identity()

    def forward(self, input_ids):
        x = self.embed(input_ids)
        return self.acts(x + torch.randn_like(x))


CHILD = """
import json, re, sys
from saelab.store import ActivationStore

def status(field):
    return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024

store = ActivationStore(sys.argv[1])
base = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current resident size
it = store.shuffled(1024, buffer_rows=int(sys.argv[2]), seed=0)
batches = it.iterate()
for _ in range(it.batches_per_epoch()):
    next(batches)
print(json.dumps({"base_mb": base, "peak_mb": status("VmHWM")}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_peak_memory_of_a_read_follows_the_buffer_not_the_store(tmp_path):
    torch.manual_seed(0)
    d = 512
    tokens = torch.randint(0, 512, (320, 128))  # 40,960 rows x 512 float32 = 80 MB
    store = capture_to_store(_Synthetic(d).requires_grad_(False), tokens, ["acts"],
                             tmp_path / "big", model_name="synthetic", norm_factor=None,
                             batch_contexts=64, shard_rows=2048, progress=False)
    store_mb = store.n_rows * d * 4 / 2**20
    assert store_mb > 75

    def growth(buffer_rows: int) -> float:
        out = subprocess.run([sys.executable, "-c", CHILD, str(store.path), str(buffer_rows)],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        return r["peak_mb"] - r["base_mb"]

    small = growth(4096)  # an 8 MB buffer: the store is 10x the buffer
    whole = growth(store.n_rows)  # the whole store in the buffer (the check sees memory grow)
    # measured here: 37 MB for the small buffer (the buffer, one shard, one batch, and library
    # code paged in on first use), 100 MB with the whole store in the buffer
    assert small < 0.6 * store_mb, (small, store_mb)
    assert whole - small > 0.6 * store_mb, (small, whole, store_mb)
