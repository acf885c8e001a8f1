"""The evaluation suite on the demo's SAE: how long `saelab eval` takes (the three core families,
then every family that applies to a text SAE) and what it finds, with the model's own neurons
beside the SAE's latents where a family compares them.

Needs the demo's run folder (`make demo` writes demo_out/). Runs the CLI as a user would, in its
own process, timed from outside (model loading included):

    OMP_NUM_THREADS=2 python bench/eval_suite.py --write

writes bench/results/eval_suite_timing.json (wall time of each command and the seconds of each
family from the report's `meta`) and bench/results/eval_suite_demo.json (each family's headline
figures), shown in docs/benchmarks/evaluation.md. `similarity` is left out: it compares two
dictionaries (`--other`), and the demo has one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from results_records import merge_records  # noqa: E402  (bench/, beside this file)

CORE = ("reconstruction", "sparsity", "splice")
TEXT = CORE + ("afa", "dark_matter", "absorption", "sparse_probing", "tpp", "fms",
               "separability", "hallucination", "ood", "autointerp")
RESULTS = Path(__file__).parent / "results"


def run_eval(run: Path, families: tuple[str, ...], out: Path) -> tuple[float, dict]:
    """Run `saelab eval` on the demo's SAE and held-out store; (wall seconds, report)."""
    command = [sys.executable, "-m", "saelab", "eval", str(run / "sae"), str(run / "store_eval"),
               "--model", "smollm2-135m", "--metrics", *families, "--out", str(out)]
    print("$ saelab " + " ".join(command[3:]), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    return seconds, json.loads((out / "report.json").read_text())


def headline(report: dict) -> list[dict]:
    """One row per (family, figure): the report's numbers, the neurons' beside the latents'
    where a family gives both (figures named `neuron_*` / `raw_*` next to their own)."""
    rows = []
    for family, figures in report.items():
        if family == "meta" or not isinstance(figures, dict):
            continue
        for name, value in figures.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append({"family": family, "figure": name, "value": float(value)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=Path("demo_out"), help="the demo's run folder")
    p.add_argument("--write", action="store_true", help="write bench/results/eval_suite_*.json")
    args = p.parse_args()
    if not (args.run / "sae").is_dir() or not (args.run / "store_eval").is_dir():
        sys.exit(f"{args.run} holds no demo run (sae/ and store_eval/): run `make demo` first")
    command = "OMP_NUM_THREADS=2 python bench/eval_suite.py --write"
    timing = []
    for name, families in (("core", CORE), ("every text family", TEXT)):
        load = os.getloadavg()
        wall, report = run_eval(args.run, families, args.run / f"eval_{name.split()[0]}")
        spent = report["meta"].get("seconds", {})
        row = {"command": f"saelab eval ... --metrics {' '.join(families)}",
               "families": len(families), "wall s": round(wall, 1),
               **{f"{k} s": v for k, v in spent.items()}, "load": round(load[0], 1)}
        print(json.dumps(row), flush=True)
        timing.append(row)
        if args.write:
            merge_records(RESULTS / "eval_suite_timing.json", [row], ("command",), {
                "title": "saelab eval on the demo's SAE: wall time (model loading included) and "
                         "seconds per family (report meta)",
                "command": command,
                "notes": "demo_out/sae (TopK, 4,608 latents, k 32, SmolLM2-135M layer 3) on "
                         "demo_out/store_eval; a cell per family is that family's own time; "
                         "activations_pass is the one shared pass of the streaming families"},
                load)
    if args.write:
        merge_records(RESULTS / "eval_suite_demo.json", headline(report), ("family", "figure"), {
            "title": "Every text family on the demo's SAE (latents; neurons where a family "
                     "gives both)",
            "command": command,
            "notes": "the report of the second command above (demo_out/eval_every/report.json)"})
        print("wrote bench/results/eval_suite_timing.json, eval_suite_demo.json")


if __name__ == "__main__":
    main()
