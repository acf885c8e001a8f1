"""Text from the data that holds HTML or script (a context token, an explanation, a search, a
typed prompt) is shown by the feature browser as text and never executed: proved in headless
Chromium (window.pwned stays undefined, the text is visible as written), not only in the HTML."""

from __future__ import annotations

import json
import urllib.parse

import pytest
import torch

import saelab
from saelab.interpret import collect_top_examples, write_dashboard
from tests.interpret.browser_support import browser, serving

SCRIPT = "<script>window.pwned=1</script>"
IMG = "<img src=x onerror=\"window.pwned=2\">"
EXPLANATION = "fires on <img src=y onerror=\"window.pwned=3\"> and <b>bold</b>"
N_ROWS, T = 240, 16


class Evil:
    """A tokenizer stand-in: id 0 reads as a script element, id 1 as an img with onerror."""

    def decode(self, ids):
        return "".join({0: SCRIPT, 1: IMG}.get(i, f" w{i}") for i in ids)


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    """A dashboard whose top contexts, top tokens, logit lens and explanation carry markup."""
    torch.manual_seed(0)
    sae = saelab.create("topk", d_in=16, n_latents=24, k=3)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N_ROWS, 16, generator=gen)
    tokens = torch.randint(2, 50, (N_ROWS // T, T), generator=gen)
    for row in (5, 77, 150):  # latent 3 fires hardest where the token is the script
        x[row] = 40 * sae.W_enc[3].detach()
        tokens[row // T, row % T] = 0
        tokens[row // T, (row + 1) % T] = 1
    rows = torch.arange(N_ROWS)

    def batches():
        return ((x[i:i + 64], rows[i:i + 64]) for i in range(0, N_ROWS, 64))

    top = collect_top_examples(sae, batches(), n_top=5)
    unembed = 0.1 * torch.randn(50, 16, generator=gen)
    unembed[0] = 10 * sae.W_dec[3].detach()  # the script token is the one latent 3 promotes
    out = tmp_path_factory.mktemp("evil") / "dash"
    write_dashboard(out, sae, top, tokens, rows // T, rows % T, Evil(), unembed=unembed,
                    features=[3, 4, 5], batches=batches, title="evil " + SCRIPT)
    (out / "explanations.jsonl").write_text(json.dumps(
        {"feature": 3, "explanation": EXPLANATION, "scores": {"detection": 0.5}}) + "\n")
    return out


def test_markup_in_the_data_is_shown_as_text_and_never_runs(dashboard):
    with serving(dashboard) as url, browser() as page:
        visits = ["/", "/?q=" + urllib.parse.quote(SCRIPT), "/feature/3",
                  "/prompt?text=" + urllib.parse.quote("</textarea>" + SCRIPT + IMG)]
        texts = {}
        for path in visits:
            page.goto(url + path)
            page.wait_for_load_state("load")
            assert page.evaluate("typeof window.pwned") == "undefined", path
            assert page.locator("body script, body img").count() == 0, path
            texts[path] = page.inner_text("body")
        assert SCRIPT in texts["/"] and EXPLANATION in texts["/"]  # title, explanation
        assert page.evaluate("document.title").startswith("prompt · evil " + SCRIPT)
        feature = texts["/feature/3"]
        assert SCRIPT in feature and IMG in feature and EXPLANATION in feature
        page.goto(url + "/feature/3")
        assert SCRIPT in page.locator("#logit-lens").inner_text()  # promoted token
        contexts = page.locator("table.contexts").first.inner_text()
        assert SCRIPT + IMG in contexts  # both tokens, side by side, as text
        page.goto(url + visits[3])
        assert page.input_value("#text") == "</textarea>" + SCRIPT + IMG
        assert page.evaluate("typeof window.pwned") == "undefined"
