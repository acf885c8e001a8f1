"""Vision capture throughput on the packaged ViT-S/14, beside a bare forward of the model.

Interleaved in one process on the same images (`--source`, default the 27 scikit-image test
images; the order of the runs rotates every round), median images/s over `--rounds` of:

- bare forward: the whole ViT (12 layers and the final norm), no hooks, pixels ready;
- preprocessing: the model's image processor alone (decode, resize, crop, normalise);
- capture stopped after layer L, pixels ready: saelab's hooks, the forward stopped at L;
- saelab capture into a store: preprocessing, the stopped forward, the patch rows of every
  image and the shard written (saelab.store.images.capture_images_to_store), per layer L.

The ratio of each run to the bare forward is printed and written to
bench/results/vision_capture.json (with `--write`), together with the 1-minute load average
when the run started.

    OMP_NUM_THREADS=1 python bench/vision_capture.py [--layers 6,11] [--rounds 5] [--write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from saelab.capture import Capture
from saelab.data.images import read_images
from saelab.data.pixels import pixel_values
from saelab.models import load
from saelab.store.images import capture_images_to_store

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_records import merge_records  # noqa: E402
from timing import interleaved  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "vision_capture.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", default="skimage")
    p.add_argument("--layers", default="6,11", help="layers captured (block outputs)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=9, help="images per forward")
    p.add_argument("--write", action="store_true", help=f"merge the rows into {RESULTS}")
    args = p.parse_args()
    load_before = os.getloadavg()
    vit = load("vit-s14")
    t = time.perf_counter()
    items = read_images(args.source)
    read_s = time.perf_counter() - t
    n, b = len(items), args.batch
    pixels = pixel_values(items, vit.processor)  # [n, 3, 224, 224]
    layers = [int(x) for x in args.layers.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="saelab_vision_bench_"))
    source = {"dataset": args.source, "titles": [i.title for i in items],
              "labels": [i.label for i in items], "processor": None}

    def bare():
        for s in range(0, n, b):
            vit.model(pixel_values=pixels[s:s + b])

    def preprocess():
        for s in range(0, n, b):
            pixel_values(items[s:s + b], vit.processor)

    def stopped(layer):
        def run():
            with Capture(vit.model, [f"encoder.layer.{layer}"]) as cap:
                for s in range(0, n, b):
                    cap.run(pixel_values=pixels[s:s + b])
        return run

    def to_store(layer):
        def run():
            capture_images_to_store(
                vit.model, lambda s, e: pixel_values(items[s:e], vit.processor), n,
                [f"encoder.layer.{layer}"], tmp / f"store_{layer}", model_name="vit-s14",
                source=source, batch_images=b, overwrite=True, progress=False,
                norm_factor=None)
        return run

    runs = {"bare forward (12 layers + norm, pixels ready)": bare,
            "preprocessing only (image processor)": preprocess}
    for layer in layers:
        runs[f"capture stopped after layer {layer} (pixels ready)"] = stopped(layer)
        runs[f"saelab capture of layer {layer} into a store"] = to_store(layer)
    names = list(runs)
    with torch.no_grad():
        times = interleaved(runs, args.rounds)
    load_after = os.getloadavg()
    med = {name: statistics.median(ts) for name, ts in times.items()}
    bare_s = med[names[0]]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); load average before "
          f"{load_before[0]:.2f}, after {load_after[0]:.2f}; {n} {args.source} images "
          f"(read in {read_s:.2f} s), {b} a forward, {args.rounds} rounds interleaved")
    print(f"{'run':<52}{'images/s':>9}{'spread':>14}{'vs bare':>9}")
    records = []
    for name, ts in times.items():
        spread = f"{n / max(ts):.1f}..{n / min(ts):.1f}"
        print(f"{name:<52}{n / med[name]:>9.1f}{spread:>14}{bare_s / med[name]:>8.2f}x")
        records.append({"run": name, "images/s": round(n / med[name], 1),
                        "patch rows/s": round(256 * n / med[name]) if "capture" in name else None,
                        "spread (images/s)": spread,
                        "vs bare forward": f"{bare_s / med[name]:.2f}x"})
    if args.write:
        meta = {"title": "Vision capture throughput (ViT-S/14)",
                "command": "OMP_NUM_THREADS=1 python bench/vision_capture.py --write",
                "notes": f"{n} {args.source} images at 224 x 224 (16 x 16 patches), {b} a "
                         f"forward, {args.rounds} rounds interleaved, median images/s; "
                         f"OMP_NUM_THREADS=1."}
        merge_records(RESULTS, records, key=("run",), meta=meta, loadavg=load_before)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
