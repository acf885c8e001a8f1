"""Peak memory of reading and training from an activation store several times larger than the
reader's shuffle buffer.

Builds (once, in --dir) a store of synthetic rows with saelab's store writer (a small model whose
hookpoint outputs random 768-d activations: `--rows` rows, float32, shards of `--shard-rows`),
then measures, each in its own subprocess so that the peaks are separate, the peak resident set
size of (VmHWM from /proc/self/status, reset to the resident size after the imports; getrusage
ru_maxrss where /proc is missing):

- baseline: importing torch and saelab and opening the store;
- read: one full epoch of shuffled batches through the store's reader, with `--buffer` rows of
  shuffle buffer (and with 4x that buffer, to show that the peak follows the buffer, not the
  store);
- train: saelab.fit of a TopK SAE (768 -> 4096 latents, k 32, batch 4096) for one epoch over the
  store, with `--buffer` rows of shuffle buffer.

    python bench/memory.py [--rows 131072] [--buffer 16384] [--dir /tmp/saelab_memory_store]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

D = 768
MB = 1 << 20


def _status(field: str) -> float | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(field + r":\s+(\d+)", text)
    return int(m.group(1)) / 1024 if m else None


def rss_mb() -> float:
    """Resident size now (Linux /proc), or the peak so far where /proc is missing."""
    now = _status("VmRSS")
    return now if now is not None else peak_mb()


def reset_peak() -> None:
    """Reset the peak resident size to the current one (Linux >= 4.0; no-op elsewhere)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_mb() -> float:
    hwm = _status("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(args) -> None:
    import torch
    from torch import nn

    from saelab.store import capture_to_store

    class Synthetic(nn.Module):
        """Token embedding plus fresh noise at a named hookpoint (`acts`)."""

        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(4096, D)
            self.acts = nn.Identity()

        def forward(self, input_ids):
            x = self.embed(input_ids)
            return self.acts(x + torch.randn_like(x))

    torch.manual_seed(0)
    model = Synthetic().requires_grad_(False)
    n_ctx = args.rows // 128
    tokens = torch.randint(0, 4096, (n_ctx, 128))
    store = capture_to_store(model, tokens, ["acts"], args.dir, model_name="synthetic",
                             norm_factor=None, batch_contexts=64, shard_rows=args.shard_rows,
                             progress=False)
    print(json.dumps({"rows": store.n_rows, "shards": len(store.manifest["shards"])}))


def measure(args) -> None:
    import torch

    import saelab
    from saelab.store import ActivationStore

    store = ActivationStore(args.dir)
    base = rss_mb()
    reset_peak()
    t = time.perf_counter()
    result = {"mode": args.mode, "buffer_rows": args.buffer, "baseline_mb": base}
    if args.mode == "read":
        batches = store.shuffled(4096, buffer_rows=args.buffer, seed=0)
        n = batches.batches_per_epoch()
        it = batches.iterate()
        total = 0.0
        for _ in range(n):
            total += float(next(it)[0].sum())
        result["batches"] = n
    elif args.mode == "train":
        torch.manual_seed(0)
        sae = saelab.create("topk", d_in=D, n_latents=4096, k=32)
        cfg = saelab.TrainConfig(epochs=1.0, batch_size=4096, buffer_rows=args.buffer,
                                 progress=False, seed=0)
        saelab.fit(sae, store, cfg)
        result["steps"] = sae.provenance.get("steps")
    result["seconds"] = round(time.perf_counter() - t, 1)
    result["peak_mb"] = peak_mb()
    print(json.dumps(result))


def child(args, mode: str, buffer: int) -> dict:
    cmd = [sys.executable, __file__, "--mode", mode, "--dir", args.dir, "--buffer", str(buffer)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=131072)
    p.add_argument("--shard-rows", type=int, default=8192)
    p.add_argument("--buffer", type=int, default=16384)
    p.add_argument("--dir", default="/tmp/saelab_memory_store")
    p.add_argument("--mode", choices=["driver", "build", "baseline", "read", "train"],
                   default="driver")
    args = p.parse_args()
    if args.mode == "build":
        return build(args)
    if args.mode != "driver":
        return measure(args)

    from saelab.store import ActivationStore, is_store

    if not is_store(args.dir) or ActivationStore(args.dir).n_rows != args.rows:
        subprocess.run([sys.executable, __file__, "--mode", "build", "--dir", args.dir,
                        "--rows", str(args.rows), "--shard-rows", str(args.shard_rows)],
                       check=True)
    store = ActivationStore(args.dir)
    size = sum((Path(args.dir) / s["file"]).stat().st_size for s in store.manifest["shards"])
    buf_mb = args.buffer * D * 4 / MB
    print(f"date {datetime.datetime.now().isoformat(timespec='seconds')}; load average "
          f"{os.getloadavg()[0]:.2f}; python {sys.version.split()[0]}")
    print(f"store: {store.n_rows} rows x {D} float32 = {size / MB:.0f} MB in "
          f"{len(store.manifest['shards'])} shards; shuffle buffer {args.buffer} rows = "
          f"{buf_mb:.0f} MB (store = {size / MB / buf_mb:.1f}x buffer)")
    rows = [child(args, "baseline", args.buffer), child(args, "read", args.buffer),
            child(args, "read", 4 * args.buffer), child(args, "train", args.buffer)]
    print(f"{'measurement':<34}{'buffer MB':>10}{'peak RSS MB':>13}{'over baseline':>15}"
          f"{'seconds':>9}")
    base = rows[0]["peak_mb"]
    for r in rows:
        name = {"baseline": "import + open store", "read": "read one epoch, shuffled",
                "train": "train TopK one epoch"}[r["mode"]]
        print(f"{name:<34}{r['buffer_rows'] * D * 4 / MB:>10.0f}{r['peak_mb']:>13.0f}"
              f"{r['peak_mb'] - base:>15.0f}{r['seconds']:>9}")


if __name__ == "__main__":
    main()
