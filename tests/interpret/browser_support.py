"""What the browser tests share: the system Chromium (installed with apt-get when missing, else
the test is skipped with the command), Playwright driving it, a viewer in a thread, and a store
of the tiny model with a random TopK SAE saved beside it."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

HOOKPOINT = "model.layers.0"
CHROMIUM = "/usr/bin/chromium"
INSTALL = "apt-get install -y chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
"""Screenshots kept after the run (gitignored)."""


def chromium() -> str:
    """The system Chromium's path; installs it with apt-get when missing and possible, else
    skips with the command (Playwright cannot download its own browser here)."""
    if not Path(CHROMIUM).exists() and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(INSTALL.split(), env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                       capture_output=True, timeout=900, check=False)
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no system Chromium at {CHROMIUM}: {INSTALL}")
    return CHROMIUM


@contextlib.contextmanager
def browser():
    """A headless Chromium page driven by Playwright."""
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="Playwright's client is missing: pip install playwright")
    path = chromium()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        try:
            page = b.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(15_000)
            yield page
        finally:
            b.close()


@contextlib.contextmanager
def serving(folder):
    """The base URL of `saelab view`'s server for `folder`, running in a thread."""
    import saelab
    from saelab.interpret.viewer import AppServer, serve

    server = serve(folder, 0, load_dictionary=saelab.load)  # as `saelab view` does
    assert isinstance(server, AppServer), "the feature browser (not the static server) runs"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def keep(screenshot: Path, name: str) -> Path:
    """Copy a screenshot into test-artifacts/ (kept after the run)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return Path(shutil.copy(screenshot, ARTIFACTS / name))


def store_and_sae(model_dir: Path, root: Path, n_tokens: int) -> tuple[Path, Path]:
    """(store, sae): `n_tokens` of the tiny model's layer 0 captured by the CLI into root/store,
    and a random TopK SAE (64 latents, k 4) on that hookpoint saved to root/sae."""
    import saelab
    from saelab.cli import main

    assert main(["capture", "--model", str(model_dir), "--hookpoints", HOOKPOINT,
                 "--n-tokens", str(n_tokens), "--context-len", "64", "--out",
                 str(root / "store"), "--no-progress"]) == 0
    sae = saelab.create("topk", d_in=32, n_latents=64, k=4, seed=0)
    sae.provenance["hookpoint"] = HOOKPOINT
    sae.save(root / "sae")
    return root / "store", root / "sae"
