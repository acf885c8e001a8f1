"""fit_many: several dictionaries at several hookpoints from one pass over the data.

Each dictionary must end with the weights that saelab.fit gives it alone on the same batches, and
the model must run one forward per batch of contexts whatever the number of dictionaries."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import saelab
from saelab.errors import ConfigError
from saelab.store import ActivationStore, capture_to_store, stream_batches
from saelab.train import LiveSource, fit_many

HP1, HP3 = "model.layers.1", "model.layers.2"
CFG = saelab.TrainConfig(steps=None, batch_size=32, lr=3e-3, warmup_steps=2, seed=3,
                         progress=False, dead_after_tokens=64)


def make(arch="topk", k=4, seed=0, n=64):
    return saelab.create(arch, d_in=32, n_latents=n, k=k, seed=seed)


def clone(sae):
    other = saelab.create(sae.architecture, d_in=32, n_latents=sae.n_latents, k=sae.cfg.k)
    other.load_state_dict(sae.state_dict())
    return other


def assert_same_weights(a, b):
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


class Forwards:
    """Counts forwards of the model and of its unembedding (the last module)."""

    def __init__(self, model):
        self.model = self.head = 0
        self.handles = [model.register_forward_pre_hook(self._model),
                        model.lm_head.register_forward_pre_hook(self._head)]

    def _model(self, *_):
        self.model += 1

    def _head(self, *_):
        self.head += 1

    def remove(self):
        for h in self.handles:
            h.remove()


@pytest.fixture
def long_tokens():
    g = torch.Generator().manual_seed(7)
    return torch.randint(2, 64, (40, 16), generator=g)


def test_live_source_matches_training_each_alone_and_runs_one_forward_per_batch(tiny_lm,
                                                                             long_tokens):
    live = LiveSource(tiny_lm, long_tokens, batch_contexts=4, buffer_rows=128, norm_factor=None)
    stream = {"buffer_rows": 128, "batch_contexts": 4, "norm_factor": None, "seed": CFG.seed}
    batches = list(stream_batches(tiny_lm, long_tokens, [HP1, HP3], 32, **stream))
    steps = len(batches)
    assert steps >= 15
    cfg = replace(CFG, steps=steps)
    low_lr = replace(cfg, lr=1e-3)
    a, b, c = make(k=4, seed=1), make("batchtopk", k=6, seed=2), make(k=3, seed=3, n=48)
    alone = [clone(a), clone(b), clone(c)]

    counter = Forwards(tiny_lm)
    try:
        fit_many({HP1: [a, (b, low_lr)], HP3: c}, live, cfg)
    finally:
        counter.remove()
    n_forwards = -(-long_tokens.shape[0] // 4)
    assert counter.model == n_forwards  # one forward per 4 contexts feeds all three
    assert counter.head == 0  # stopped after the deepest hookpoint (layer 2 of 4)

    saelab.fit(alone[0], [(x1,) for x1, _ in batches], cfg)
    saelab.fit(alone[1], [(x1,) for x1, _ in batches], low_lr)
    saelab.fit(alone[2], [(x3,) for _, x3 in batches], cfg)
    for trained, reference in zip([a, b, c], alone):
        assert_same_weights(trained, reference)
    assert a.provenance["hookpoint"] == HP1 and c.provenance["hookpoint"] == HP3
    untrained = make(k=4, seed=1)
    assert any(not torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                      untrained.state_dict().values()))


def test_forward_count_does_not_grow_with_the_number_of_dictionaries(tiny_lm, long_tokens):
    live = LiveSource(tiny_lm, long_tokens, batch_contexts=8, buffer_rows=64, norm_factor=None)
    steps = len(list(stream_batches(tiny_lm, long_tokens, HP1, 32, buffer_rows=64,
                                    norm_factor=None, seed=CFG.seed)))
    counts = []
    for n in (1, 4):
        counter = Forwards(tiny_lm)
        try:
            fit_many({HP1: [make(seed=i) for i in range(n)]}, live, replace(CFG, steps=steps))
        finally:
            counter.remove()
        counts.append(counter.model)
    assert counts == [5, 5]


def test_store_source_reads_each_shard_once_and_matches_fit_per_hookpoint(tiny_lm, long_tokens,
                                                                          tmp_path):
    store = capture_to_store(tiny_lm, long_tokens, [HP1, HP3], tmp_path / "s", model_name="tiny",
                             norm_factor=None, shard_rows=100, progress=False)
    n_shards = len(store.manifest["shards"])
    assert n_shards >= 4
    reads = []
    read, read_into = store.read_shard, store.read_shard_into
    store.read_shard = lambda i, names: reads.append((i, tuple(names))) or read(i, names)
    store.read_shard_into = lambda i, names, dest: (reads.append((i, tuple(names)))
                                                    or read_into(i, names, dest))
    cfg = replace(CFG, buffer_rows=256, out=str(tmp_path / "runs"))
    a, c = make(seed=1), make(seed=3)
    alone = [clone(a), clone(c)]
    fit_many({HP1: a, HP3: c}, store, cfg)
    assert sorted(i for i, _ in reads) == list(range(n_shards))  # one epoch: each shard once
    assert all(len(names) == 2 for _, names in reads)  # both hookpoints from the same read

    for sae, key, name in ((alone[0], HP1, "a"), (alone[1], HP3, "c")):
        saelab.fit(sae, ActivationStore(tmp_path / "s"),
                   replace(cfg, hookpoint=key, out=str(tmp_path / name)))
    assert_same_weights(a, alone[0])
    assert_same_weights(c, alone[1])
    saved = saelab.load(tmp_path / "runs" / HP1 / "sae")
    assert_same_weights(saved, a)
    assert (tmp_path / "runs" / HP3 / "metrics.jsonl").read_text().count("\n") >= 1


def test_in_memory_rows_and_bad_requests(tiny_lm, long_tokens):
    x = torch.randn(256, 32)
    y = torch.randn(256, 32) * 3
    a, b = make(seed=1), make(seed=2)
    ref = [clone(a), clone(b)]
    cfg = replace(CFG, steps=12)
    fit_many({"x": a, "y": b}, {"x": x, "y": y}, cfg)
    saelab.fit(ref[0], (x,), cfg)
    saelab.fit(ref[1], (y,), cfg)
    assert_same_weights(a, ref[0])
    assert_same_weights(b, ref[1])

    live = LiveSource(tiny_lm, long_tokens)
    with pytest.raises(ConfigError, match="one hookpoint"):
        fit_many({"model.layers.*": make()}, live, cfg)
    with pytest.raises(ConfigError, match="give steps"):
        fit_many({HP1: make()}, live, replace(cfg, steps=None))
    with pytest.raises(ConfigError, match="shared"):
        fit_many({HP1: (make(), replace(cfg, batch_size=64))}, live, cfg)
