"""What `TrainConfig(compile=True)` gains: one training step per variant, eager vs torch.compile.

    python bench/compile_gain.py                       # relu, gated, jumprelu, topk, batchtopk
    python bench/compile_gain.py --variants relu topk --latents 16384 --batch 4096

Both forms of each variant start from the same weights and run the same batches, interleaved
(eager step, compiled step, ...) so that load on the machine hits both alike. The compiled form
is what the training loop uses: `torch.compile(dictionary.loss)` with saelab's sparse TopK
kernels left eager (graph breaks), so compile can only fuse the work around them; the first
compiled step (the compilation) is timed separately.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import saelab  # noqa: E402
from saelab.dictionaries import StepState  # noqa: E402
from saelab.dictionaries._registry import get  # noqa: E402
from saelab.train.optim import make_optimizer  # noqa: E402
from saelab.train.run import compiled_loss  # noqa: E402
from saelab.train.step import train_step  # noqa: E402

VARIANTS = ("relu", "gated", "jumprelu", "topk", "batchtopk")


def runner(sae, compiled: bool):
    """A function running one optimiser step of `sae` (compiled or eager) on a batch."""
    opt = make_optimizer(sae.parameters(), lr=1e-4)
    loss_fn = compiled_loss(sae.loss) if compiled else sae.loss
    dead = torch.zeros(sae.n_latents, dtype=torch.bool)

    def step(x: torch.Tensor, i: int) -> None:
        train_step(sae, opt, x, StepState(step=i, total_steps=10**6, dead_mask=dead),
                   loss_fn=loss_fn)

    return step


def measure(name: str, args) -> tuple[float, float, float]:
    """(eager s/step, compiled s/step, compile seconds) for one variant."""
    torch.manual_seed(0)
    fields = {f.name for f in dataclasses.fields(get(name).Config)}
    eager = saelab.create(name, d_in=args.d_in, n_latents=args.latents,
                          **({"k": args.k} if "k" in fields else {}))
    steps = {"eager": runner(eager, False), "compiled": runner(copy.deepcopy(eager), True)}
    data = [torch.randn(args.batch, args.d_in) for _ in range(4)]
    start = time.perf_counter()
    steps["compiled"](data[0], 0)
    compile_s = time.perf_counter() - start
    steps["eager"](data[0], 0)
    times = {key: [] for key in steps}
    for i in range(1, args.steps + 2):
        for key, step in steps.items():
            start = time.perf_counter()
            step(data[i % len(data)], i)
            if i > 1:  # one more warm-up step each
                times[key].append(time.perf_counter() - start)
    return statistics.median(times["eager"]), statistics.median(times["compiled"]), compile_s


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--d-in", type=int, default=768)
    p.add_argument("--latents", type=int, default=8192)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--steps", type=int, default=10, help="timed steps per form (median)")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch._logging.set_logs(dynamo=logging.ERROR)
    print(f"date {datetime.datetime.now().isoformat(timespec='seconds')}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; d_in {args.d_in}, "
          f"{args.latents} latents, k {args.k}, batch {args.batch}, Adam, median of "
          f"{args.steps} steps")
    print(f"{'variant':<12} {'eager ms':>9} {'compiled ms':>12} {'speed-up':>9} "
          f"{'compile s':>10}")
    for name in args.variants:
        eager, compiled, compile_s = measure(name, args)
        print(f"{name:<12} {eager * 1e3:9.1f} {compiled * 1e3:12.1f} {eager / compiled:8.2f}x "
              f"{compile_s:10.1f}", flush=True)


if __name__ == "__main__":
    main()
