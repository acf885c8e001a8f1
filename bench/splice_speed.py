"""Spliced-loss evaluation: the conditions sharing the forward up to the hookpoint, against one
whole forward per condition, and a bare forward of the model, on SmolLM2-135M.

The demo's setting: the demo's SAE at model.layers.15 (of 30), 64 held-out contexts of 128 tokens
of the packaged Wikipedia summaries, batches of 8 contexts, four conditions (clean, spliced,
zero- and mean-ablated). Each way is run twice, interleaved, and the faster run counts:

    OMP_NUM_THREADS=2 python bench/splice_speed.py --write

needs demo_out/ (`make demo`); writes bench/results/splice_speed.json, shown in
docs/benchmarks/evaluation.md.
"""

from __future__ import annotations

import argparse
import importlib
import os
import time
from pathlib import Path

import torch

from results_records import merge_records  # noqa: E402  (bench/, beside this file)

RESULTS = Path(__file__).parent / "results"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="demo_out", help="the demo's run folder")
    p.add_argument("--contexts", type=int, default=64)
    p.add_argument("--write", action="store_true", help="write bench/results/splice_speed.json")
    args = p.parse_args(argv)
    import saelab
    from saelab.capture.exclude import Exclusion
    from saelab.evaluate import spliced_loss
    from saelab.models import load
    from saelab.store import ActivationStore

    splice = importlib.import_module("saelab.evaluate.splice")
    run = Path(args.run)
    sae = saelab.load(run / "sae")
    store = ActivationStore(run / "store_eval")
    tokens = store.contexts()["tokens"][:args.contexts]
    exclusion = Exclusion.from_json(store.manifest["exclusion"])
    mean = store.mean(sae.provenance["hookpoint"])
    lm = load("smollm2-135m")
    hookpoint = sae.provenance["hookpoint"]
    load_avg = os.getloadavg()
    print(f"load {load_avg[0]:.1f}, {torch.get_num_threads()} threads, {tokens.numel():,} tokens, "
          f"hookpoint {hookpoint}", flush=True)
    shared_pass = splice._shared_pass

    def separate(*a, **k):
        raise splice._NotShared("bench: one forward per condition")

    def bare() -> dict:
        start = time.perf_counter()
        with torch.no_grad():
            for i in range(0, tokens.shape[0], 8):
                lm.model(input_ids=tokens[i:i + 8])
        return {"seconds": time.perf_counter() - start}

    def splice_with(pass_fn):
        def go() -> dict:
            splice._shared_pass = pass_fn
            start = time.perf_counter()
            out = spliced_loss(lm.model, tokens, hookpoint, sae, exclusion, mean)
            splice._shared_pass = shared_pass
            return {"seconds": time.perf_counter() - start, "figures": out}
        return go

    ways = {"bare forward": bare, "splice, shared prefix": splice_with(shared_pass),
            "splice, one forward per condition": splice_with(separate)}
    best: dict = {}
    for _ in range(2):
        for name, fn in ways.items():
            got = fn()
            if name not in best or got["seconds"] < best[name]["seconds"]:
                best[name] = got
            print(f"{name}: {got['seconds']:.1f} s", flush=True)
    base = best["bare forward"]["seconds"]
    rows = []
    for name, got in best.items():
        fig = got.get("figures", {})
        rows.append({"way": name, "seconds": round(got["seconds"], 1),
                     "tokens_per_s": round(tokens.numel() / got["seconds"]),
                     "vs bare forward": round(got["seconds"] / base, 2),
                     "ce_loss_spliced": fig.get("ce_loss_spliced"),
                     "ce_loss_recovered": fig.get("ce_loss_recovered")})
        print(rows[-1])
    shared, apart = best["splice, shared prefix"], best["splice, one forward per condition"]
    print(f"shared prefix: {apart['seconds'] / shared['seconds']:.2f}x faster than one forward "
          f"per condition; figures equal: "
          f"{all(abs(shared['figures'][k] - apart['figures'][k]) < 1e-4 for k in ('ce_loss_spliced', 'ce_loss_ablated', 'ce_loss_mean_ablated', 'kl_spliced'))}")
    if args.write:
        merge_records(RESULTS / "splice_speed.json", rows, ("way",), {
            "title": "Spliced-loss evaluation on SmolLM2-135M (demo SAE, 8,192 tokens)",
            "command": "OMP_NUM_THREADS=2 python bench/splice_speed.py --write"}, load_avg)


if __name__ == "__main__":
    main()
