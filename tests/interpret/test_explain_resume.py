"""`saelab explain` keeps what it wrote: a run killed mid-way (SIGKILL, in its own process)
loses no finished feature, a rerun skips them and finishes the rest without writing any feature
twice, a torn last line is cut off and redone, and a server that cannot be reached stops the run
with a clear message and the file intact."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

import saelab
from saelab.interpret.explain.run import append_result, read_results
from saelab.store import capture_to_store

pytest.importorskip("openai", reason="the HTTP explainer needs the openai client")

N_FEATURES = 12


class Judge(BaseHTTPRequestHandler):
    """A slow OpenAI-compatible server: an explanation, or a list of labels."""

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        time.sleep(0.15)
        text = ("[EXPLANATION]: Tokens of planted text." if "[EXPLANATION]" in
                body["messages"][0]["content"] else "[1, 0, 1, 0, 1]")
        data = json.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                           "choices": [{"index": 0, "finish_reason": "stop", "message": {
                               "role": "assistant", "content": text}}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def run_inputs(model_dir, tmp_path_factory):
    """A store of a tiny Llama (SmolLM2's tokenizer) and a TopK SAE on its layer 1."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("explain_resume")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokens = torch.randint(300, 3000, (24, 32), generator=torch.Generator().manual_seed(0))
    capture_to_store(model, tokens, ["model.layers.1"], root / "store",
                     model_name=str(model_dir), norm_factor=None, progress=False)
    sae = saelab.create("topk", d_in=32, n_latents=N_FEATURES, k=3, seed=0)
    sae.provenance["hookpoint"] = "model.layers.1"
    sae.save(root / "sae")
    return root


def command(root, url: str, out) -> list[str]:
    return [sys.executable, "-m", "saelab.cli", "explain", str(root / "sae"), str(root / "store"),
            "--features", f"0:{N_FEATURES}", "--scorers", "detection", "--explainer-url", url,
            "--explainer-model", "m", "--max-retries", "1", "--timeout", "5", "--no-progress",
            "--out", str(out)]


def lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_a_killed_run_loses_nothing_and_a_rerun_finishes_without_duplicates(
        run_inputs, server, tmp_path):
    out = tmp_path / "explain"
    results = out / "explanations.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command(run_inputs, server, out), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if results.is_file() and results.read_text().count("\n") >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = lines(results)
    assert 3 <= len(before) < N_FEATURES  # killed mid-way

    with socket.socket() as s:  # an unreachable server: a clear error, the file untouched
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    failed = subprocess.run(command(run_inputs, dead, out), env=env, capture_output=True,
                            text=True, timeout=120)
    assert failed.returncode == 2 and "cannot connect" in failed.stderr
    assert "Traceback" not in failed.stderr and "rerun the same command" in failed.stderr
    assert lines(results) == before

    done = subprocess.run(command(run_inputs, server, out), env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    after = lines(results)
    assert sorted(r["feature"] for r in after) == list(range(N_FEATURES))  # each once
    assert after[:len(before)] == before  # nothing rewritten
    assert f"{N_FEATURES} features" in done.stdout and "detection" in done.stdout
    for r in after:
        assert set(r) >= {"feature", "explanation", "scores", "explainer", "examples_used"}
        assert r["explainer"] == f"m @ {server}" and set(r["scores"]) == {"detection"}


def test_a_torn_last_line_is_cut_off_and_the_next_record_reads_cleanly(tmp_path):
    path = tmp_path / "explanations.jsonl"
    append_result(path, {"feature": 0, "explanation": "a", "scores": {}})
    with open(path, "a") as f:
        f.write('{"feature": 1, "explan')  # a write a kill interrupted
    assert set(read_results(path)) == {0}
    read_results(path, repair=True)
    append_result(path, {"feature": 1, "explanation": "b", "scores": {}})
    assert [r["feature"] for r in lines(path)] == [0, 1]
