"""Claims of the recent SAE methods (issue 4), each checked side by side with a TopK baseline.

This driver only collects and prints; the claims live in modules next to it.

Interface for claim modules (the whole contract):

- a file `bench/claims_<topic>.py` (found by name, imported with bench/ on sys.path);
- it defines `CLAIMS: dict[str, Callable[[argparse.Namespace], list[dict]]]`, a claim name
  (short, unique across modules, e.g. "mutual_choice_dead") -> a function that runs the
  comparison and returns table rows;
- each row is a flat dict of plain values (str, int, float, bool, None). Use these keys where they
  apply, so that rows of different modules line up: `data` (e.g. "planted", "smollm2"), `method`
  (architecture and its key field, e.g. "topk k=5"), `l0`, `fvu`, `dead` (fraction), and
  `verdict` (one short phrase: "holds", "does not hold", or what was measured against what);
  any other key becomes an extra column. The driver adds `claim` (the CLAIMS key) itself.
- the function reads only these attributes of `args`: `quick` (bool: small sizes, a smoke test of
  seconds to a minute or two), `real` (bool: also run on SmolLM2 activations where the claim
  has a real-data version), `seed` (int). It must not print the table itself (logging is fine).

Usage:

    .venv/bin/python bench/seed_methods.py --quick           # every claim, small sizes
    .venv/bin/python bench/seed_methods.py                   # every claim, full sizes
    .venv/bin/python bench/seed_methods.py --real            # and on SmolLM2 activations
    .venv/bin/python bench/seed_methods.py --only mutual afa # claims whose name contains these
    .venv/bin/python bench/seed_methods.py --list            # the claims found, run nothing
    .venv/bin/python bench/seed_methods.py --json out.json   # also write the rows as JSON

A claim that raises is reported as one row with its error, and the others still run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import math
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIRST_COLUMNS = ("claim", "data", "method", "l0", "fvu", "dead")
LAST_COLUMNS = ("seconds", "verdict")


def discover() -> dict[str, Callable]:
    """Every claim of every `claims_*.py` next to this file, in file then definition order."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    claims: dict[str, Callable] = {}
    for path in sorted(HERE.glob("claims_*.py")):
        module = importlib.import_module(path.stem)
        for name, fn in getattr(module, "CLAIMS", {}).items():
            if name in claims:
                raise SystemExit(f"claim {name!r} is defined twice ({path.name})")
            claims[name] = fn
    return claims


def run(claims: dict[str, Callable], args: argparse.Namespace) -> list[dict]:
    rows: list[dict] = []
    for name, fn in claims.items():
        t = time.time()
        try:
            got = fn(args)
        except Exception as e:  # noqa: BLE001  (a broken claim must not hide the others)
            traceback.print_exc(file=sys.stderr)
            got = [{"verdict": f"error: {type(e).__name__}: {e}"}]
        seconds = time.time() - t
        for row in got:
            rows.append({"claim": name, **row, "seconds": round(row.get("seconds", seconds), 1)})
        print(f"[{name}: {len(got)} rows, {seconds:.0f} s]", file=sys.stderr, flush=True)
    return rows


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.4g}"
    return str(value)


def table(rows: list[dict]) -> str:
    """The rows as one fixed-width text table; columns: the common ones first, then every other
    key in first-seen order, seconds and verdict last."""
    seen = [k for row in rows for k in row]
    middle = [k for k in dict.fromkeys(seen) if k not in FIRST_COLUMNS + LAST_COLUMNS]
    columns = [c for c in FIRST_COLUMNS + tuple(middle) + LAST_COLUMNS if c in seen]
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    p.add_argument("--real", action="store_true", help="also on SmolLM2 activations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="*", default=None, help="claims whose name contains any of these")
    p.add_argument("--list", action="store_true", help="list the claims found and exit")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args()
    claims = discover()
    if args.only:
        claims = {k: v for k, v in claims.items() if any(s in k for s in args.only)}
    if args.list:
        print("\n".join(claims) or "no claims found")
        return
    import torch

    print(f"date {datetime.datetime.now().isoformat(timespec='seconds')}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'quick' if args.quick else 'full'}{', real' if args.real else ''}, seed {args.seed}")
    rows = run(claims, args)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
