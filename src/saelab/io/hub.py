"""The Hugging Face Hub: `saelab.load("hf://owner/repo/path[@revision]")` and `push`.

Both go through huggingface_hub (`pip install 'saelab[hub]'`). Downloads land in
huggingface_hub's own cache, so `HF_HUB_OFFLINE=1` with a warm cache works without a network
(this is how the tests run: against a local folder laid out like a Hub cache snapshot).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from saelab.models import hub_id
from saelab.errors import FormatError, MissingDependencyError, SaelabError
from saelab.io import saelens_write
from saelab.io.detect import load_folder, save

log = logging.getLogger("saelab.io")
INSTALL = "pip install 'saelab[hub]'  (or: pip install huggingface_hub)"


class HubError(SaelabError):
    """The Hub could not be reached, or it has no such repository, revision or file."""


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise MissingDependencyError(f"loading from or pushing to the Hugging Face Hub needs "
                                     f"huggingface_hub: {INSTALL}") from None
    return huggingface_hub


def parse(address: str) -> tuple[str, str, str | None]:
    """(repo_id, path inside the repo, revision) of `hf://owner/repo[/path][@revision]`."""
    rest = address.removeprefix("hf://")
    revision = None
    if "@" in rest:
        rest, revision = rest.rsplit("@", 1)
    parts = [p for p in rest.strip("/").split("/") if p]
    if len(parts) < 2:
        raise FormatError(f"{address!r} is not a Hub address; expected "
                          "hf://owner/repo[/path/in/repo][@revision]")
    return "/".join(parts[:2]), "/".join(parts[2:]), revision


def resolve(address: str, hookpoint: str | None = None, cache_dir: str | None = None) -> Path:
    """Download (or find in the cache) the files under the address and return their local
    folder. A HubError says when the Hub cannot be reached or lacks the files."""
    hub = _hub()
    repo_id, sub, revision = parse(address)
    if hookpoint:
        sub = f"{sub}/{hookpoint}".strip("/")
    pattern = f"{sub}/*" if sub else None
    try:
        root = hub.snapshot_download(repo_id, revision=revision, allow_patterns=pattern,
                                     cache_dir=cache_dir)
    except Exception as e:  # noqa: BLE001 - huggingface_hub raises many kinds; all mean the same
        raise HubError(_explain(e, repo_id, revision)) from None
    folder = Path(root) / sub if sub else Path(root)
    if not folder.is_dir():
        raise HubError(f"hf://{repo_id} (revision {revision or 'main'}) has no folder {sub!r}")
    return folder


def _explain(e: Exception, repo_id: str, revision: str | None) -> str:
    kind = type(e).__name__
    where = f"hf://{repo_id}" + (f"@{revision}" if revision else "")
    if "Offline" in kind or "LocalEntryNotFound" in kind or "Connect" in kind or "Timeout" in kind:
        return (f"cannot reach the Hugging Face Hub for {where} and it is not in the local cache "
                f"({kind}: {str(e).splitlines()[0] if str(e) else ''}). Connect to the internet, "
                "or unset HF_HUB_OFFLINE, or download it elsewhere and pass the local folder")
    if "RepositoryNotFound" in kind or "RevisionNotFound" in kind:
        return f"{where}: no such repository or revision on the Hub ({kind})"
    return f"{where}: the Hub download failed ({kind}: {e})"


# --- push -----------------------------------------------------------------------------------
CARD = """---
library_name: saelab
tags:
- sparse-autoencoder
- saelab
{extra_tags}---

# {title}

A `{architecture}` dictionary ({n_latents} latents on {d_in}-dimensional activations{target})
trained with [saelab](https://github.com/saelab/saelab).

| | |
|---|---|
{table}

## Load it in saelab

```python
import saelab
sae = saelab.load("hf://{repo_id}/{path}")
```

## Load it in SAELens

{saelens}
"""


def _card(dictionary, repo_id: str, path: str, saelens_path: str | None) -> str:
    prov = dictionary.provenance
    rows = [("architecture", dictionary.architecture), ("d_in", dictionary.d_in),
            ("d_out", dictionary.d_out), ("n_latents", dictionary.n_latents)]
    rows += [(k, prov[k]) for k in ("model", "hookpoint", "dataset", "tokens_seen", "steps",
                                    "saelab_version") if prov.get(k) is not None]
    if saelens_path is not None:
        saelens = (f"The same weights in SAELens' layout are in `{saelens_path}`:\n\n"
                   f"```python\nfrom sae_lens import SAE\n"
                   f"sae = SAE.from_pretrained(\"{repo_id}\", \"{saelens_path}\")\n```")
    else:
        saelens = (f"SAELens has no `{dictionary.architecture}` architecture, so no SAELens copy "
                   "is included; saelab's `convert` command lists what it can write.")
    target = f" predicting {dictionary.d_out}-dimensional outputs" if "target" in dictionary.needs \
        else ""
    # the Hub's model tag is the model's Hub id (saelab's alias, e.g. smollm2-135m, is no repo)
    tags = "".join(f"- {t}\n" for t in [prov.get("model_hub_id") or hub_id(prov.get("model"))]
                   if t)
    return CARD.format(title=repo_id.split("/")[-1], architecture=dictionary.architecture,
                       n_latents=dictionary.n_latents, d_in=dictionary.d_in, target=target,
                       table="\n".join(f"| {k} | {v} |" for k, v in rows), repo_id=repo_id,
                       path=path, saelens=saelens, extra_tags=tags)


def find_dictionary(run: str | Path) -> Path:
    """The dictionary folder of a run: `run` itself if it holds one, else `run/sae`."""
    run = Path(run)
    for candidate in (run, run / "sae"):
        if (candidate / "cfg.json").is_file():
            return candidate
    raise FormatError(f"{run} holds no dictionary (no cfg.json in it or in {run / 'sae'})")


def stage(run: str | Path, folder: str | Path, repo_id: str, path_in_repo: str = "sae") -> Path:
    """Write what `push` uploads into `folder`: README.md (the card), the dictionary in saelab's
    format under `path_in_repo`, and, where SAELens has the architecture, the same weights in
    SAELens' layout under `path_in_repo/saelens`."""
    dictionary = load_folder(find_dictionary(run))
    folder = Path(folder)
    save(dictionary, folder / path_in_repo)
    saelens_path: str | None = f"{path_in_repo}/saelens"
    try:
        saelens_write.save(dictionary, folder / saelens_path)
    except FormatError as e:
        log.info("no SAELens copy: %s", e)
        saelens_path = None
    (folder / "README.md").write_text(_card(dictionary, repo_id, path_in_repo, saelens_path),
                                      encoding="utf-8")
    return folder


def push(run: str | Path, repo_id: str, path_in_repo: str = "sae", *, private: bool = False,
         token: str | None = None, api: Any = None) -> str:
    """Upload the dictionary of `run` (a run folder or a dictionary folder) to the Hub repo
    `repo_id` (created if missing) with a repo card; returns the hf:// address to load it.
    `api`: a huggingface_hub.HfApi (default: a new one with `token`)."""
    if api is None:
        api = _hub().HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="saelab-push-") as tmp:
        stage(run, tmp, repo_id, path_in_repo)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=tmp,
                              commit_message=f"saelab: upload {path_in_repo}")
        except Exception as e:  # noqa: BLE001
            raise HubError(f"pushing to hf://{repo_id} failed ({type(e).__name__}: {e})") from None
    return f"hf://{repo_id}/{path_in_repo}"
