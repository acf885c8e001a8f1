"""Results files of bench/results/ written from row dicts (the claims benches of issue 15).

A results file (see saelab.docgen.benchmark_table) has `title`, `command`, `date`, `columns` and
`rows` (lists of strings). Runs of these benches are short and add rows one method or one seed at
a time, so the row dicts are kept too (`records`), merged by key on every write, and the table
(`columns`, `rows`) and `date` are remade from them.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if value != value else f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def merge_records(path: str | Path, records: list[dict], key: tuple[str, ...], meta: dict,
                  loadavg: tuple[float, float, float] | None = None) -> None:
    """Merge `records` into the results file at `path` (records of the same `key` values are
    replaced), stamping each with the UTC date and the 1-minute load average seen at the start
    of its run (`loadavg`, default now), then rewrite the table from all records."""
    import torch

    path = Path(path)
    data = json.loads(path.read_text()) if path.exists() else {}
    old = data.get("records") or [r for r in data.get("rows", []) if isinstance(r, dict)]
    loadavg = loadavg or os.getloadavg()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    new = [{**r, "date": stamp, "load": round(loadavg[0], 1)} for r in records]
    keys = {tuple(r.get(k) for k in key) for r in new}
    merged = [r for r in old if tuple(r.get(k) for k in key) not in keys] + new
    columns: list[str] = []
    for r in merged:
        columns += [c for c in r if c not in columns]
    dates = sorted({r.get("date", "") for r in merged} - {""}) or ["unknown"]
    data = {**meta, "date": dates[0] if len(dates) == 1 else f"{dates[0]} .. {dates[-1]}",
            "machine": f"2-core CPU shared with other agents' jobs (the load column is the "
                       f"1-minute load average when the run started), torch {torch.__version__},"
                       f" {torch.get_num_threads()} thread(s)",
            "columns": columns, "rows": [[_cell(r.get(c)) for c in columns] for r in merged],
            "records": merged}
    path.write_text(json.dumps(data, indent=1) + "\n")
