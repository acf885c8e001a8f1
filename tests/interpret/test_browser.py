"""The feature browser in a real browser (headless system Chromium driven by Playwright), on a
dashboard that `saelab dashboard` built for a tiny Llama: the list loads and filters, a feature
page shows every context token shaded with its activation, and a typed prompt shows the features
firing on each token (the model runs on the server). Screenshots of the prompt and feature
pages are kept in test-artifacts/."""

from __future__ import annotations

import json
import re

import pytest

from saelab.cli import main
from tests.interpret.browser_support import browser, keep, serving, store_and_sae

@pytest.fixture(scope="module")
def dashboard(model_dir, tmp_path_factory):
    """A dashboard of a random TopK SAE (64 latents) on a store of the tiny model's layer 0."""
    root = tmp_path_factory.mktemp("browser")
    store, sae = store_and_sae(model_dir, root, 2048)
    assert main(["dashboard", str(sae), str(store), "--out",
                 str(root / "dash"), "--model", str(model_dir), "--n-features", "20"]) == 0
    return root / "dash"


def test_list_search_feature_and_prompt_in_chromium(dashboard, tmp_path):
    index = json.loads((dashboard / "data" / "features.json").read_text())["features"]
    first = index[0]
    with serving(dashboard) as url, browser() as page:
        page.goto(url + "/")
        assert page.locator("tr.feature-row").count() == len(index) == 20
        # search by a token the first feature fires on: only features whose tokens match remain
        token = first["top_tokens"][0].strip() or str(first["feature"])
        page.fill("#q", token)
        page.click("#search button")
        page.wait_for_url(re.compile(r"q="))
        shown = page.locator("tr.feature-row td:first-child a").all_inner_texts()
        assert str(first["feature"]) in shown and 0 < len(shown) <= len(index)
        # sort by max activation, ascending
        page.goto(url + "/?sort=max_act&desc=0")
        acts = [float(t) for t in page.locator("tr.feature-row td:nth-child(4)").all_inner_texts()]
        assert acts == sorted(acts)
        # a feature page: every token of each context carries its activation on hover
        page.goto(url + "/")
        page.click(f"a[href='/feature/{first['feature']}']")
        page.wait_for_url(re.compile(rf"/feature/{first['feature']}$"))
        assert page.locator("#histogram svg").count() == 1
        assert page.locator("#logit-lens tr").count() > 1 and page.locator("#nearest tr").count()
        tokens = page.locator("table.contexts span.tok, table.contexts span.hl")
        titles = tokens.evaluate_all("els => els.map(e => e.title)")
        assert len(titles) > 20 and all(t.startswith(("activation ", "no activation"))
                                        for t in titles)
        shaded = tokens.evaluate_all(
            "els => els.filter(e => getComputedStyle(e).backgroundColor !== 'rgba(0, 0, 0, 0)')"
            ".length")
        assert shaded >= page.locator("table.contexts span.hl").count() > 0
        page.screenshot(path=str(tmp_path / "feature.png"), full_page=True)
        # a prompt: the model runs on the server, each token lists the features firing on it
        page.click("a[href='/prompt']")
        page.fill("#text", "The capital of France is Paris.")
        page.click("#run")
        page.wait_for_selector("#tokens .ptok")
        assert page.locator("#tokens .ptok").count() >= 6
        assert page.locator("#tokens .ptok li").count() > 0  # k=4 latents fire on each token
        link = page.locator("#tokens .ptok li a").first
        feature = link.inner_text()
        link.click()  # shade every token by that feature
        page.wait_for_url(re.compile(rf"feature={feature}"))
        assert page.locator(".ptok[title^='feature']").count() >= 6
        shot = tmp_path / "browser.png"
        page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    keep(shot, "browser.png")
    keep(tmp_path / "feature.png", "browser-feature.png")
