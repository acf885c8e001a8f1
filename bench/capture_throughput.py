"""Capture throughput on SmolLM2-135M: hook overhead and what stopping the forward early saves.

Interleaved in one process on the same contexts (packaged Wikipedia text, `--batch` contexts of
128 tokens a forward; the order of the runs rotates every round), median tokens/s of:

- bare forward: the decoder stack (30 layers, final norm; no unembedding), no hooks;
- capture 1 layer, full forward: hooks on layer L, forward run to the end (hook overhead);
- capture N layers, full forward: hooks on several layers, run to the end (overhead of many);
- bare forward of layers 0..L: the stack cut to L+1 layers (the ideal early stop);
- capture stopped after layer L: what saelab does (the forward raises out of the last hook).

The hook overhead is (capture, full) / (bare) - 1; the early-stop saving is 1 - (capture,
stopped) / (bare); the stop mechanism's own overhead is (capture, stopped) / (bare 0..L) - 1.
The machine's load average is printed before and after (the CPU may be shared); the overheads
are printed from the medians and from the best rounds (the least disturbed on a shared CPU).

    python bench/capture_throughput.py [--layer 15] [--rounds 10] [--batch 8]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time

import torch
from torch import nn

from saelab.capture import Capture
from saelab.models import load
from saelab.pipeline import tokenise


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--batch", type=int, default=8, help="contexts per forward")
    p.add_argument("--many", default="5,10,15,20,25", help="layers of the several-layer run")
    args = p.parse_args()
    load_before = os.getloadavg()
    lm = load("smollm2-135m")
    corpus = tokenise(lm, "wikipedia", 128, args.batch * args.rounds)
    base = lm.model.model  # the decoder stack without the unembedding
    layers = base.layers
    one = [f"layers.{args.layer}"]
    many = [f"layers.{i}" for i in args.many.split(",")]
    cut = nn.ModuleList(list(layers)[:args.layer + 1])

    def bare(batch):
        base(input_ids=batch)

    def full_one(batch):
        with Capture(base, one, stop_early=False) as cap:
            cap.run(input_ids=batch)

    def full_many(batch):
        with Capture(base, many, stop_early=False) as cap:
            cap.run(input_ids=batch)

    def bare_cut(batch):
        base.layers = cut
        try:
            base(input_ids=batch)
        finally:
            base.layers = layers

    def stopped(batch):
        with Capture(base, one) as cap:
            cap.run(input_ids=batch)

    runs = {"bare forward (no hooks)": bare,
            f"capture layer {args.layer}, full forward": full_one,
            f"capture {len(many)} layers, full forward": full_many,
            f"bare forward of layers 0..{args.layer}": bare_cut,
            f"capture, stopped after layer {args.layer}": stopped}
    names = list(runs)
    times = {name: [] for name in runs}
    with torch.no_grad():
        for fn in runs.values():  # warm-up
            fn(corpus.tokens[:args.batch])
        for r in range(args.rounds):
            batch = corpus.tokens[r * args.batch:(r + 1) * args.batch]
            for name in names[r % len(names):] + names[:r % len(names)]:
                t = time.perf_counter()
                runs[name](batch)
                times[name].append(time.perf_counter() - t)
    load_after = os.getloadavg()
    n_tok = args.batch * 128
    med = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"date {datetime.datetime.now().isoformat(timespec='seconds')}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus; "
          f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print(f"SmolLM2-135M, {args.batch} x 128 tokens a forward, {args.rounds} rounds interleaved "
          f"(median; spread = min..max tokens/s)")
    bare_s = med[names[0]]
    print(f"{'run':<38}{'tokens/s':>10}{'spread':>14}{'vs bare':>9}")
    for name, ts in times.items():
        spread = f"{n_tok / max(ts):.0f}..{n_tok / min(ts):.0f}"
        print(f"{name:<38}{n_tok / med[name]:>10.0f}{spread:>14}{bare_s / med[name]:>8.2f}x")
    best = {name: min(ts) for name, ts in times.items()}
    for label, t in (("median", med), ("best", best)):
        # on a shared CPU the best of the rounds is the least disturbed estimate
        print(f"[{label}] hook overhead on a full forward: 1 layer "
              f"{t[names[1]] / t[names[0]] - 1:+.1%}, {len(many)} layers "
              f"{t[names[2]] / t[names[0]] - 1:+.1%}; early stop after layer {args.layer} saves "
              f"{1 - t[names[4]] / t[names[0]]:.1%} of the bare forward "
              f"({t[names[0]] / t[names[4]]:.2f}x); stopped capture vs the cut stack "
              f"{t[names[4]] / t[names[3]] - 1:+.1%}")


if __name__ == "__main__":
    main()
