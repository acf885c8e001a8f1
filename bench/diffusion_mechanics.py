"""Cost of the diffusion delta capture and of steering beside a bare denoising run.

On the tiny random U-Net of saelab.steer.diffusion (diffusers' UNet2DConditionModel, about 0.8M
parameters, DDIM), N images denoised in 4 steps: a bare run, the same run capturing the delta
of one transformer block at one step and at every step (rows into memory; at one step into an
activation store on disk, rewritten each time), and a run steered
at one step (encode, edit, decode on the chosen positions). Runs are interleaved over rounds;
the table has the median images/s and the ratio to the bare run. Rows are merged into
bench/results/diffusion_mechanics.json (with `--write`), with the 1-minute load average seen
when the run started.

    OMP_NUM_THREADS=1 python bench/diffusion_mechanics.py [--images 8] [--rounds 5] [--write]

The tiny U-Net's random weights make the figures mechanics only: how much the hooks add to a
U-Net forward, not what SDXL-Turbo would cost (its U-Net is 2.6B parameters).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

import saelab
from saelab.steer import add
from saelab.steer.diffusion import (capture_deltas, denoise, initial_latents,
                                    random_conditioning, steered_denoise, tiny_unet)
from saelab.steer.diffusion_store import capture_deltas_to_store

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_records import merge_records  # noqa: E402
from timing import interleaved  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "diffusion_mechanics.json"
BLOCK = "down_blocks.0.attentions.0"
STEPS = 4


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=8, help="images per denoising run")
    p.add_argument("--size", type=int, default=16, help="latent height and width")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--write", action="store_true", help=f"merge the rows into {RESULTS}")
    args = p.parse_args()
    load_before = os.getloadavg()
    model = tiny_unet(sample_size=args.size)
    n = args.images
    cond, latents = random_conditioning(model, n), initial_latents(model, n)
    rows = capture_deltas(model, BLOCK, cond, latents, STEPS, steps=[1])
    sae = saelab.fit(saelab.create("topk", d_in=rows.x.shape[1], n_latents=128, k=4, seed=0),
                     rows.training_data(), saelab.TrainConfig(
                         epochs=2, batch_size=256, progress=False, hookpoint=rows.hookpoint))
    positions = list(range(0, args.size * args.size, 7))
    tmp = Path(tempfile.mkdtemp(prefix="saelab_diffusion_bench_"))

    runs = {
        "bare denoising": lambda: denoise(model, cond, latents, STEPS),
        "capture delta at 1 step": lambda: capture_deltas(model, BLOCK, cond, latents, STEPS,
                                                          steps=[1], batch_images=n),
        f"capture delta at all {STEPS} steps": lambda: capture_deltas(
            model, BLOCK, cond, latents, STEPS, batch_images=n),
        "capture delta at 1 step into a store": lambda: capture_deltas_to_store(
            model, BLOCK, cond, latents, STEPS, tmp / "store", steps=[1], batch_images=n,
            overwrite=True),
        "steered at 1 step (add, 1/7 of positions)": lambda: steered_denoise(
            model, sae, [add(3, 4.0)], cond, latents, STEPS, steps=[2], positions=positions),
        f"steered at all {STEPS} steps, every position": lambda: steered_denoise(
            model, sae, [add(3, 4.0)], cond, latents, STEPS),
    }
    names = list(runs)
    times = interleaved(runs, args.rounds)
    load_after = os.getloadavg()
    med = {name: statistics.median(ts) for name, ts in times.items()}
    bare_s = med[names[0]]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); load average before "
          f"{load_before[0]:.2f}, after {load_after[0]:.2f}; {n} images, {STEPS} steps, "
          f"latents {args.size}x{args.size}, {args.rounds} rounds interleaved")
    print(f"{'run':<48}{'images/s':>9}{'spread':>14}{'vs bare':>9}")
    records = []
    for name, ts in times.items():
        spread = f"{n / max(ts):.1f}..{n / min(ts):.1f}"
        print(f"{name:<48}{n / med[name]:>9.1f}{spread:>14}{bare_s / med[name]:>8.2f}x")
        records.append({"run": name, "latents": f"{args.size}x{args.size}",
                        "images/s": round(n / med[name], 1), "spread (images/s)": spread,
                        "vs bare denoising": f"{bare_s / med[name]:.2f}x"})
    if args.write:
        meta = {"title": "Diffusion delta capture and steering beside a bare denoising run",
                "command": "OMP_NUM_THREADS=1 python bench/diffusion_mechanics.py --write",
                "notes": f"tiny random U-Net (diffusers, about 0.8M parameters), block {BLOCK}, "
                         f"{n} images a run, {STEPS} DDIM steps, {args.rounds} rounds "
                         f"interleaved, median images/s; OMP_NUM_THREADS=1."}
        merge_records(RESULTS, records, key=("run", "latents"), meta=meta,
                      loadavg=load_before)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
