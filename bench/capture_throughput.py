"""Capture throughput on SmolLM2-135M: hook overhead and what stopping the forward early saves.

Interleaved in one process on the same contexts (packaged Wikipedia text, 8 contexts of 128
tokens a forward), median tokens/s of:

- bare forward: the model's forward with no hooks (up to the final hidden state, no logits),
- capture, full forward: hooks on one layer, the forward run to the end (hook overhead),
- capture, stopped: hooks on one layer, the forward stopped after it (what saelab does).

    python bench/capture_throughput.py [--layer 15] [--rounds 8]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time

import torch

from saelab.capture import Capture
from saelab.models import load
from saelab.pipeline import tokenise


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--batch", type=int, default=8, help="contexts per forward")
    args = p.parse_args()
    lm = load("smollm2-135m")
    corpus = tokenise(lm, "wikipedia", 128, args.batch * args.rounds)
    hp = lm.layer_template.format(args.layer)
    base = lm.model.model  # the decoder stack without the unembedding

    def bare(batch):
        base(input_ids=batch)

    def full(batch):
        with Capture(lm.model, [hp], stop_early=False) as cap:
            cap.run(input_ids=batch)

    def stopped(batch):
        with Capture(lm.model, [hp]) as cap:
            cap.run(input_ids=batch)

    runs = {"bare forward (no hooks)": bare, "capture, full forward": full,
            f"capture, stopped after layer {args.layer}": stopped}
    times = {name: [] for name in runs}
    with torch.no_grad():
        for fn in runs.values():  # warm-up
            fn(corpus.tokens[:args.batch])
        for r in range(args.rounds):
            batch = corpus.tokens[r * args.batch:(r + 1) * args.batch]
            for name, fn in runs.items():
                t = time.perf_counter()
                fn(batch)
                times[name].append(time.perf_counter() - t)
    n_tok = args.batch * 128
    print(f"date {datetime.datetime.now().isoformat(timespec='seconds')}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; SmolLM2-135M, "
          f"{args.batch} x 128 tokens a forward, {args.rounds} rounds interleaved")
    bare_s = statistics.median(times["bare forward (no hooks)"])
    print(f"{'run':<34}{'tokens/s':>10}{'vs bare':>9}")
    for name, ts in times.items():
        s = statistics.median(ts)
        print(f"{name:<34}{n_tok / s:>10.0f}{bare_s / s:>8.2f}x")
    overhead = statistics.median(times["capture, full forward"]) / bare_s - 1
    print(f"hook overhead on a full forward: {overhead:+.1%}")


if __name__ == "__main__":
    main()
