"""The local viewer: a dashboard folder served over HTTP on 127.0.0.1 only.

Python's http.server serves the files (a static folder needs nothing more). What it adds: only
the loopback interface, no directory listings, nothing whose real path (symbolic links
resolved) lies outside the folder, and a message instead of a traceback when the port is taken.
"""

from __future__ import annotations

import functools
import http.server
from pathlib import Path

from saelab.errors import SaelabError

HOST = "127.0.0.1"
"""The viewer never listens beyond this machine."""


class FolderHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files of `directory` whose resolved path stays inside it; 404 otherwise."""

    def send_head(self):
        real = Path(self.translate_path(self.path)).resolve()
        root = Path(self.directory).resolve()
        if real != root and not real.is_relative_to(root):
            self.send_error(404, "outside the dashboard folder")
            return None
        return super().send_head()

    def list_directory(self, path):  # a folder without index.html is not listed
        self.send_error(404, "no index.html here")
        return None

    def log_message(self, format: str, *args) -> None:  # quiet: the CLI owns the terminal
        pass


def serve(folder: str | Path, port: int = 8000) -> http.server.ThreadingHTTPServer:
    """A server (not yet serving: call `serve_forever`) of dashboard `folder` on 127.0.0.1."""
    folder = Path(folder)
    if not (folder / "index.html").is_file():
        raise SaelabError(f"{folder} holds no index.html; build one with `saelab dashboard`")
    handler = functools.partial(FolderHandler, directory=str(folder.resolve()))
    try:
        return http.server.ThreadingHTTPServer((HOST, port), handler)
    except OSError as e:
        raise SaelabError(f"cannot listen on {HOST}:{port} ({e.strerror or e}); pick another "
                          f"port with --port, or --port 0 for any free one") from None
