"""The image dashboard: each feature's top images are those with its largest code on any of
their patches, its heat map is its code on every patch of the image, the pages and pictures are
written, and a store whose images changed at their source is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import saelab
from saelab.errors import DataError
from saelab.interpret import dashboard_from_store
from saelab.interpret.image_dashboard import (SHADE, TINT, TINT_ALPHA, image_dashboard,
                                              image_tops)
from saelab.models import load
from saelab.pipeline import CaptureConfig, capture
from tests.capture.vision import GRID, save_tiny_vit

HP = "encoder.layer.1"
N_IMAGES = 12


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("image_dashboard")
    folder = save_tiny_vit(root / "vit")
    vit = load(str(folder))
    store = capture(CaptureConfig(out=str(root / "store"), model=str(folder), dataset="digits",
                                  hookpoints=[HP], n_images=N_IMAGES, norm_factor=None,
                                  progress=False), vit)
    sae = saelab.create("topk", d_in=32, n_latents=24, k=3, seed=0)
    return store, sae, vit


def codes_by_image(store, sae) -> torch.Tensor:
    """[n_images, GRID, n_latents]: every patch's codes (rows are stored image by image)."""
    acts = torch.cat([a for a, _ in store.iter_rows(HP)])
    with torch.no_grad():
        return sae.encode(acts).view(N_IMAGES, GRID, -1)


def test_top_images_and_heat_maps_are_the_features_codes(setup):
    store, sae, _ = setup
    codes = codes_by_image(store, sae)
    tops = image_tops(sae, store, HP, n_features=5, n_top=4, progress=False)
    for fi, f in enumerate(tops.features):
        best = codes[:, :, f].amax(1)  # each image's activation for f
        assert torch.allclose(tops.values[fi], best.topk(4).values)
        assert set(tops.images[fi].tolist()) == set(best.topk(4).indices.tolist())
        for ti, image in enumerate(tops.images[fi].tolist()):
            assert torch.allclose(tops.heat[fi, ti], codes[image, :, f])
    assert torch.equal(tops.fire_counts, (codes > 0).sum((0, 1)))


def test_pages_pictures_and_heat_maps_are_written(setup, tmp_path):
    store, sae, vit = setup
    out = image_dashboard(sae, store, tmp_path / "dash", n_features=5, n_top=4,
                          processor=vit.processor, progress=False)
    meta = json.loads((out / "dashboard.json").read_text())
    assert meta["kind"] == "images" and len(meta["features"]) == 5
    f = meta["features"][0]
    page = (out / "features" / f"{f:05d}.html").read_text()
    assert "Top-activating images" in page and "digits#" in page
    assert f"features/{f:05d}.html" in (out / "index.html").read_text()
    tops = image_tops(sae, store, HP, n_features=5, n_top=4, progress=False)
    image = tops.images[0, 0].item()
    assert Image.open(out / "images" / f"{image:06d}.png").size == (16, 16)
    heat = np.asarray(Image.open(out / "heat" / f"{f:05d}_00.png"))  # [4, 4, RGBA]
    brightest = int(tops.heat[0, 0].argmax())
    assert heat.shape == (4, 4, 4)
    assert tuple(heat.reshape(16, 4)[brightest]) == (*TINT, TINT_ALPHA)  # the largest code
    silent = (tops.heat[0, 0] <= 0).nonzero().flatten().tolist()
    assert silent and all(tuple(heat.reshape(16, 4)[p]) == (0, 0, 0, SHADE) for p in silent)


def test_the_store_dashboard_entry_point_builds_the_image_dashboard(setup, tmp_path):
    store, sae, _ = setup  # the processor is loaded by the store's model name (its folder)
    out = dashboard_from_store(sae, store, tmp_path / "d", n_features=3, n_top=2, progress=False)
    assert json.loads((out / "dashboard.json").read_text())["kind"] == "images"


def test_images_changed_at_their_source_are_refused(setup, tmp_path):
    store, sae, vit = setup
    manifest = json.loads((store.path / "manifest.json").read_text())
    manifest["images"]["titles"][0] = "somebody-else.png"
    (store.path / "manifest.json").write_text(json.dumps(manifest))
    try:
        with pytest.raises(DataError, match="not those the store was captured from"):
            image_dashboard(sae, store.path, tmp_path / "d", processor=vit.processor,
                            progress=False)
    finally:
        manifest["images"]["titles"][0] = "digits#0"
        (store.path / "manifest.json").write_text(json.dumps(manifest))


def test_saelab_view_serves_the_image_dashboard(setup, tmp_path):
    import threading
    import urllib.request

    from saelab.interpret.viewer import serve

    store, sae, vit = setup
    out = image_dashboard(sae, store, tmp_path / "dash", n_features=2, n_top=2,
                          processor=vit.processor, progress=False)
    f = json.loads((out / "dashboard.json").read_text())["features"][0]
    server = serve(out, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        page = urllib.request.urlopen(f"{base}/features/{f:05d}.html", timeout=10).read()
        image = page.decode().split('src="../images/')[1].split('"')[0]
        png = urllib.request.urlopen(f"{base}/images/{image}", timeout=10).read()
        assert png.startswith(b"\x89PNG")
    finally:
        server.shutdown()
        server.server_close()


def test_a_store_of_cls_rows_shows_top_images_without_heat_maps(setup, tmp_path):
    store, sae, vit = setup
    cls = capture(CaptureConfig(out=str(tmp_path / "cls"), model=store.model, dataset="digits",
                                hookpoints=[HP], n_images=N_IMAGES, image_rows="cls",
                                norm_factor=None, progress=False), vit)
    out = image_dashboard(sae, cls, tmp_path / "dash", n_features=3, n_top=3,
                          processor=vit.processor, progress=False)
    acts = next(cls.iter_rows(HP))[0]  # one row per image: its CLS token
    f = json.loads((out / "dashboard.json").read_text())["features"][0]
    with torch.no_grad():
        best = sae.encode(acts)[:, f].topk(3).indices.tolist()
    page = (out / "features" / f"{f:05d}.html").read_text()
    assert [f"digits#{i} " in page for i in best] == [True] * 3
    assert not (out / "heat").exists() and "heat map" not in page.split("<figure>")[1]


def test_the_interactive_viewer_lists_searches_and_shows_image_features(setup, tmp_path):
    """`saelab view` on an image dashboard: the feature list with search (by a label of the
    top images) and sorting, each feature's page with its top images and heat maps."""
    import re
    import threading
    import urllib.parse
    import urllib.request

    from saelab.interpret.viewer import serve

    store, sae, vit = setup
    out = image_dashboard(sae, store, tmp_path / "dash", n_features=6, n_top=3,
                          processor=vit.processor, progress=False)
    data = json.loads((out / "data" / "images.json").read_text())
    server = serve(out, port=0)
    assert type(server).__name__ == "AppServer"  # the feature browser, not the static pages
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def get(path: str) -> str:
        return urllib.request.urlopen(base + path, timeout=10).read().decode()

    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        listed = [int(f) for f in re.findall(r'href="/feature/(\d+)"', get("/"))]
        assert sorted(listed) == sorted(r["id"] for r in data["features"])
        by_images = [int(f) for f in re.findall(r'href="/feature/(\d+)"',
                                                get("/?sort=images&desc=1"))]
        counts = {r["id"]: r["images"] for r in data["features"]}
        assert [counts[f] for f in by_images] == sorted(counts.values(), reverse=True)
        rec = data["features"][0]
        label = str(rec["examples"][0]["label"])
        found = {int(f) for f in re.findall(r'href="/feature/(\d+)"',
                                             get("/?q=" + urllib.parse.quote(label)))}
        want = {r["id"] for r in data["features"]
                if any(str(e["label"]) == label or label in str(e["title"])
                       for e in r["examples"])}
        assert rec["id"] in found and found == want
        page = get(f"/feature/{rec['id']}")
        shown = re.findall(r'src="/images/([^"]+)"', page)
        assert shown == [e["image"] for e in rec["examples"]]
        assert re.findall(r'src="/heat/([^"]+)"', page) == [e["heat"] for e in rec["examples"]]
        png = urllib.request.urlopen(f"{base}/heat/{rec['examples'][0]['heat']}", timeout=10)
        assert png.read().startswith(b"\x89PNG")
    finally:
        server.shutdown()
        server.server_close()
