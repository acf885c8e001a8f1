"""The feature browser: a Starlette web app over a dashboard folder's precomputed data.

Pages (Jinja2 templates in `templates/`, autoescaped: every piece of data text is escaped):

- `/`: the features, searchable (`q`: index, top tokens, promoted tokens, explanation) and
  sortable (`sort`: feature, density, max_act, score; `desc`);
- `/feature/N`: contexts grouped by activation interval, every token shaded by the feature's
  activation (hover shows it), the activation histogram, density, logit lens, nearest features by
  decoder cosine, co-occurring features, the explanation and its scores;
- `/prompt?text=...[&feature=N]`: the model runs on the server; the features that fire on each
  token, linked to their pages, and with `feature` every token shaded by that feature;
- any other path: a file of the folder (the static export), only when its real path (symbolic
  links resolved) lies inside the folder; never a listing.

Why Starlette: the smallest well-kept ASGI toolkit with routing, Jinja2 templates and a test
client, run by uvicorn; FastAPI (built on it) would add pydantic for no gain here. Responses
carry a Content-Security-Policy without any script source: the pages need no JavaScript.

Explanations come from an `explanations.jsonl` (`saelab explain`) in the dashboard folder, the
run folder above it or the run's `explain/`: one JSON object per line with `feature`,
`explanation` and `scores`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from saelab.capture.exclude import Exclusion
from saelab.errors import MissingDependencyError, SaelabError
from saelab.interpret.html import TokenText, templates
from saelab.interpret.image_dashboard import IMAGE_DATA

log = logging.getLogger(__name__)

DATA = Path("data")
"""Sub-folder of a dashboard with the browser's data (saelab.interpret.feature_data)."""
MAX_PROMPT_TOKENS = 256
"""Tokens of a prompt the model runs on (the rest is cut off, and the page says so)."""
FEATURES_PER_TOKEN = 6
"""Features listed under each prompt token (the most active ones)."""
CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
"""Content-Security-Policy of every page: no script runs, whatever a page holds."""
SORTS = ("feature", "density", "max_act", "score")


def require_server() -> None:
    """A MissingDependencyError naming the extra when starlette or uvicorn is missing."""
    import importlib.util

    missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(f"the feature browser needs {' and '.join(missing)}: "
                                     "pip install 'saelab[viewer]'")


def read_explanations(folder: Path) -> dict[int, dict]:
    """{feature: record} from explanations.jsonl in `folder`, its parent (the run folder) or the
    run's `explain/` (where `saelab explain` writes by default); later files and lines win, and
    lines that are not JSON objects with an int `feature` are skipped."""
    out: dict[int, dict] = {}
    for path in (folder.parent / "explain" / "explanations.jsonl",
                 folder.parent / "explanations.jsonl", folder / "explanations.jsonl"):
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("feature"), int):
                out[rec["feature"]] = rec
    return out


def mean_score(rec: dict | None) -> float | None:
    """The mean of an explanation's numeric scores (None without any)."""
    scores = [v for v in ((rec or {}).get("scores") or {}).values()
              if isinstance(v, (int, float))]
    return sum(scores) / len(scores) if scores else None


class Dashboard:
    """A dashboard folder's browser data, read once."""

    def __init__(self, folder: str | Path, load_dictionary: Callable[[str], Any] | None = None):
        self.folder = Path(folder).resolve()
        index = self.folder / DATA / "features.json"
        if not index.is_file():
            raise SaelabError(f"{folder} holds no browser data ({DATA / 'features.json'}); "
                              "rebuild it with `saelab dashboard`")
        self.meta = json.loads(index.read_text(encoding="utf-8"))
        self.features = {r["feature"]: r for r in self.meta["features"]}
        self.explanations = read_explanations(self.folder)
        for f, r in self.features.items():
            r["explanation"] = (self.explanations.get(f) or {}).get("explanation")
            r["score"] = mean_score(self.explanations.get(f))
        self.prompter = Prompter(self.meta.get("sources") or {}, load_dictionary)

    def listing(self, q: str, sort: str, desc: bool) -> list[dict]:
        """The feature records matching `q` (case-insensitive), sorted."""
        q = q.strip().lower()
        rows = [r for r in self.features.values() if not q or q == str(r["feature"])
                or any(q in str(t).lower() for t in r["top_tokens"] + r["promoted"])
                or q in (r["explanation"] or "").lower()]
        key = sort if sort in SORTS else "density"
        missing = float("-inf") if desc else float("inf")
        return sorted(rows, key=lambda r: (missing if r.get(key) is None else r[key]),
                      reverse=desc)

    def feature(self, f: int) -> dict | None:
        """The page record of feature `f` (None if the dashboard does not show it)."""
        if f not in self.features:
            return None
        path = self.folder / DATA / "features" / f"{f:05d}.json"
        rec = json.loads(path.read_text(encoding="utf-8"))
        svg = path.with_suffix(".svg")
        rec["histogram"] = svg.read_text(encoding="utf-8") if svg.is_file() else ""
        rec["explained"] = self.explanations.get(f)
        return rec

    def density_svg(self) -> str:
        path = self.folder / DATA / "density.svg"
        return path.read_text(encoding="utf-8") if path.is_file() else ""


class Prompter:
    """The dictionary and its model, loaded on the first prompt, run under a lock.
    `load_dictionary` (saelab.load, which the CLI passes: interpret sits below io) reads the
    dictionary folder the dashboard names."""

    def __init__(self, sources: dict, load_dictionary: Callable[[str], Any] | None = None):
        self.sources = sources
        self.load_dictionary = load_dictionary
        self.loaded: tuple | None = None
        self.lock = threading.Lock()

    def why_not(self) -> str | None:
        """Why prompts cannot run here (None when they can)."""
        if not self.sources.get("dictionary") or not self.sources.get("model"):
            return ("this dashboard does not name its dictionary and model; rebuild it with "
                    "`saelab dashboard SAE STORE` to run prompts")
        if self.load_dictionary is None:
            return "prompts need a dictionary loader: serve the dashboard with `saelab view`"
        if not Path(self.sources["dictionary"]).exists():
            return f"the dictionary {self.sources['dictionary']} is gone"
        return None

    def _load(self) -> tuple:
        from saelab.capture import resolve
        from saelab.models import load

        lm = load(self.sources["model"])
        sae = self.load_dictionary(self.sources["dictionary"])
        (hp,) = resolve(lm.model, [self.sources["hookpoint"]])
        return lm, sae, hp, TokenText(lm.tokenizer), self.exclusion()

    def exclusion(self) -> Exclusion:
        """The store's rule of which positions training left out (from the dashboard's sources;
        a dashboard written before they held it: from the store's manifest, if it is still
        there; else no rule)."""
        rule = self.sources.get("exclusion")
        manifest = Path(self.sources.get("store") or "") / "manifest.json"
        if rule is None and self.sources.get("store") and manifest.is_file():
            rule = json.loads(manifest.read_text(encoding="utf-8")).get("exclusion")
        return Exclusion.from_json(rule)

    def run(self, text: str) -> tuple[list[str], Any, bool, Any]:
        """(token texts, codes [T, n_latents], whether the prompt was cut, kept [T]) of `text`:
        codes are zero where the exclusion rule drops the position (`kept` False there)."""
        import torch

        from saelab.capture import capture

        with self.lock:
            if self.loaded is None:
                self.loaded = self._load()
            lm, sae, hp, tok_text, exclusion = self.loaded
            ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
            cut = ids.shape[1] > MAX_PROMPT_TOKENS
            ids = ids[:, :MAX_PROMPT_TOKENS]
            with torch.no_grad():
                acts = capture(lm.model, [hp], ids)[hp.key]  # [1, T, d]
                kept = exclusion.keep_mask(ids, {hp.key: acts})[0]
                param = next(iter(sae.parameters()))
                codes = sae.encode(acts[0].to(param.device, param.dtype)).float().cpu()
                codes[~kept] = 0
        return [tok_text(int(t)) for t in ids[0]], codes, cut, kept


def prompt_rows(tokens: list[str], codes, shown: set[int], feature: int | None,
                kept=None) -> list[dict]:
    """One row per prompt token: its text, the most active features, the chosen feature's
    activation on it, and whether the exclusion rule kept it (`kept` [T], default all)."""
    rows = []
    peak = float(codes[:, feature].max()) if feature is not None else 0.0
    for t, (text, row) in enumerate(zip(tokens, codes)):
        if kept is not None and not bool(kept[t]):
            rows.append({"index": t, "text": text, "features": [], "act": None, "peak": peak,
                         "excluded": True})
            continue
        vals, idx = row.topk(min(FEATURES_PER_TOKEN, row.numel()))
        fires = [(int(i), float(v), int(i) in shown) for v, i in zip(vals, idx) if v > 0]
        act = float(row[feature]) if feature is not None else None
        rows.append({"index": t, "text": text, "features": fires, "act": act, "peak": peak,
                     "excluded": False})
    return rows


class ImageBoard:
    """An image dashboard's records (`data/images.json`, written by `image_dashboard`)."""

    SORTS = ("id", "density", "images", "max")

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).resolve()
        data = json.loads((self.folder / DATA / IMAGE_DATA).read_text(encoding="utf-8"))
        self.meta = {"title": data["title"]}
        self.summary = data["summary"]
        self.features = {r["id"]: r for r in data["features"]}

    def listing(self, q: str, sort: str, desc: bool) -> list[dict]:
        """The features matching `q` (its number, or a label or title of one of its top
        images; case-insensitive), sorted."""
        q = q.strip().lower()
        rows = [r for r in self.features.values() if not q or q == str(r["id"])
                or any(q in str(e["label"]).lower() or q in str(e["title"]).lower()
                       for e in r["examples"])]
        key = sort if sort in self.SORTS else "density"
        return sorted(rows, key=lambda r: r[key], reverse=desc)


def create_app(folder: str | Path, load_dictionary: Callable[[str], Any] | None = None):
    """The Starlette app of dashboard `folder` (its `data/` written by `saelab dashboard`);
    `load_dictionary` (e.g. saelab.load) lets the prompt page load the dictionary."""
    require_server()
    from starlette.applications import Starlette
    from starlette.responses import FileResponse, PlainTextResponse
    from starlette.templating import Jinja2Templates

    images = (Path(folder) / DATA / IMAGE_DATA).is_file()
    board = ImageBoard(folder) if images else Dashboard(folder, load_dictionary)
    env = templates()  # autoescaping every template
    env.globals.update(meta=board.meta, static=False, home="/",
                       feature_url=lambda f: f"/feature/{f}")
    jinja = Jinja2Templates(env=env)

    def render(request, name: str, status: int = 200, **context):
        response = jinja.TemplateResponse(request, name, context, status_code=status)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    def static(request):
        path = safe_file(board.folder, request.path_params["path"])
        if path is None:
            return PlainTextResponse("not found", status_code=404)
        return FileResponse(path, headers={"Content-Security-Policy": CSP})

    routes = (image_routes if images else text_routes)(board, render, static)
    return Starlette(routes=routes)


def listing_params(request) -> tuple[str, str, bool]:
    """The feature list's query: search text, sort key, descending."""
    params = request.query_params
    return params.get("q", ""), params.get("sort", "density"), params.get("desc", "1") != "0"


def neighbours(order: list[int], f: int) -> tuple[int | None, int | None]:
    """The features before and after `f` in `order` (None at the ends)."""
    i = order.index(f)
    return (order[i - 1] if i > 0 else None, order[i + 1] if i + 1 < len(order) else None)


def text_routes(board: Dashboard, render, static) -> list:
    """The routes of a text dashboard: the feature list (search, sorting), a page per feature,
    the prompt page, and the folder's files."""
    from starlette.responses import RedirectResponse
    from starlette.routing import Route

    def index(request):
        q, sort, desc = listing_params(request)
        return render(request, "list.html", rows=board.listing(q, sort, desc), q=q, sort=sort,
                      desc=desc, density=board.density_svg(), total=len(board.features))

    def feature(request):
        f = request.path_params["n"]
        rec = board.feature(f)
        if rec is None:
            return render(request, "missing.html", 404, feature=f)
        return render(request, "feature.html", rec=rec, nav=neighbours(list(board.features), f),
                      shown=board.features)

    def prompt(request):
        text = request.query_params.get("text", "")
        chosen = request.query_params.get("feature")
        chosen = int(chosen) if chosen and chosen.isdigit() else None
        prompter = board.prompter
        error, rows, cut = prompter.why_not(), [], False
        if text and error is None:
            try:
                tokens, codes, cut, kept = prompter.run(text)
                if chosen is not None and not 0 <= chosen < codes.shape[1]:
                    chosen = None
                rows = prompt_rows(tokens, codes, set(board.features), chosen, kept)
            except SaelabError as e:
                error = str(e)
        return render(request, "prompt.html", text=text, rows=rows, error=error, cut=cut,
                      chosen=chosen)

    return [Route("/", index), Route("/feature/{n:int}", feature), Route("/prompt", prompt),
            Route("/browse", lambda r: RedirectResponse("/")), Route("/{path:path}", static)]


def image_routes(board: ImageBoard, render, static) -> list:
    """The routes of an image dashboard: the feature list (search, sorting), a page per feature
    with its top images and heat maps, and the folder's files (images/, heat/)."""
    from starlette.responses import RedirectResponse
    from starlette.routing import Route

    def index(request):
        q, sort, desc = listing_params(request)
        return render(request, "image_list.html", records=board.listing(q, sort, desc),
                      summary=board.summary, per_row=4, prefix="/", q=q, sort=sort, desc=desc,
                      total=len(board.features))

    def feature(request):
        f = request.path_params["n"]
        if f not in board.features:
            return render(request, "missing.html", 404, feature=f)
        return render(request, "image_feature.html", rec=board.features[f],
                      nav=neighbours(list(board.features), f), prefix="/")

    return [Route("/", index), Route("/feature/{n:int}", feature),
            Route("/browse", lambda r: RedirectResponse("/")), Route("/{path:path}", static)]


def safe_file(root: Path, relative: str) -> Path | None:
    """The file `relative` of folder `root` when its real path (links resolved) lies inside
    `root` and is a regular file; None otherwise (never a folder)."""
    real = (root / relative).resolve()
    if not real.is_relative_to(root) or not real.is_file():
        return None
    return real
