"""HTML pieces of the dashboards: visible token text, the stylesheet, the Jinja2 templates.

Every page is rendered from an autoescaping Jinja2 template (`templates`), so every piece of
text that comes from data is escaped; `visible` makes whitespace and control characters visible
first.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1f2328;margin:0 auto;
 max-width:1150px;padding:20px 24px}
h1{font-size:21px;margin:4px 0 10px}h2{font-size:16px;margin:22px 0 8px}
a{color:#0969da;text-decoration:none}a:hover{text-decoration:underline}
table{border-collapse:collapse}th,td{padding:3px 10px;border-bottom:1px solid #eaeef2;
 text-align:left;vertical-align:top}th{font-weight:600;color:#57606a;font-size:12px}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.muted{color:#6e7781}.nav{font-size:13px;margin-bottom:6px}
.cards{display:flex;flex-wrap:wrap;gap:18px}
.card{border:1px solid #d0d7de;border-radius:6px;padding:10px 14px}
.tok{white-space:pre;font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:13px}
.pill{white-space:pre;font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px;
 background:#f6f8fa;border:1px solid #d0d7de;border-radius:4px;padding:0 3px}
.ctx{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:13px;white-space:pre-wrap;
 word-break:break-all}
.hl{border-radius:3px;outline:1px solid #d1661a;color:#000}
.pos{color:#1a7f37}.neg{color:#cf222e}
.bar{display:inline-block;height:9px;background:#8c959f;border-radius:2px;vertical-align:middle}
"""


# --- token text -------------------------------------------------------------------------------
def visible(text: str) -> str:
    """Make whitespace and control characters visible ('↵' for newlines); not yet escaped."""
    out = []
    for ch in text:
        if ch == "\n":
            out.append("↵")
        elif ch == "\t":
            out.append("⇥")
        elif ch == "\r":
            out.append("␍")
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out) or "∅"


class TokenText:
    """Visible text of single token ids through a tokenizer, cached per id."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        if token_id not in self.cache:
            self.cache[token_id] = visible(self._decode(token_id))
        return self.cache[token_id]

    def _decode(self, token_id: int) -> str:
        if self.tokenizer is None:
            return f"⟨{token_id}⟩"
        try:
            text = self.tokenizer.decode([token_id])
        except Exception as e:  # noqa: BLE001 (any tokenizer error: show the id instead)
            log.debug("decode(%d) failed: %s", token_id, e)
            return f"⟨{token_id}⟩"
        convert = getattr(self.tokenizer, "convert_ids_to_tokens", None)
        if convert is not None and not text.startswith(" "):
            piece = convert(token_id)
            if isinstance(piece, str) and piece.startswith("▁"):
                text = " " + text
        return text


def pill(text: str) -> str:
    """Token text for a standalone token box: a run of only spaces shows as '␣' marks."""
    return "␣" * min(len(text), 8) if text.strip(" ") == "" else text


def compact(value: Any) -> Any:
    """A float formatted with 4 significant digits; any other value as it is."""
    return f"{value:.4g}" if isinstance(value, float) else value


def shade(act: float | None, peak: float) -> str:
    """Background colour of a token whose activation is `act` (of the shown maximum `peak`)."""
    if act is None:
        return "transparent"
    alpha = 0.0 if peak <= 0 or act <= 0 else min(1.0, 0.08 + 0.92 * act / peak)
    return f"rgba(255,140,40,{alpha:.2f})"


TEMPLATES = Path(__file__).with_name("templates")
"""The Jinja2 templates of the feature pages (the browser's and the static export's)."""


def templates():
    """The Jinja2 environment of `TEMPLATES`, autoescaping every template (so every piece of data
    text is escaped), with the filters `shade`, `pill` and `compact` and the global `zip`."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True)
    env.filters.update(shade=shade, pill=pill, compact=compact)
    env.globals.update(zip=zip)
    return env
