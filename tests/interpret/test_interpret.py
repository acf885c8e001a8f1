"""Top-activating examples (streaming = brute force) and the static HTML dashboard."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import saelab
from saelab.errors import ConfigError, DataError, FormatError, OutputExistsError
from saelab.interpret import TopExamples, collect_top_examples, select_features, write_dashboard
from saelab.interpret.dashboard import TokenText

N_ROWS, T = 300, 20  # 15 contexts of 20 tokens
PLANTED = {3: [(5, 50.0), (77, 40.0), (200, 30.0)], 31: [(12, 200.0), (250, 150.0)]}
"""latent -> [(row index, scale)]: rows pushed hard along the latent's encoder direction."""
RARE, DEAD = 31, 30
SCRIPT = "<script>alert(1)</script>"
PROMOTED = 5  # token id the planted unembed makes feature 3 promote


@pytest.fixture(scope="module")
def sae():
    torch.manual_seed(0)
    sae = saelab.create("topk", d_in=16, n_latents=32, k=4)
    with torch.no_grad():
        sae.b_enc[RARE] = -50.0  # fires only on its planted rows
        sae.b_enc[DEAD] = -1e4  # never fires
    return sae


@pytest.fixture(scope="module")
def data(sae):
    """Activations [N_ROWS, 16] with planted rows, and global row ids that are not positions."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N_ROWS, 16, generator=gen)
    for latent, rows in PLANTED.items():
        for row, scale in rows:
            x[row] = scale * sae.W_enc[latent].detach() + 0.01 * x[row]
    row_ids = 1000 + torch.randperm(N_ROWS, generator=gen)
    return x, row_ids


def batches(x, row_ids, size):
    return ((x[i:i + size], row_ids[i:i + size]) for i in range(0, len(x), size))


def brute_force(sae, x, row_ids, n_top):
    """Top-n positive codes per latent over all rows at once."""
    with torch.no_grad():
        codes = sae.encode(x)
    values = torch.zeros(sae.n_latents, n_top)
    ids = torch.full((sae.n_latents, n_top), -1, dtype=torch.int64)
    for latent in range(sae.n_latents):
        col = codes[:, latent]
        pos = (col > 0).nonzero().flatten()
        order = pos[col[pos].argsort(descending=True)][:n_top]
        values[latent, :len(order)] = col[order]
        ids[latent, :len(order)] = row_ids[order]
    return codes, values, ids


@pytest.mark.parametrize("batch_size", [1, 7, 64, N_ROWS])
def test_streaming_top_examples_equal_brute_force(sae, data, batch_size):
    x, row_ids = data
    codes, values, ids = brute_force(sae, x, row_ids, n_top=8)
    top = collect_top_examples(sae, batches(x, row_ids, batch_size), n_top=8)
    assert torch.equal(top.row_ids, ids)
    torch.testing.assert_close(top.values, values)
    assert torch.equal(top.fire_counts, (codes > 0).sum(0))
    assert top.n_rows == N_ROWS
    torch.testing.assert_close(top.max_act, codes.max(0).values.clamp_min(0))


def test_planted_rows_are_the_top_examples_and_empty_slots_are_marked(sae, data):
    x, row_ids = data
    top = collect_top_examples(sae, batches(x, row_ids, 32), n_top=8)
    assert top.row_ids[3, :3].tolist() == [int(row_ids[r]) for r, _ in PLANTED[3]]
    assert top.row_ids[RARE, :2].tolist() == [int(row_ids[r]) for r, _ in PLANTED[RARE]]
    assert (top.row_ids[RARE, 2:] == -1).all() and (top.values[RARE, 2:] == 0).all()
    assert top.fire_counts[DEAD] == 0 and (top.row_ids[DEAD] == -1).all()
    assert (top.values[:, :-1] >= top.values[:, 1:]).all()  # descending


def test_histogram_counts_every_positive_code_in_its_bin(sae, data):
    x, row_ids = data
    codes = sae.encode(x).detach().double()
    top = collect_top_examples(sae, batches(x, row_ids, 50), n_bins=12, hist_range=(0.1, 10.0))
    edges = top.hist_edges.numpy()
    assert edges.shape == (13,) and np.isclose(edges[0], 0.1) and np.isclose(edges[-1], 10.0)
    assert torch.equal(top.hist_counts.sum(1), top.fire_counts)
    for latent in range(sae.n_latents):
        vals = codes[:, latent][codes[:, latent] > 0].numpy()
        expected, _ = np.histogram(np.clip(vals, edges[0], edges[-1]), bins=edges)
        assert top.hist_counts[latent].tolist() == expected.tolist(), latent


def test_histogram_range_is_decided_from_the_first_batch(sae, data):
    x, row_ids = data
    first = sae.encode(x[:64]).detach().max().item()
    top = collect_top_examples(sae, batches(x, row_ids, 64), n_bins=40)
    assert top.hist_edges.shape == (41,)
    assert top.hist_edges[-1].item() == pytest.approx(10 * first, rel=1e-6)
    assert (top.hist_edges[1:] > top.hist_edges[:-1]).all()
    assert torch.equal(top.hist_counts.sum(1), top.fire_counts)


def test_top_examples_save_load_round_trip(sae, data, tmp_path):
    x, row_ids = data
    top = collect_top_examples(sae, batches(x, row_ids, 64), n_top=5)
    back = TopExamples.load(top.save(tmp_path / "top.safetensors"))
    assert back.n_rows == top.n_rows
    for name in ("values", "row_ids", "fire_counts", "max_act", "hist_counts", "hist_edges"):
        assert torch.equal(getattr(back, name), getattr(top, name)), name
    with pytest.raises(FormatError):
        TopExamples.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(FormatError):
        TopExamples.load(tmp_path / "junk.safetensors")


def test_collect_rejects_bad_shapes_and_nan(sae):
    with pytest.raises(DataError):
        collect_top_examples(sae, [(torch.randn(4, 15), torch.arange(4))])
    with pytest.raises(DataError):
        collect_top_examples(sae, [(torch.randn(4, 16), torch.arange(3))])
    bad = torch.randn(4, 16)
    bad[2, 5] = float("nan")
    with pytest.raises(DataError):
        collect_top_examples(sae, [(bad, torch.arange(4))])


# --- dashboard --------------------------------------------------------------------------------
class FakeTokenizer:
    """decode([id]) -> a fixed string per id; id 0 is a script tag, id 1 a newline."""

    def decode(self, ids):
        return "".join({0: SCRIPT, 1: "\n", 2: " ", PROMOTED: "PROMOTEDTOKEN"}.get(i, f" w{i}")
                       for i in ids)


@pytest.fixture(scope="module")
def corpus(data):
    """tokens [15, T] with the script token at every planted row, and the row -> (ctx, pos) map."""
    _, row_ids = data
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randint(10, 60, (N_ROWS // T, T), generator=gen)
    tokens[:, 3] = 1  # newlines somewhere in most windows
    row_ctx = torch.empty(row_ids.max() + 1, dtype=torch.int64)
    row_pos = torch.empty_like(row_ctx)
    row_ctx[row_ids], row_pos[row_ids] = torch.arange(N_ROWS) // T, torch.arange(N_ROWS) % T
    for rows in PLANTED.values():
        for r, _ in rows:
            tokens[r // T, r % T] = 0
    return tokens, row_ctx, row_pos


@pytest.fixture(scope="module")
def top(sae, data):
    x, row_ids = data
    return collect_top_examples(sae, batches(x, row_ids, 64), n_top=6)


def html_files(out):
    return {p.relative_to(out).as_posix(): p.read_text(encoding="utf-8") for p in
            out.rglob("*.html")}


def unembed_promoting(sae, vocab=60):
    gen = torch.Generator().manual_seed(3)
    unembed = 0.1 * torch.randn(vocab, 16, generator=gen)
    unembed[PROMOTED] = 10 * sae.W_dec[3].detach()
    return unembed


def test_dashboard_writes_index_and_linked_feature_pages(sae, top, corpus, tmp_path):
    out = write_dashboard(tmp_path / "dash", sae, top, *corpus, FakeTokenizer(),
                          features=[3, RARE, 7], extra={"fvu": 0.123456})
    files = html_files(out)
    assert set(files) == {"index.html", "features/00003.html", "features/00031.html",
                          "features/00007.html"}
    links = set(re.findall(r'href="(features/\d+\.html)"', files["index.html"]))
    assert links == {"features/00003.html", "features/00031.html", "features/00007.html"}
    page = files["features/00003.html"]
    assert "<svg" in page and "../index.html" in page
    assert f"{top.values[3, 0].item():.3f}" in page  # activation value shown
    assert "0.1235" in files["index.html"]  # extra table, compact float
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_dashboard_escapes_every_data_string(sae, top, corpus, tmp_path):
    out = write_dashboard(tmp_path / "dash", sae, top, *corpus, FakeTokenizer(),
                          title=SCRIPT, features=[3, RARE],
                          extra={"<img src=x onerror=alert(1)>": SCRIPT})
    for name, text in html_files(out).items():
        assert "<script" not in text.lower(), name
        assert "<img" not in text, name
    page = html_files(out)["features/00003.html"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert '<span class="hl"' in page and "↵" in page  # highlighted token, visible newline


def test_dashboard_logit_effect_only_with_unembed(sae, top, corpus, tmp_path):
    with_u = write_dashboard(tmp_path / "a", sae, top, *corpus, FakeTokenizer(),
                             unembed=unembed_promoting(sae), features=[3])
    without = write_dashboard(tmp_path / "b", sae, top, *corpus, FakeTokenizer(), features=[3])
    page_u = html_files(with_u)["features/00003.html"]
    promoted = page_u[page_u.index("Logit effect"):]
    assert re.search(r'<td><span class="pill">PROMOTEDTOKEN</span></td>\s*<td class="num pos">',
                     promoted)
    assert "PROMOTEDTOKEN" not in html_files(without)["features/00003.html"]
    with pytest.raises(DataError):
        write_dashboard(tmp_path / "c", sae, top, *corpus, FakeTokenizer(),
                        unembed=torch.randn(60, 15), features=[3])


def test_default_selection_is_live_frequent_plus_seeded_sample(sae, top, corpus, tmp_path):
    chosen = select_features(top, n_features=6)
    assert chosen == select_features(top, n_features=6) and len(chosen) == 6
    assert all(top.fire_counts[f] > 0 for f in chosen) and DEAD not in chosen
    most = top.fire_counts.argsort(descending=True, stable=True)[:3].tolist()
    assert set(most) <= set(chosen)
    counts = [int(top.fire_counts[f]) for f in chosen]
    assert counts == sorted(counts, reverse=True)
    assert DEAD not in select_features(top, n_features=100)
    out = write_dashboard(tmp_path / "dash", sae, top, *corpus, FakeTokenizer(), n_features=6)
    assert len(list((out / "features").iterdir())) == 6
    with pytest.raises(ConfigError):
        write_dashboard(tmp_path / "bad", sae, top, *corpus, FakeTokenizer(), features=[32])


def test_dashboard_replaces_only_a_previous_dashboard(sae, top, corpus, tmp_path):
    out = tmp_path / "dash"
    write_dashboard(out, sae, top, *corpus, FakeTokenizer(), features=[3, 7])
    write_dashboard(out, sae, top, *corpus, FakeTokenizer(), features=[RARE])
    assert sorted(p.name for p in (out / "features").iterdir()) == ["00031.html"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        write_dashboard(other, sae, top, *corpus, FakeTokenizer(), features=[3])
    assert (other / "keep.txt").read_text() == "mine"


def test_token_text_is_visible_and_keeps_sentencepiece_spaces():
    class SentencePieceLike:
        def decode(self, ids):
            return {0: "word", 1: "\n", 2: "a\tb"}[ids[0]]

        def convert_ids_to_tokens(self, i):
            return {0: "▁word", 1: "<0x0A>", 2: "a\tb"}[i]

    text = TokenText(SentencePieceLike())
    assert [text(0), text(1), text(2)] == [" word", "↵", "a⇥b"]
    assert TokenText(None)(7) == "⟨7⟩"
