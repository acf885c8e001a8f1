"""ITDA vs a TopK SAE on the same SmolLM2-135M activations: fitting time, FVU and L0.

Leask et al. 2025 report that an ITDA fits in about 1% of a SAE's training time. This script
captures (once, into saelab's cache) SmolLM2-135M activations at one layer, fits an ITDA
(`saelab.fit`, one pass in store order, stopping when the dictionary is full) and trains a TopK
SAE (`saelab.create("topk", ...)` + `saelab.fit`, a fixed number of epochs) of the same size and
the same k on the same store, and prints each one's time, the ratio, and FVU and L0 on held-out
activations (FVU: squared error over the variance around the held-out mean; L0: non-zero codes
per row). It writes the table as a results file (bench/README.md) to --out.

    OMP_NUM_THREADS=1 python bench/itda_time.py --tokens 32768 --out /tmp/itda_time.json

The comparison is as fair as its settings: the SAE's time grows with its epochs, the ITDA's with
how soon it fills (loss_threshold, batch size); both are printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import saelab
from saelab.store import ActivationStore


def activations(lm, hookpoint: str, out: Path, n_tokens: int, skip_tokens: int):
    """The store at `out`, captured there first if it is not already."""
    from saelab.pipeline import CaptureConfig, capture

    if (out / "manifest.json").is_file():
        return ActivationStore(out)
    return capture(CaptureConfig(out=str(out), model=lm.name, hookpoints=[hookpoint],
                                 n_tokens=n_tokens, skip_tokens=skip_tokens, progress=False), lm)


@torch.no_grad()
def fvu_and_l0(dictionary, x: torch.Tensor) -> tuple[float, float]:
    """FVU and mean L0 of `dictionary` on rows x, 4,096 rows at a time."""
    err = active = 0.0
    for chunk in x.split(4096):
        out = dictionary(chunk)
        err += float((out.x_hat - chunk).pow(2).sum())
        active += float((out.codes != 0).sum())
    return err / float((x - x.mean(0)).pow(2).sum()), active / x.shape[0]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--tokens", type=int, default=32_768, help="training tokens captured")
    p.add_argument("--eval-tokens", type=int, default=8_192)
    p.add_argument("--n-latents", type=int, default=4608)
    p.add_argument("--k", type=int, default=32, help="TopK's k and ITDA's pursuit steps")
    p.add_argument("--loss-threshold", type=float, default=0.0004)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=2, help="TopK SAE training epochs")
    p.add_argument("--out", default="bench/results/itda_time.json")
    args = p.parse_args()

    from saelab._paths import cache_dir
    from saelab.models import load

    lm = load("smollm2-135m")
    hp = lm.layer_template.format(args.layer)
    root = cache_dir() / "bench" / f"itda_l{args.layer}"
    train = activations(lm, hp, root / f"train_{args.tokens}", args.tokens, 0)
    held = activations(lm, hp, root / f"eval_{args.eval_tokens}", args.eval_tokens, args.tokens)
    x_held = torch.cat([acts for acts, _ in held.iter_rows(hp)])
    print(f"SmolLM2-135M {hp}: {train.n_rows:,} training rows, {x_held.shape[0]:,} held out; "
          f"{args.n_latents} latents, k {args.k}; torch threads {torch.get_num_threads()}; "
          f"load {os.getloadavg()[0]:.2f}", flush=True)

    itda = saelab.create("itda", d_in=lm.d_model, n_latents=args.n_latents, k=args.k,
                         loss_threshold=args.loss_threshold)
    t = time.time()
    saelab.fit(itda, train, saelab.TrainConfig(epochs=1, batch_size=args.batch_size,
                                               order="sequential", progress=False))
    itda_s = time.time() - t
    itda_fvu, itda_l0 = fvu_and_l0(itda, x_held)
    print(f"itda: {itda_s:.1f} s, {itda.n_atoms} atoms from {int(itda.rows_seen):,} rows read, "
          f"FVU {itda_fvu:.3f}, L0 {itda_l0:.1f}", flush=True)

    sae = saelab.create("topk", d_in=lm.d_model, n_latents=args.n_latents, k=args.k)
    steps = args.epochs * train.n_rows // args.batch_size
    t = time.time()
    saelab.fit(sae, train, saelab.TrainConfig(steps=steps, batch_size=args.batch_size,
                                              seed=0, progress=False,
                                              dead_after_tokens=min(50_000, train.n_rows)))
    sae_s = time.time() - t
    sae_fvu, sae_l0 = fvu_and_l0(sae, x_held)
    print(f"topk: {sae_s:.1f} s ({steps} steps of {args.batch_size}), FVU {sae_fvu:.3f}, "
          f"L0 {sae_l0:.1f}", flush=True)
    ratio = itda_s / sae_s
    print(f"itda / topk time: {ratio:.3f} ({100 * ratio:.1f}%); load "
          f"{os.getloadavg()[0]:.2f}", flush=True)

    rows = [["itda", f"{itda_s:.1f}", f"{itda_fvu:.3f}", f"{itda_l0:.1f}",
             f"{itda.n_atoms} atoms from {int(itda.rows_seen):,} rows (one pass, store order, "
             f"loss_threshold {args.loss_threshold})"],
            ["topk", f"{sae_s:.1f}", f"{sae_fvu:.3f}", f"{sae_l0:.1f}",
             f"{steps} steps of {args.batch_size} ({args.epochs} epochs)"],
            ["itda / topk time", f"{ratio:.3f}", "", "", ""]]
    result = {
        "title": "ITDA vs TopK SAE: fitting time, FVU and L0 on SmolLM2-135M",
        "command": "OMP_NUM_THREADS=1 python bench/itda_time.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, load "
                   f"average {os.getloadavg()[0]:.2f} at the end",
        "notes": f"{hp}, {train.n_rows:,} training rows, {x_held.shape[0]:,} held-out rows; "
                 f"{args.n_latents} latents, k {args.k} for both.",
        "columns": ["dictionary", "fit time s", "FVU", "L0", "setup"],
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
