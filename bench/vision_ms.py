"""Monosemanticity score (Pach et al. 2025) of TopK SAEs on the packaged ViT-S/14, beside its
neurons, at two widths and two sparsities.

The ViT's layer-`--layer` patch activations of the first `--train-images` images of
`--source` (default: the 27 scikit-image test images, then scikit-learn's digits) are captured
and TopK SAEs trained on them as in docs/guides/vision.md (batch 512, 2 epochs); the MS of their
latents and of the layer's 384 neurons is measured on the next `--eval-images` images (held
out: digits), each unit's activation on an image its largest over the image's 256 patches, in
the embedding space of the ViT's own pooled output (the final layer-normed CLS token), with
saelab.evaluate.monosemanticity's functions (the `monosemanticity` family's, the embeddings
computed once for every dictionary). Every pair of these images is alike in that space (mean
cosine 0.93), so MS is also given in the embeddings centred on their mean over the held-out
images (`ms_centred_*`, where two random images score about 0), a line the reference's
`metric.py` holds commented out.

    OMP_NUM_THREADS=1 python bench/vision_ms.py [--widths 768,3072] [--ks 8,32] [--write]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

import saelab
from saelab.evaluate.monosemanticity import image_embeddings, image_units, ms_scores, summarize
from saelab.models import load
from saelab.pipeline import CaptureConfig, capture

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_records import merge_records  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "vision_ms.json"


def _store(vit, out: Path, source: str, layer: int, n: int, skip: int):
    cfg = CaptureConfig(out=str(out), model="vit-s14", dataset=source,
                        hookpoints=[f"encoder.layer.{layer}"], n_images=n, skip_images=skip,
                        progress=False)
    return capture(cfg, vit)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", default="skimage+digits")
    p.add_argument("--layer", type=int, default=6)
    p.add_argument("--train-images", type=int, default=427)
    p.add_argument("--eval-images", type=int, default=300)
    p.add_argument("--widths", default="768,3072")
    p.add_argument("--ks", default="8,32")
    p.add_argument("--write", action="store_true", help=f"merge the rows into {RESULTS}")
    args = p.parse_args()
    load_before = os.getloadavg()
    torch.manual_seed(0)
    vit = load("vit-s14")
    tmp = Path(tempfile.mkdtemp(prefix="saelab_vision_ms_"))
    t0 = time.perf_counter()
    train = _store(vit, tmp / "train", args.source, args.layer, args.train_images, 0)
    held = _store(vit, tmp / "eval", args.source, args.layer, args.eval_images,
                  args.train_images)
    key = f"encoder.layer.{args.layer}"
    emb = image_embeddings(held, vit)
    e = torch.nn.functional.normalize(emb.double(), dim=1)
    n = len(e)
    chance = float(((e @ e.T).sum() - n) / (n * (n - 1)))
    print(f"stores and embeddings: {time.perf_counter() - t0:.0f} s; {train.n_rows} training "
          f"rows, {held.n_rows} held-out rows; mean similarity of two images {chance:.3f}")
    rows = []

    centred = emb - emb.mean(0)

    def record(units: str, acts: torch.Tensor, extra: dict) -> None:
        s, c = summarize(ms_scores(acts, emb)), summarize(ms_scores(acts, centred))
        rows.append({"units": units, **extra, "n_units": acts.shape[1], "scored": s.scored,
                     "ms_mean": round(s.mean, 4), "ms_median": round(s.median, 4),
                     "ms_random_pairs": round(chance, 4), "ms_centred_mean": round(c.mean, 4),
                     "ms_centred_median": round(c.median, 4)})
        print(f"{units:24s} scored {s.scored:5d}/{acts.shape[1]:5d}  MS mean {s.mean:.4f}  "
              f"median {s.median:.4f}; centred embeddings: mean {c.mean:.4f} median "
              f"{c.median:.4f}", flush=True)

    probe = saelab.create("topk", d_in=384, n_latents=8, k=1)
    record("neurons", image_units(probe, held, key).raw, {"fve": None})
    for width in (int(w) for w in args.widths.split(",")):
        for k in (int(x) for x in args.ks.split(",")):
            t = time.perf_counter()
            sae = saelab.create("topk", d_in=384, n_latents=width, k=k, seed=0)
            steps = 2 * train.n_rows // 512
            sae = saelab.fit(sae, train, saelab.TrainConfig(steps=steps, batch_size=512,
                                                            seed=0, progress=False))
            fve = saelab.evaluate(sae, held, metrics=("reconstruction",))["reconstruction"]
            record(f"topk n={width} k={k}", image_units(sae, held, key).codes,
                   {"fve": round(fve["explained_variance"], 4)})
            print(f"  ({time.perf_counter() - t:.0f} s)", flush=True)
    if args.write:
        meta = {"title": "Monosemanticity score (Pach et al. 2025) of TopK SAE latents and of "
                         f"the neurons, ViT-S/14 layer {args.layer}, {args.eval_images} "
                         f"held-out images",
                "command": "OMP_NUM_THREADS=1 python bench/vision_ms.py --write"}
        merge_records(RESULTS, rows, ("units",), meta, load_before)


if __name__ == "__main__":
    main()
