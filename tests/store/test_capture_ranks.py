"""Capture under torchrun: two gloo processes on this machine write one store, each its span of
the contexts, and a capture killed on one rank resumes where each rank stopped.

One spawn of two ranks runs every scenario (process start-up dominates the cost)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from saelab.store import ActivationStore
from saelab.store.reader import acts_name
from tests.spawn import free_port, run_ranks

WORLD = 2
HP = "model.layers.1"
TEXT = " ".join(f"Sentence number {i} tells of the river, the hill and the town of {i * 7}."
                for i in range(400))


def _settings(folder: str, data: str, model: str) -> dict:
    return dict(out=folder, model=model, dataset=data, hookpoints=[HP], context_len=16,
                n_tokens=16 * 40, batch_contexts=4, shard_rows=48, progress=False)


def _worker(rank: int, ports: list[int], tmp: str, data: str, model: str) -> None:
    import saelab.store.writer as writer
    from saelab.cli import main
    from saelab.pipeline import CaptureConfig, capture

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1")
    facts: dict = {}
    # 1. the CLI as torchrun starts it
    os.environ["MASTER_PORT"] = str(ports[0])
    s = _settings(f"{tmp}/cli", data, model)
    facts["cli"] = main(["capture", "--model", model, "--dataset", data, "--hookpoints", HP,
                         "--context-len", "16", "--n-tokens", str(s["n_tokens"]),
                         "--batch-contexts", "4", "--shard-rows", "48", "--out", s["out"],
                         "--no-progress"])
    facts["initialized_after"] = torch.distributed.is_initialized()
    # 2. killed on rank 1 after its first shard, then run again
    flush, run = writer.flush_shard, writer._run
    written = []

    def failing_flush(*args, **kw):
        flush(*args, **kw)
        written.append(kw.get("contexts_done"))
        if rank == 1 and len(written) == 1:
            raise RuntimeError("killed")

    os.environ["MASTER_PORT"] = str(ports[1])
    writer.flush_shard = failing_flush
    try:
        capture(CaptureConfig(**_settings(f"{tmp}/killed", data, model)))
    except Exception as e:  # noqa: BLE001 - recorded for the test
        facts["first_error"] = f"{type(e).__name__}: {e}"
    writer.flush_shard = flush
    facts["progress_files"] = sorted(p for p in os.listdir(f"{tmp}/killed")
                                     if p.startswith("progress"))
    seen = []

    def counting_run(cap, batch, start):
        seen.append((start, len(batch)))
        return run(cap, batch, start)

    writer._run = counting_run
    os.environ["MASTER_PORT"] = str(ports[2])
    capture(CaptureConfig(**_settings(f"{tmp}/killed", data, model)))
    writer._run = run
    facts["rerun_contexts"] = seen
    with open(f"{tmp}/facts_rank{rank}.json", "w") as f:
        json.dump(facts, f)


@pytest.fixture(scope="module")
def ranks(model_dir, tmp_path_factory):
    """The two-rank captures, and the one-process capture of the same settings."""
    from saelab.pipeline import CaptureConfig, capture

    tmp = tmp_path_factory.mktemp("ranks")
    data = tmp / "text.txt"
    data.write_text(TEXT)
    capture(CaptureConfig(**_settings(str(tmp / "single"), str(data), str(model_dir))))
    ports = [free_port() for _ in range(3)]
    run_ranks(_worker, (ports, str(tmp), str(data), str(model_dir)), WORLD)
    facts = [json.loads((tmp / f"facts_rank{r}.json").read_text()) for r in range(WORLD)]
    return tmp, facts


def _rows(path) -> dict[tuple[int, int], torch.Tensor]:
    store = ActivationStore(path)
    out = {}
    for i in range(len(store.manifest["shards"])):
        acts, ctx, pos = store.read_shard(i, [acts_name(HP), "ctx", "pos"])
        out.update({(int(c), int(p)): a for a, c, p in zip(acts, ctx, pos)})
    return out


def _assert_same_rows(path, single) -> None:
    got, want = _rows(path), _rows(single)
    assert got.keys() == want.keys()
    diff = max(float((got[k] - want[k]).abs().max()) for k in want)
    assert diff < 1e-4, diff


def test_two_ranks_write_one_store_with_the_rows_of_one_process(ranks):
    tmp, facts = ranks
    assert [f["cli"] for f in facts] == [0, 0]
    assert not any(f["initialized_after"] for f in facts)  # the command tore its group down
    _assert_same_rows(tmp / "cli", tmp / "single")


def test_the_store_has_one_manifest_shards_named_by_rank_and_the_same_exclusion(ranks):
    tmp, _ = ranks
    store, single = ActivationStore(tmp / "cli"), ActivationStore(tmp / "single")
    names = [s["file"] for s in store.manifest["shards"]]
    assert {n.split("-")[0] for n in names} == {"r0", "r1"}
    assert names == sorted(names)  # rank order: rows keep the order of the contexts
    assert not list(tmp.glob("cli/progress-*"))
    assert store.complete and store.manifest["contexts_done"] == single.manifest["n_contexts"]
    assert store.manifest["exclusion"] == single.manifest["exclusion"]
    assert store.manifest["excluded_rows"] == single.manifest["excluded_rows"]
    assert store.verify() == len(names)
    stats, one = store.manifest["stats"][HP], single.manifest["stats"][HP]
    assert stats["count"] == one["count"] == store.n_rows
    assert stats["sum_sq_norm"] == pytest.approx(one["sum_sq_norm"], rel=1e-5)


def test_a_failure_on_one_rank_is_raised_on_both_and_the_rerun_resumes_each_rank(ranks):
    tmp, facts = ranks
    assert "RuntimeError: killed" in facts[1]["first_error"]
    assert "rank 1 of the capture failed: killed" in facts[0]["first_error"]
    assert facts[0]["progress_files"] == ["progress-r0.json", "progress-r1.json"]
    lo1 = 40 // 2
    rank1_starts = [s for s, _ in facts[1]["rerun_contexts"]]
    # rank 1 had written one shard before it was killed: the rerun starts after it
    assert rank1_starts and min(rank1_starts) > lo1
    # rank 0 had finished its whole span before the ranks compared notes: it runs nothing again
    assert facts[0]["rerun_contexts"] == []
    _assert_same_rows(tmp / "killed", tmp / "single")
    assert not list(tmp.glob("killed/progress-*"))
