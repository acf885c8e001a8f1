"""The local viewer serves the dashboard folder on 127.0.0.1 and nothing outside it."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request

import pytest

from saelab.errors import SaelabError
from saelab.interpret.viewer import serve


@pytest.fixture
def served(tmp_path):
    """(base URL, dashboard folder) of a viewer running in a thread."""
    folder = tmp_path / "dash"
    folder.mkdir()
    (folder / "index.html").write_text("<p>features</p>")
    (tmp_path / "secret.txt").write_text("not for the browser")
    (folder / "link.txt").symlink_to(tmp_path / "secret.txt")
    (folder / "empty").mkdir()
    server = serve(folder, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder
    server.shutdown()
    server.server_close()


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_the_viewer_listens_on_loopback_only(served, tmp_path):
    server = serve(served[1], 0)
    assert server.server_address[0] == "127.0.0.1"
    server.server_close()


def test_the_dashboard_is_served(served):
    assert status(served[0] + "/index.html") == 200


def test_a_symlink_out_of_the_folder_is_not_followed(served):
    assert status(served[0] + "/link.txt") == 404
    assert status(served[0] + "/../secret.txt") == 404


def test_folders_are_not_listed(served):
    assert status(served[0] + "/empty/") == 404


def test_a_port_in_use_is_a_message_naming_the_port(served):
    port = int(served[0].rsplit(":", 1)[1])
    with pytest.raises(SaelabError, match=f"cannot listen on 127.0.0.1:{port}.*--port"):
        serve(served[1], port)
