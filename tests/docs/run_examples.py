"""Run the examples of Markdown pages, as the test suite does: `python run_examples.py OUT.json
PAGE.md ...`. Each page runs in a fresh namespace and a fresh temporary folder, its runnable
blocks in order (see fenced.py); OUT.json gets, per page, whether it passed and the error.

Runs in its own process so that what the examples register (a variant, a metric family) or
change (the working folder) does not reach the rest of the test suite."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fenced import blocks, commands, runnable  # noqa: E402


def run_block(block, name: str, namespace: dict) -> None:
    """Run one block: Python in `namespace`; a bash block's `saelab` commands through the CLI's
    own entry point, each of which must exit 0."""
    if block.language == "python":
        exec(compile(block.code, f"{name}:{block.line}", "exec"), namespace)
        return
    from saelab.cli import main

    for argv in commands(block):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        if code not in (0, None):
            raise RuntimeError(f"{name}:{block.line}: `saelab {' '.join(argv)}` exited {code}")


def run_page(page: Path) -> dict:
    """Run the runnable blocks of `page` in a fresh folder; the outcome as a dict."""
    start, home = time.time(), os.getcwd()
    with tempfile.TemporaryDirectory(prefix="saelab_docs_") as folder:
        os.chdir(folder)
        module = types.ModuleType(f"docs_example_{abs(hash(str(page)))}")
        sys.modules[module.__name__] = module  # dataclasses defined in an example look it up
        namespace = module.__dict__
        try:
            for block in blocks(page):
                if runnable(block):
                    run_block(block, str(page), namespace)
            error = None
        except BaseException:  # noqa: BLE001  (reported to the test, which fails)
            error = traceback.format_exc(limit=-8)
        finally:
            os.chdir(home)
    return {"ok": error is None, "error": error, "seconds": round(time.time() - start, 2)}


def main(out: str, pages: list[str]) -> None:
    results = {page: run_page(Path(page).resolve()) for page in pages}
    Path(out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
