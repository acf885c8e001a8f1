"""The feature browser's precomputed data equals what a direct computation gives, and its server
answers only inside the dashboard folder (Starlette's test client; the browser tests drive a real
Chromium)."""

from __future__ import annotations

import json

import pytest
import torch

import saelab
from saelab.interpret import collect_top_examples, write_dashboard
from saelab.interpret.feature_data import collect_feature_stats

N_ROWS, T = 320, 16
FEATURES = [0, 1, 2, 3, 4, 5]


class Words:
    def decode(self, ids):
        return "".join(f" w{i}" for i in ids)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    sae = saelab.create("topk", d_in=16, n_latents=20, k=4)
    x = torch.randn(N_ROWS, 16, generator=torch.Generator().manual_seed(1))
    rows = torch.arange(N_ROWS)
    keep = rows % 7 != 3  # some positions have no row (left out at capture)
    kept = rows[keep]

    def batches():  # row ids are store rows (0..n-1), in order, in batches of 50
        return ((x[keep][i:i + 50], torch.arange(i, min(i + 50, int(keep.sum()))))
                for i in range(0, int(keep.sum()), 50))

    tokens = torch.randint(0, 40, (N_ROWS // T, T), generator=torch.Generator().manual_seed(2))
    row_ctx, row_pos = kept // T, kept % T
    top = collect_top_examples(sae, batches(), n_top=4)
    out = tmp_path_factory.mktemp("data") / "dash"
    write_dashboard(out, sae, top, tokens, row_ctx, row_pos, Words(), features=FEATURES,
                    batches=batches)
    with torch.no_grad():
        codes = sae.encode(x[keep])  # [rows kept, L]
    return out, sae, codes, row_ctx, row_pos, top, batches


def records(out):
    return {f: json.loads((out / "data" / "features" / f"{f:05d}.json").read_text())
            for f in FEATURES}


def test_every_token_shown_carries_the_features_own_activation(setup):
    out, _, codes, row_ctx, row_pos, _, _ = setup
    where = {(int(c), int(p)): r for r, (c, p) in enumerate(zip(row_ctx, row_pos))}
    checked = 0
    for f, rec in records(out).items():
        for group in rec["groups"]:
            for c in group["contexts"]:
                start = c["pos"] - [focus for _, _, focus in c["tokens"]].index(True)
                for i, (_, act, _) in enumerate(c["tokens"]):
                    row = where.get((c["ctx"], start + i))
                    if row is None:
                        assert act is None  # a position the store left out
                    else:
                        assert act == pytest.approx(float(codes[row, f]), abs=1e-5)
                        checked += 1
    assert checked > 300


def test_interval_examples_lie_in_their_interval_and_cooccurrence_is_exact(setup):
    _, sae, codes, _, _, top, batches = setup
    stats = collect_feature_stats(sae, batches(), top, FEATURES, n_quantiles=3, n_samples=4)
    fires = (codes > 0).long()
    assert torch.equal(stats.cooccurrence, fires[:, FEATURES].t() @ fires)
    for n, f in enumerate(FEATURES):
        edges = [0.0, *stats.quantile_edges[n].tolist(), float("inf")]
        col = codes[:, f][codes[:, f] > 0].double()
        for q in range(3):
            in_q = int(((col >= edges[q]) & (col < edges[q + 1])).sum())
            assert int((stats.sample_rows[n, q] >= 0).sum()) == min(in_q, 4)  # reservoir full
            for row, value in zip(stats.sample_rows[n, q].tolist(),
                                  stats.sample_values[n, q].tolist()):
                if row < 0:
                    continue
                assert value == pytest.approx(float(codes[row, f]))
                assert edges[q] <= value < edges[q + 1]


def test_the_list_searches_and_sorts(setup):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from saelab.interpret.app import create_app

    out = setup[0]
    client = TestClient(create_app(out))
    page = client.get("/", params={"sort": "feature", "desc": "0"})
    assert page.status_code == 200 and "script-src" not in page.headers["content-security-policy"]
    shown = [int(s.split('"')[0]) for s in page.text.split('href="/feature/')[1:]]
    assert shown == FEATURES
    token = json.loads((out / "data" / "features.json").read_text())["features"][2]["top_tokens"][0]
    found = client.get("/", params={"q": token.strip()}).text
    assert f'href="/feature/{FEATURES[2]}"' in found


def test_the_server_never_answers_outside_the_folder(setup, tmp_path):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from saelab.interpret.app import create_app

    out = setup[0]
    (out.parent / "secret.txt").write_text("not for the browser")
    link = out / "link.txt"
    if not link.exists():
        link.symlink_to(out.parent / "secret.txt")
    client = TestClient(create_app(out))
    assert client.get("/index.html").status_code == 200  # the static export, same folder
    assert client.get("/link.txt").status_code == 404
    assert client.get("/../secret.txt").status_code == 404
    assert client.get("/%2e%2e/secret.txt").status_code == 404
    assert client.get("/data/").status_code == 404  # no listings
    assert client.get("/feature/19").status_code == 404  # not a feature of this dashboard


def test_the_browser_listens_on_loopback_only_and_names_a_port_in_use(setup):
    pytest.importorskip("uvicorn")
    from saelab.errors import SaelabError
    from saelab.interpret.viewer import AppServer, serve

    server = serve(setup[0], 0)
    try:
        assert isinstance(server, AppServer) and server.server_address[0] == "127.0.0.1"
        port = server.server_address[1]
        with pytest.raises(SaelabError, match=f"cannot listen on 127.0.0.1:{port}.*--port"):
            serve(setup[0], port)
    finally:
        server.server_close()
    static = serve(setup[0], 0, static=True)  # --static: http.server over the pages
    static.server_close()
    assert not isinstance(static, AppServer)


def test_explanations_beside_the_dashboard_are_listed_searched_and_sorted_by_score(setup):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from saelab.interpret.app import create_app

    out = setup[0]
    lines = [{"feature": 1, "explanation": "plural nouns", "scores": {"detection": 0.9,
                                                                     "embedding": 0.7}},
             {"feature": 4, "explanation": "closing brackets", "scores": {"detection": 0.2}},
             "not json"]
    (out.parent / "explanations.jsonl").write_text(
        "\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines) + "\n")
    try:
        client = TestClient(create_app(out))
        page = client.get("/", params={"sort": "score", "desc": "1"}).text
        shown = [int(s.split('"')[0]) for s in page.split('href="/feature/')[1:]]
        assert shown[:2] == [1, 4] and "0.80" in page  # mean of the scores
        found = client.get("/", params={"q": "BRACKETS"}).text
        assert 'href="/feature/4"' in found and 'href="/feature/1"' not in found
        assert "plural nouns" in client.get("/feature/1").text
    finally:
        (out.parent / "explanations.jsonl").unlink()
