"""Training-step time of each variant, saelab against SAELens's implementation of the same
variant, at the density a run starts with and at a trained sparsity, and TopK's step with AuxK
active beside the plain step.

Reference shape: d_in 768, 16,384 latents, batch 4,096, float32, Adam, 2 CPU threads. Each
library starts from its own initialisation; "trained" moves both to the same sparsity first (L0
about 64: each latent's encoder bias, gate bias or threshold set to the (1 - 64 / 16,384)
quantile of its pre-activations on the rows the timed steps read). Both train at a tiny learning rate (1e-7), so that
the density stays where it was set during the timed steps (the work of a step does not depend on
the rate). Steps of the two libraries are interleaved (2
warm-up, then `--steps` timed each), on the same batches; L0 is what each had in its timed
steps. SAELens's step is its own trainer's (`SAETrainer._train_step`, with gradient clipping
and dead-latent counting); saelab's is `saelab.train.step.train_step`. MP runs k 16 pursuit
steps (each one a full [B, n] product, for both libraries). SAELens trains no transcoder, so
saelab's TopK transcoder is timed against EleutherAI sparsify's (`transcode=True`, its own step
as its trainer takes it). The AuxK rows time TopK with a fixed share of the latents counted dead
beside the plain step, and the same pair for sparsify (its AuxK at saelab's weight 1/32), all
four interleaved.

    OMP_NUM_THREADS=2 python bench/variants_speed.py --write      # alone on the machine

writes bench/results/variants_speed.json, shown in docs/benchmarks/throughput.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time
from pathlib import Path

import torch

import saelab
from results_records import merge_records  # noqa: E402  (bench/, beside this file)
from saelab.dictionaries import StepState
from saelab.train.optim import make_optimizer
from saelab.train.step import train_step
from references import saelens_step  # noqa: E402
from train_throughput import make_data, sparsify_runner  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SHAPE = {"d_in": 768, "latents": 16384, "batch": 4096}
TARGET_L0 = 64
LR = 1e-7
VARIANTS = {"relu": {}, "gated": {}, "jumprelu": {}, "topk": {"k": 64},
            "batchtopk": {"k": 64}, "matryoshka": {"k": 64}, "mp": {"k": 16}}
EXTRA = ("transcoder",)  # against sparsify's transcoder (SAELens trains none)
THRESHOLD_VARIANTS = ("relu", "gated", "jumprelu")


def saelab_step(variant: str, fields: dict, dead_fraction: float = 0.0):
    sae = saelab.create(variant, d_in=SHAPE["d_in"], n_latents=SHAPE["latents"], **fields)
    opt = make_optimizer(sae.parameters(), lr=LR)
    dead = None
    if dead_fraction > 0:
        dead = torch.rand(SHAPE["latents"], generator=torch.Generator().manual_seed(1)) \
            < dead_fraction

    def step(x, i=[0]):
        out = train_step(sae, opt, x, StepState(step=50 + i[0], total_steps=1000,
                                                 dead_mask=dead))
        i[0] += 1
        return out.metrics["l0"]

    return sae, step


@torch.no_grad()
def sparsen(variant: str, sae, x: torch.Tensor, library: str) -> None:
    """Move a threshold variant to L0 about TARGET_L0 on the rows `x` (see the module
    docstring)."""
    kth = x.shape[0] - round(TARGET_L0 / SHAPE["latents"] * x.shape[0])
    xc = x - sae.b_dec
    pre = xc @ sae.W_enc.t() if library == "saelab" else xc @ sae.W_enc  # [B, n]
    bias = sae.b_gate if variant == "gated" else sae.b_enc
    limit = torch.kthvalue(pre + bias, kth, dim=0).values  # [n]: each latent's quantile
    if variant in ("relu", "gated"):
        bias.sub_(limit)
    elif library == "saelab":
        sae.log_threshold.copy_(limit.clamp_min(1e-4).log())
    else:
        sae.threshold.copy_(limit.clamp_min(1e-4))


def timed(runners: dict, data: torch.Tensor, steps: int) -> dict:
    """Median seconds per step and mean L0 of each runner, interleaved, 2 warm-up steps."""
    times = {n: [] for n in runners}
    l0 = {n: [] for n in runners}
    names = list(runners)
    for r in range(2 + steps):
        x = data[r % data.shape[0]]
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            got = runners[name](x)
            if r >= 2:
                times[name].append(time.perf_counter() - start)
                l0[name].append(got)
    return {n: (statistics.median(times[n]), statistics.mean(l0[n])) for n in runners}


def transcoder_row(data: torch.Tensor, steps: int) -> dict:
    """saelab's TopK transcoder against sparsify's (`transcode=True`), k 64, d_in = d_out; the
    target is the batch shifted by one row (what it is does not change the work)."""
    k = 64
    torch.manual_seed(0)
    sae = saelab.create("transcoder", d_in=SHAPE["d_in"], d_out=SHAPE["d_in"],
                        n_latents=SHAPE["latents"], k=k)
    opt = make_optimizer(sae.parameters(), lr=LR)
    theirs = sparsify_runner(SHAPE["d_in"], SHAPE["latents"], k, transcode=True)

    def ours(x, i=[0]):
        out = train_step(sae, opt, x, StepState(step=50 + i[0], total_steps=1000),
                         target=x.roll(1, 0))
        i[0] += 1
        return out.metrics["l0"]

    def sparsify(x, i=[0]):
        theirs(x, 50 + i[0], 1000, x.roll(1, 0))
        i[0] += 1
        return k

    got = timed({"saelab": ours, "sparsify": sparsify}, data, steps)
    return {"variant": "transcoder (k 64; against sparsify)", "state": "trained",
            "saelab_ms": round(1e3 * got["saelab"][0]),
            "sparsify_ms": round(1e3 * got["sparsify"][0]),
            "sparsify/saelab": round(got["sparsify"][0] / got["saelab"][0], 2),
            "saelab_l0": round(got["saelab"][1], 1), "sparsify_l0": k}


def auxk_row(data: torch.Tensor, steps: int, dead_fraction: float) -> dict:
    """TopK (k 64) with AuxK acting on `dead_fraction` of the latents beside the plain step, for
    saelab and for sparsify (its AuxK at the same weight), all four interleaved."""
    k = VARIANTS["topk"]["k"]
    torch.manual_seed(0)
    _, plain = saelab_step("topk", VARIANTS["topk"])
    _, aux = saelab_step("topk", VARIANTS["topk"], dead_fraction=dead_fraction)
    dead = torch.rand(SHAPE["latents"], generator=torch.Generator().manual_seed(1)) \
        < dead_fraction
    their_plain = sparsify_runner(SHAPE["d_in"], SHAPE["latents"], k)
    their_aux = sparsify_runner(SHAPE["d_in"], SHAPE["latents"], k, dead_mask=dead)

    def sparsify(step):
        def run(x, i=[0]):
            step(x, 50 + i[0], 1000)
            i[0] += 1
            return k
        return run

    got = timed({"plain": plain, "auxk": aux, "sparsify plain": sparsify(their_plain),
                 "sparsify auxk": sparsify(their_aux)}, data, steps)
    return {"variant": f"topk, AuxK active ({dead_fraction:.0%} of the latents dead)",
            "state": "trained", "saelab_ms": round(1e3 * got["auxk"][0]),
            "plain_ms": round(1e3 * got["plain"][0]),
            "auxk/plain": round(got["auxk"][0] / got["plain"][0], 2),
            "sparsify_ms": round(1e3 * got["sparsify auxk"][0]),
            "sparsify auxk/plain": round(got["sparsify auxk"][0] / got["sparsify plain"][0], 2),
            "sparsify/saelab": round(got["sparsify auxk"][0] / got["auxk"][0], 2)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--variants", nargs="*", default=[*VARIANTS, *EXTRA],
                   choices=[*VARIANTS, *EXTRA])
    p.add_argument("--write", action="store_true")
    args = p.parse_args(argv)
    load = os.getloadavg()
    print(f"date {datetime.datetime.now().isoformat(timespec='seconds')}, load {load[0]:.1f}, "
          f"{torch.get_num_threads()} threads; shape {SHAPE}", flush=True)
    data = make_data(2, SHAPE["batch"], SHAPE["d_in"])
    data = data / data.pow(2).sum(-1).mean().sqrt()  # unit mean squared norm, as the trainer
    rows = []
    for variant in [v for v in args.variants if v in VARIANTS]:
        fields = VARIANTS[variant]
        torch.manual_seed(0)
        ours, ours_step = saelab_step(variant, fields)
        theirs, theirs_step = saelens_step(variant, ours, data[0], 1000, SHAPE["batch"], lr=LR)
        states = ["initial", "trained"] if variant in THRESHOLD_VARIANTS else ["trained"]
        for state in states:
            if state == "trained" and variant in THRESHOLD_VARIANTS:
                sparsen(variant, ours, data.flatten(0, 1), "saelab")
                sparsen(variant, theirs, data.flatten(0, 1), "saelens")
            got = timed({"saelab": ours_step, "saelens": theirs_step}, data, args.steps)
            row = {"variant": variant, "state": state,
                   "saelab_ms": round(1e3 * got["saelab"][0]),
                   "saelens_ms": round(1e3 * got["saelens"][0]),
                   "saelens/saelab": round(got["saelens"][0] / got["saelab"][0], 2),
                   "saelab_l0": round(got["saelab"][1], 1),
                   "saelens_l0": round(got["saelens"][1], 1)}
            rows.append(row)
            print(row, flush=True)
    if "transcoder" in args.variants:
        rows.append(transcoder_row(data, args.steps))
        print(rows[-1], flush=True)
    if "topk" in args.variants:
        for dead in (0.02, 0.05, 0.5):
            rows.append(auxk_row(data, args.steps, dead))
            print(rows[-1], flush=True)
    if args.write:
        merge_records(RESULTS / "variants_speed.json", rows, ("variant", "state"), {
            "title": "Training step, saelab vs SAELens (d_in 768, 16,384 latents, batch 4,096)",
            "command": "OMP_NUM_THREADS=2 python bench/variants_speed.py --write"}, load)


if __name__ == "__main__":
    main()
