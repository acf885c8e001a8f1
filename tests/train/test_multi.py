"""fit_many: several dictionaries at several hookpoints from one pass over the data.

Each dictionary must end with the weights that saelab.fit gives it alone on the same batches, and
the model must run one forward per batch of contexts whatever the number of dictionaries."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

import saelab
from tests.steps import counted, killed_at
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


def test_pairs_come_back_as_dictionaries_saved_where_the_docs_say(tmp_path):
    x, y = torch.randn(256, 32), torch.randn(256, 32)
    cfg = replace(CFG, steps=6, out=str(tmp_path / "runs"))
    a, b, c, d = (make(seed=i) for i in range(4))
    own = replace(cfg, lr=1e-3, out=str(tmp_path / "own"))
    same_out = replace(cfg, lr=1e-3)  # a copy of the shared config: its out is the shared one
    trained = fit_many({"x": [a, (b, own)], "y:0": (c, same_out), "y": d},
                       {"x": x, "y:0": y, "y": y}, cfg)
    assert trained == {"x": [a, b], "y:0": c, "y": d}  # dictionaries, never the pairs
    assert all(isinstance(v, saelab.Dictionary) for v in (*trained["x"], c, d))
    folders = {"x-0": a, "own": b, "y_0": c, "y": d}
    assert saelab.train.run_folder(cfg.out, "x", 0) == tmp_path / "runs" / "x-0"
    for name, sae in folders.items():
        where = tmp_path / ("own" if name == "own" else f"runs/{name}")
        assert_same_weights(saelab.load(where / "sae"), sae)
        assert (where / "metrics.jsonl").is_file()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["x-0", "y", "y_0"]
    assert ":" not in str(saelab.train.run_folder("o", "model.layers.1:mlp_hidden"))


def test_two_members_in_one_folder_are_refused(tmp_path):
    x = torch.randn(256, 32)
    cfg = replace(CFG, steps=2)
    shared = replace(cfg, out=str(tmp_path / "one"))
    with pytest.raises(ConfigError, match="its own out"):
        fit_many({"x": [(make(), shared), (make(), shared)]}, {"x": x}, cfg)


def test_a_transcoder_trained_with_others_matches_it_trained_alone():
    x, y = torch.randn(256, 32), torch.randn(256, 32) * 4 + 1
    cfg = replace(CFG, steps=10)
    tc = saelab.create("transcoder", d_in=32, n_latents=64, k=4, seed=5)
    sae = make(seed=6)
    alone = saelab.create("transcoder", d_in=32, n_latents=64, k=4, seed=5)
    fit_many({"x": [(tc, replace(cfg, target_hookpoint="y")), sae]}, {"x": x, "y": y}, cfg)
    saelab.fit(alone, (x, y), cfg)
    assert_same_weights(tc, alone)
    assert tc.provenance["target_scale"] != tc.provenance["input_scale"]


def test_a_killed_fit_many_resumes_every_member_to_the_same_weights(tmp_path):
    x, y = torch.randn(512, 32), torch.randn(512, 32) * 2
    cfg = replace(CFG, steps=12, checkpoint_every=4, out=str(tmp_path / "full"))
    full = fit_many({"x": make(seed=1), "y": make(seed=2)}, {"x": x, "y": y}, cfg)
    killed = replace(cfg, out=str(tmp_path / "killed"))
    with killed_at(6, key="y"), pytest.raises(KeyboardInterrupt):
        fit_many({"x": make(seed=1), "y": make(seed=2)}, {"x": x, "y": y}, killed)
    taken: list[int] = []
    with counted(taken):
        resumed = fit_many({"x": make(seed=1), "y": make(seed=2)}, {"x": x, "y": y}, killed)
    assert taken == [s for s in range(4, 12) for _ in range(2)]  # both from the step-4 checkpoint
    for key in ("x", "y"):
        assert_same_weights(full[key], resumed[key])
        steps = [json.loads(ln)["step"] for ln in
                 (tmp_path / "killed" / key / "metrics.jsonl").read_text().splitlines()]
        assert steps == sorted(set(steps))
