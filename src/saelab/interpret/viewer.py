"""`saelab view`: a dashboard folder served on 127.0.0.1 only.

A dashboard with browser data (`data/features.json`, written by `saelab dashboard`) is served by
the feature browser (saelab.interpret.app, Starlette on uvicorn); a folder with only static pages,
or a machine without the `viewer` extra, by Python's http.server. Either way: only the loopback
interface, no directory listings, nothing whose real path (symbolic links resolved) lies outside
the folder, and a message instead of a traceback when the port is taken. A run folder (with a
`dashboard/` inside) stands for its dashboard.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import logging
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from saelab.errors import SaelabError
from saelab.interpret.image_dashboard import IMAGE_DATA

log = logging.getLogger(__name__)

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


class AppServer:
    """The feature browser on uvicorn, with http.server's interface: `server_address`,
    `serve_forever`, `shutdown`, `server_close`. The socket is bound on creation, so a port in
    use is known before serving."""

    def __init__(self, app, sock: socket.socket):
        import uvicorn

        self.socket = sock
        self.server_address = sock.getsockname()
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.done = threading.Event()

    def serve_forever(self) -> None:
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self.done.set()

    def shutdown(self) -> None:
        """Stop serving and wait until `serve_forever` has returned."""
        self.server.should_exit = True
        self.done.wait(10)

    def server_close(self) -> None:
        self.socket.close()


def dashboard_folder(path: str | Path) -> Path:
    """The dashboard a path names: the folder itself, or a run folder's `dashboard/`."""
    path = Path(path)
    if not (path / "index.html").is_file() and (path / "dashboard" / "index.html").is_file():
        return path / "dashboard"
    return path


def bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as e:
        sock.close()
        raise SaelabError(f"cannot listen on {HOST}:{port} ({e.strerror or e}); pick another "
                          f"port with --port, or --port 0 for any free one") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(folder: str | Path, port: int = 8000, static: bool = False,
          load_dictionary: Callable[[str], Any] | None = None):
    """A server (not yet serving: call `serve_forever`) of dashboard `folder` on 127.0.0.1: the
    feature browser where the folder has its data and starlette and uvicorn are installed (unless
    `static`), else the static pages. `load_dictionary` (saelab.load) enables the prompt page."""
    folder = dashboard_folder(folder)
    if not (folder / "index.html").is_file():
        raise SaelabError(f"{folder} holds no index.html; build one with `saelab dashboard`")
    has_data = any((folder / "data" / name).is_file() for name in ("features.json", IMAGE_DATA))
    has_server = all(importlib.util.find_spec(m) for m in ("starlette", "uvicorn"))
    if has_data and not static and not has_server:
        log.warning("serving the static pages: the feature browser needs starlette and "
                    "uvicorn (pip install 'saelab[viewer]')")
    if has_data and has_server and not static:
        from saelab.interpret.app import create_app

        app = create_app(folder, load_dictionary)
        return AppServer(app, bind(port))
    handler = functools.partial(FolderHandler, directory=str(folder.resolve()))
    try:
        return http.server.ThreadingHTTPServer((HOST, port), handler)
    except OSError as e:
        raise SaelabError(f"cannot listen on {HOST}:{port} ({e.strerror or e}); pick another "
                          f"port with --port, or --port 0 for any free one") from None
