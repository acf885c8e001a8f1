"""Step time over a real training run: each variant trained for a few hundred steps on SmolLM2-135M
activations by saelab and by SAELens, on the same batches, with the step time and L0 of each
library reported window by window as the run moves from dense to sparse.

bench/variants_speed.py times steps at two set sparsities; this bench lets each library's own
recipe take its dictionaries there. Data: the demo's training store (SmolLM2-135M-Instruct,
residual stream after block 15, d_model 576; `make demo` writes it to demo_out/), scaled to unit
mean squared norm as saelab's trainer does; both libraries see the same batches in the same
order. Each library starts from its own initialisation at its default learning rate (saelab's
for both, as bench/references.py sets it), with its own penalty warm-up and schedule over
`--steps`; a latent counts as dead after 10 steps without firing, for both (SAELens's
`dead_feature_window`, saelab's AuxK mask). Steps are interleaved (the order alternates) so that
both see the same machine load. SAELens's step is its trainer's own (`SAETrainer._train_step`),
saelab's is `saelab.train.step.train_step`.

    OMP_NUM_THREADS=2 python bench/variants_run.py --write      # alone on the machine

writes bench/results/variants_run.json, shown in docs/benchmarks/throughput.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import saelab  # noqa: E402
from references import saelens_step  # noqa: E402
from results_records import merge_records  # noqa: E402
from saelab.dictionaries import StepState  # noqa: E402
from saelab.train.optim import make_optimizer  # noqa: E402
from saelab.train.step import train_step  # noqa: E402

RESULTS = Path(__file__).parent / "results"
VARIANTS = {"relu": {}, "gated": {}, "jumprelu": {}, "topk": {"k": 64},
            "batchtopk": {"k": 64}, "matryoshka": {"k": 64}}
DEAD_STEPS = 10


def batches(run: Path, batch: int, steps: int, seed: int = 0) -> torch.Tensor:
    """[steps, batch, d] rows of the demo's training store, shuffled, at unit mean squared
    norm (the factor from the first 65,536 rows, as saelab.fit takes it)."""
    from saelab.store import ActivationStore

    store = ActivationStore(run / "store_train")
    hp = store.hookpoints[0]
    rows = torch.cat([a for a, _ in store.iter_rows(hp, 65536)]).float()
    g = torch.Generator().manual_seed(seed)
    need = steps * batch
    order = torch.cat([torch.randperm(rows.shape[0], generator=g)
                       for _ in range(-(-need // rows.shape[0]))])[:need]
    scale = rows[:65536].pow(2).sum(-1).mean().sqrt()
    return (rows[order] / scale).view(steps, batch, -1)


def saelab_run(variant: str, d_in: int, n_latents: int, steps: int, lr: float):
    sae = saelab.create(variant, d_in=d_in, n_latents=n_latents, **VARIANTS[variant])
    opt = make_optimizer(sae.parameters(), lr=lr)
    since = torch.zeros(n_latents, dtype=torch.long)

    def step(x: torch.Tensor, i: int) -> float:
        dead = since >= DEAD_STEPS
        out = train_step(sae, opt, x, StepState(step=i, total_steps=steps, dead_mask=dead))
        since.add_(1).masked_fill_(out.active, 0)
        return out.metrics["l0"]

    return sae, step


def windows(times: list[float], l0: list[float], n: int) -> list[tuple[int, int, float, float]]:
    """(first step, last step, median seconds, mean L0) of `n` equal windows of the run."""
    size = -(-len(times) // n)
    return [(s, min(s + size, len(times)) - 1, statistics.median(times[s:s + size]),
             statistics.mean(l0[s:s + size])) for s in range(0, len(times), size)]


def run_variant(variant: str, data: torch.Tensor, n_latents: int, n_windows: int) -> list[dict]:
    steps, batch, d_in = data.shape
    lr = saelab.TrainConfig(batch_size=batch).learning_rate
    torch.manual_seed(0)
    ours, ours_step = saelab_run(variant, d_in, n_latents, steps, lr)
    theirs, theirs_step = saelens_step(variant, ours, data[0], steps, batch, lr=lr)
    times = {"saelab": [], "saelens": []}
    l0 = {"saelab": [], "saelens": []}
    runners = {"saelab": lambda x, i: ours_step(x, i), "saelens": lambda x, i: theirs_step(x)}
    names = list(runners)
    for i in range(steps):
        for name in names[i % 2:] + names[:i % 2]:
            start = time.perf_counter()
            got = runners[name](data[i], i)
            times[name].append(time.perf_counter() - start)
            l0[name].append(got)
    rows = []
    ours_w = windows(times["saelab"], l0["saelab"], n_windows)
    theirs_w = windows(times["saelens"], l0["saelens"], n_windows)
    for (a, b, t_ours, l_ours), (_, _, t_theirs, l_theirs) in zip(ours_w, theirs_w):
        rows.append({"variant": variant, "steps": f"{a}-{b}", "saelab_ms": round(1e3 * t_ours),
                     "saelens_ms": round(1e3 * t_theirs),
                     "saelens/saelab": round(t_theirs / t_ours, 2),
                     "saelab_l0": round(l_ours, 1), "saelens_l0": round(l_theirs, 1)})
    total_ours, total_theirs = sum(times["saelab"]), sum(times["saelens"])
    rows.append({"variant": variant, "steps": f"whole run ({steps})",
                 "saelab_ms": round(1e3 * total_ours / steps),
                 "saelens_ms": round(1e3 * total_theirs / steps),
                 "saelens/saelab": round(total_theirs / total_ours, 2),
                 "saelab_l0": round(statistics.mean(l0["saelab"]), 1),
                 "saelens_l0": round(statistics.mean(l0["saelens"]), 1)})
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="demo_out", help="the demo's run folder (its store_train)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--latents", type=int, default=4608)
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--write", action="store_true", help="merge into bench/results/")
    args = p.parse_args(argv)
    load = os.getloadavg()
    data = batches(Path(args.run), args.batch, args.steps)
    print(f"date {datetime.datetime.now().isoformat(timespec='seconds')}, load {load[0]:.1f}, "
          f"{torch.get_num_threads()} threads; {args.steps} steps of {args.batch} x "
          f"{data.shape[-1]}, {args.latents} latents", flush=True)
    rows = []
    for variant in args.variants:
        for row in run_variant(variant, data, args.latents, args.windows):
            rows.append(row)
            print(row, flush=True)
    if args.write:
        merge_records(RESULTS / "variants_run.json", rows, ("variant", "steps"), {
            "title": f"Step time over a training run on SmolLM2-135M activations, saelab vs "
                     f"SAELens ({args.steps} steps of {args.batch}, d_in {data.shape[-1]}, "
                     f"{args.latents} latents)",
            "command": "OMP_NUM_THREADS=2 python bench/variants_run.py --write"
                       + (f" --steps {args.steps}" if args.steps != 300 else "")
                       + (f" --batch {args.batch}" if args.batch != 1024 else "")
                       + (f" --latents {args.latents}" if args.latents != 4608 else "")},
            load)

if __name__ == "__main__":
    main()
