"""The fenced code blocks of Markdown pages, and which of them the docs' example runner runs.

Rules (docs/guides/docs.md): a ```python block runs unless the line before it is
`<!-- no-run: reason -->`; a ```bash block runs only when the line before it is `<!-- run -->`
(each of its commands must be `saelab ...`); other languages never run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

FENCE = re.compile(r"^```(\w*)[^\n]*$")
NO_RUN = re.compile(r"^<!--\s*no-run\b.*-->\s*$")
RUN = re.compile(r"^<!--\s*run\s*-->\s*$")


class Block(NamedTuple):
    """One fenced code block."""

    language: str
    """The fence's language tag ("python", "bash", "" ...)."""
    code: str
    """Its text, without the fences."""
    line: int
    """1-based line number of its opening fence."""
    marker: str
    """"no-run", "run" or "" after the HTML comment on the line before the fence."""


def blocks(path: Path) -> list[Block]:
    """Every fenced block of the Markdown file `path`, in order."""
    lines = Path(path).read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            raise ValueError(f"{path}:{i + 1}: code block never closed")
        before = lines[i - 1] if i else ""
        marker = "no-run" if NO_RUN.match(before) else "run" if RUN.match(before) else ""
        found.append(Block(m.group(1), "\n".join(lines[i + 1:end]), i + 1, marker))
        i = end + 1
    return found


def runnable(block: Block) -> bool:
    """Whether the example runner runs `block`."""
    if block.language == "python":
        return block.marker != "no-run"
    return block.language == "bash" and block.marker == "run"


def commands(block: Block) -> list[list[str]]:
    """The `saelab ...` commands of a runnable bash block, as argv lists (line continuations
    joined, comments dropped); anything else is an error."""
    import shlex

    text = re.sub(r"\\\n\s*", " ", block.code)
    argvs = []
    for line in text.splitlines():
        argv = shlex.split(line, comments=True)
        if not argv:
            continue
        if argv[0] != "saelab":
            raise ValueError(f"line {block.line}: a runnable bash block holds only `saelab` "
                             f"commands, not {line!r}")
        argvs.append(argv[1:])
    return argvs


def shell_commands(block: Block) -> list[list[str]]:
    """Every `saelab` command line of a bash block, whatever its marker, as the argv after
    `saelab` (also under `torchrun ... -m saelab` and `torchrun --no-python saelab`)."""
    import shlex

    text = re.sub(r"\\\n\s*", " ", block.code)
    found = []
    for line in text.splitlines():
        argv = shlex.split(line, comments=True)
        for i, word in enumerate(argv):
            if word == "saelab" and (i == 0 or argv[i - 1] in ("-m", "--no-python")):
                found.append(argv[i + 1:])
                break
    return found
