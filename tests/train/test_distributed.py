"""torch.distributed: two gloo ranks on this machine against one process.

One spawn of two ranks runs every distributed scenario (process start-up dominates the cost); the
tests then compare what the ranks saved with single-process runs on the same data."""

from __future__ import annotations

import datetime
import json
import os

import pytest
import torch

import saelab
from saelab.train import TrainConfig
from saelab.train import distributed as D
from tests.spawn import free_port, run_ranks

HP = ["model.layers.1", "model.layers.2"]
WORLD = 2


def _data() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    atoms = torch.randn(48, 16, generator=g)
    codes = torch.rand(1024, 48, generator=g) * (torch.rand(1024, 48, generator=g) < 0.08)
    return codes @ atoms + 0.3


def _cfg(**kw) -> TrainConfig:
    base = {"steps": 12, "batch_size": 128, "lr": 3e-3, "warmup_steps": 2, "progress": False,
            "log_every": 4, "checkpoint_every": 6, "seed": 0}
    return TrainConfig(**{**base, **kw})


def _dictionary(arch: str, d_in: int = 16):
    torch.manual_seed(0)
    extra = {"k": 4} if arch == "topk" else {}
    return saelab.create(arch, d_in=d_in, n_latents=64, **extra)


def _scenarios(rank: int, tmp: str, store: str, small: str) -> dict:
    """What each rank does; returns facts for the parent to check."""
    facts: dict = {}
    x = _data()
    for arch in ("topk", "relu"):
        sae = saelab.fit(_dictionary(arch), x, _cfg(out=f"{tmp}/dp_{arch}"))
        torch.save(sae.state_dict(), f"{tmp}/dp_{arch}_rank{rank}.pt")
    # a run killed after its checkpoint at step 6 resumes there (rank 0 reads the checkpoint and
    # sends the loop state and optimiser to rank 1)
    from tests.steps import counted, killed_at

    try:
        with killed_at(8):
            saelab.fit(_dictionary("topk"), x, _cfg(out=f"{tmp}/resumed"))
    except KeyboardInterrupt:
        facts["killed"] = True
    taken: list[int] = []
    with counted(taken):
        sae = saelab.fit(_dictionary("topk"), x, _cfg(out=f"{tmp}/resumed"))
    facts["resumed_steps"] = taken
    torch.save(sae.state_dict(), f"{tmp}/resumed_rank{rank}.pt")
    # data parallel over a store, each rank reading its own shards
    from saelab.store import ActivationStore

    read, original = [], ActivationStore.read_shard
    def recording(self, i, names):
        read.append(i)
        return original(self, i, names)
    ActivationStore.read_shard = recording
    try:
        sae = saelab.fit(_dictionary("topk", 32), store,
                         _cfg(out=f"{tmp}/dp_store", hookpoint=HP[0], batch_size=64, steps=8))
    finally:
        ActivationStore.read_shard = original
    torch.save(sae.state_dict(), f"{tmp}/dp_store_rank{rank}.pt")
    facts["shards_read"] = sorted(set(read))
    # a store of one shard: too few for the ranks to read their own; every rank reads it all
    sae = saelab.fit(_dictionary("topk", 32), small,
                     _cfg(hookpoint=HP[0], batch_size=64, steps=6, shard_store=True,
                          dead_after_tokens=10**6))  # no AuxK: its batch coupling is not exact
    torch.save(sae.state_dict(), f"{tmp}/small_rank{rank}.pt")
    # layer parallel: one hookpoint per rank
    trained = D.fit_hookpoints(lambda h: _dictionary("topk", 32), store, HP,
                               _cfg(out=f"{tmp}/lp", batch_size=64, steps=8))
    facts["hookpoints"] = sorted(trained)
    # an error on one rank is raised on every rank instead of hanging the others
    try:
        bad = x[:, :8] if rank == 1 else x
        saelab.fit(_dictionary("topk"), bad, _cfg())
    except saelab.SaelabError as e:
        facts["error"] = str(e)
    return facts


def _cli(tmp: str, store: str, port: int, *args: str) -> int:
    """`saelab train` as torchrun starts it: the environment names the rank and the rendezvous."""
    from saelab.cli import main

    os.environ["MASTER_PORT"] = str(port)
    code = main(["train", store, "--n-latents", "64", "--k", "4", "--steps", "4",
                 "--batch-size", "64", "--no-progress", *args])
    assert not D.is_initialized()  # the command tore down the process group it started
    return code


def _worker(rank: int, ports: list[int], tmp: str, store: str, small: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1")
    facts = {"cli": [_cli(tmp, store, ports[0], "--hookpoint", HP[1], "--out", f"{tmp}/cli"),
                     _cli(tmp, store, ports[1], "--hookpoints", *HP, "--out", f"{tmp}/cli_lp")]}
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{ports[2]}",
                                         rank=rank, world_size=WORLD,
                                         timeout=datetime.timedelta(seconds=60))
    try:
        facts.update(_scenarios(rank, tmp, store, small))
        with open(f"{tmp}/facts_rank{rank}.json", "w") as f:
            json.dump(facts, f)
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def store(tiny_lm, tmp_path_factory):
    from saelab.store import capture_to_store

    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(3, 64, (16, 32), generator=g)
    path = tmp_path_factory.mktemp("dist") / "store"
    capture_to_store(tiny_lm, tokens, HP, path, model_name="tiny", shard_rows=96,
                     batch_contexts=4, progress=False)
    return path


@pytest.fixture(scope="module")
def small_store(tiny_lm, tmp_path_factory):
    """A store of one shard (fewer shards than ranks)."""
    from saelab.store import capture_to_store

    tokens = torch.randint(3, 64, (8, 32), generator=torch.Generator().manual_seed(2))
    path = tmp_path_factory.mktemp("dist") / "small"
    capture_to_store(tiny_lm, tokens, HP[:1], path, model_name="tiny", progress=False)
    return path


@pytest.fixture(scope="module")
def ranks(store, small_store, tmp_path_factory):
    """Run the scenarios on two gloo ranks; returns (folder, facts of each rank)."""
    tmp = tmp_path_factory.mktemp("ranks")
    ports = [free_port() for _ in range(3)]
    run_ranks(_worker, (ports, str(tmp), str(store), str(small_store)), WORLD)
    facts = [json.loads((tmp / f"facts_rank{r}.json").read_text()) for r in range(WORLD)]
    return tmp, facts


def _weights(path) -> dict:
    return torch.load(path, weights_only=True)


def _assert_close(a: dict, b: dict, tol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert torch.allclose(v, b[k], atol=tol, rtol=tol), \
            f"{k}: max diff {(v - b[k]).abs().max():.3g}"


@pytest.mark.parametrize("arch", ["topk", "relu"])
def test_two_ranks_reach_the_weights_of_one_process(ranks, tmp_path, arch):
    tmp, _ = ranks
    one = saelab.fit(_dictionary(arch), _data(), _cfg(out=str(tmp_path / "one")))
    r0, r1 = _weights(tmp / f"dp_{arch}_rank0.pt"), _weights(tmp / f"dp_{arch}_rank1.pt")
    _assert_close(r0, r1, 0)  # the ranks hold identical weights
    _assert_close(one.state_dict(), r0)
    # only rank 0 wrote the run folder, and it holds what one process writes
    saved = saelab.load(tmp / f"dp_{arch}" / "sae")
    _assert_close(one.state_dict(), saved.state_dict())
    assert saved.provenance["ranks"] == WORLD and saved.provenance["steps"] == 12
    lines = (tmp / f"dp_{arch}" / "metrics.jsonl").read_text().splitlines()
    ref = (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(ref) == 3
    for a, b in zip(lines, ref):
        a, b = json.loads(a), json.loads(b)
        assert a["tokens"] == b["tokens"] and a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["dead_fraction"] == b["dead_fraction"]


def test_a_killed_two_rank_run_resumes_to_the_same_weights(ranks):
    tmp, facts = ranks
    assert all(f["killed"] for f in facts)
    assert [f["resumed_steps"] for f in facts] == [list(range(6, 12))] * WORLD
    full = _weights(tmp / "dp_topk_rank0.pt")
    for r in range(WORLD):
        _assert_close(full, _weights(tmp / f"resumed_rank{r}.pt"), 1e-6)
    steps = [json.loads(ln)["step"] for ln in
             (tmp / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 8, 12]


def test_store_shards_are_read_per_rank_and_the_ranks_agree(ranks, store):
    from saelab.store import ActivationStore

    tmp, facts = ranks
    _assert_close(_weights(tmp / "dp_store_rank0.pt"), _weights(tmp / "dp_store_rank1.pt"), 0)
    n = len(ActivationStore(store).manifest["shards"])
    assert n >= 2
    assert [f["shards_read"] for f in facts] == [list(range(0, n, 2)), list(range(1, n, 2))]
    cfg = json.loads((tmp / "dp_store" / "checkpoint" / "train_state.json").read_text())
    assert cfg["identity"]["data"]["ranks"] == WORLD
    assert cfg["identity"]["data"]["shard_store"] is True


def test_a_store_of_fewer_shards_than_ranks_is_read_whole_by_every_rank(ranks, small_store):
    from saelab.store import ActivationStore, shard_plan

    tmp, _ = ranks
    assert len(ActivationStore(small_store).manifest["shards"]) == 1
    r0, r1 = _weights(tmp / "small_rank0.pt"), _weights(tmp / "small_rank1.pt")
    _assert_close(r0, r1, 0)
    one = saelab.fit(_dictionary("topk", 32), small_store,
                     _cfg(hookpoint=HP[0], batch_size=64, steps=6, dead_after_tokens=10**6))
    _assert_close(one.state_dict(), r0)
    assert shard_plan([100], 2, 32) is None
    assert shard_plan([100, 100, 50], 2, 32) == [[0, 2], [1]]
    assert shard_plan([100, 20], 2, 32) is None  # rank 1 would get 20 rows for a batch of 32


def test_layer_parallel_gives_each_rank_its_hookpoints(ranks, store, tmp_path):
    tmp, facts = ranks
    assert [f["hookpoints"] for f in facts] == [[HP[0]], [HP[1]]]
    one = D.fit_hookpoints(lambda h: _dictionary("topk", 32), store, HP,
                           _cfg(out=str(tmp_path / "lp"), batch_size=64, steps=8))
    assert sorted(one) == HP
    for h in HP:
        saved = saelab.load(D.run_folder(tmp / "lp", h) / "sae")
        assert saved.provenance["hookpoint"] == h and "ranks" not in saved.provenance
        _assert_close(one[h].state_dict(), saved.state_dict(), 1e-6)


def test_saelab_train_under_torchrun_env_trains_data_and_layer_parallel(ranks):
    tmp, facts = ranks
    assert [f["cli"] for f in facts] == [[0, 0], [0, 0]]
    sae = saelab.load(tmp / "cli" / "sae")
    assert sae.provenance["ranks"] == WORLD and sae.provenance["hookpoint"] == HP[1]
    for h in HP:
        sae = saelab.load(D.run_folder(tmp / "cli_lp", h) / "sae")
        assert sae.provenance["hookpoint"] == h and "ranks" not in sae.provenance


def test_an_error_on_one_rank_is_raised_on_every_rank(ranks):
    _, facts = ranks
    assert "d_in=16" in facts[1]["error"]
    assert "another rank" in facts[0]["error"] and "d_in=16" in facts[0]["error"]


def test_batch_must_split_evenly_and_helpers_without_a_group():
    g = D.Group(1, 2)
    batch = (torch.arange(8.0)[:, None],)
    assert g.shard(batch)[0].flatten().tolist() == [4.0, 5.0, 6.0, 7.0]
    with pytest.raises(saelab.SaelabError, match="evenly"):
        g.shard((torch.zeros(3, 1),))
    assert not D.is_initialized() and D.world_size() == 1 and D.rank() == 0
    assert D.Group.current().world == 1
    assert D.hookpoints_of_rank(["a", "b", "c"], 1, 2) == ["b"]
    with pytest.raises(saelab.SaelabError, match="multiple"):
        from saelab.store import Want, open_source
        open_source(_data(), [Want(None, 16, 16)], _cfg(batch_size=127), g)
