"""What verifying shard checksums costs: one shuffled training-read pass over a store, with and
without `ActivationStore(verify=True)`, and `saelab check` (every shard hashed) alone.

    python bench/store_verify.py STORE            # e.g. demo_out/store_train after `make demo`
    python bench/store_verify.py STORE --repeats 3 --write

Both passes read the same batches (same seed) from fresh store objects, alternating (plain,
verified, plain, verified, ...) so that load on the machine and the page cache hit both alike;
the first pass warms the page cache and is not timed. `--write` saves the table as
bench/results/store_verify.json for the docs' benchmark page.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from saelab.store import ActivationStore  # noqa: E402


def read_pass(path: Path, verify: bool, batch: int) -> float:
    """Seconds to read every row of the store in shuffled training batches."""
    store = ActivationStore(path, verify=verify)
    start = time.perf_counter()
    batches = store.shuffled(batch, seed=0)  # epochs repeat without end: one is read
    for _ in itertools.islice(batches, batches.batches_per_epoch(0)):
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="write bench/results/store_verify.json")
    args = parser.parse_args()
    store = ActivationStore(args.store)
    size = sum((args.store / s["file"]).stat().st_size for s in store.manifest["shards"])
    read_pass(args.store, False, args.batch)  # warm the page cache
    plain, verified = [], []
    for _ in range(args.repeats):
        plain.append(read_pass(args.store, False, args.batch))
        verified.append(read_pass(args.store, True, args.batch))
    start = time.perf_counter()
    ActivationStore(args.store).verify()
    check = time.perf_counter() - start
    p, v = statistics.median(plain), statistics.median(verified)
    batches = -(-store.n_rows // args.batch)
    rows = [["shuffled read, no verification", f"{p:.2f} s", f"{1000 * p / batches:.1f} ms", "1.00x"],
            ["shuffled read, shards verified on first read", f"{v:.2f} s",
             f"{1000 * v / batches:.1f} ms", f"{v / p:.2f}x"],
            ["saelab check (every shard hashed, row counts read)", f"{check:.2f} s", "", ""]]
    for row in rows:
        print(" | ".join(row))
    print(f"{store.n_rows} rows, {len(store.manifest['shards'])} shards, {size / 2**20:.0f} MiB, "
          f"sha256 at {size / 2**20 / max(check, 1e-9):.0f} MiB/s (including the read)")
    if args.write:
        result = {
            "title": "Cost of verifying shard checksums",
            "command": f"python bench/store_verify.py {args.store} --repeats {args.repeats} --write",
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "machine": f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f} at the end",
            "notes": f"{store.n_rows} rows x {store.d(store.hookpoint())} floats, "
                     f"{len(store.manifest['shards'])} shards, {size / 2**20:.0f} MiB, page cache "
                     f"warm; batch {args.batch}; medians of {args.repeats} alternating passes",
            "columns": ["pass", "time", "per batch", "ratio"],
            "rows": rows,
        }
        out = Path(__file__).parent / "results" / "store_verify.json"
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
