"""Load a transformers model from a local folder or the Hugging Face Hub, failing fast offline.

Without a network, huggingface_hub retries a request for about 25 s before giving up. Before
asking the Hub, saelab checks the offline switches (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE, read
at call time) and probes the Hub's host with a short timeout; when either says "offline", only
the local Hugging Face cache is consulted.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from saelab.errors import ConfigError
from saelab.models._packaged import HUB_IDS, PACKAGED, resolve_alias

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_CACHE_SNAPSHOT = re.compile(r"(?:^|/)models--([\w.-]+?)--([\w.-]+)/snapshots/[^/]+/?$")
_PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "true", "yes", "on"}


def from_pretrained_kwargs(name: str) -> dict[str, Any]:
    """Keyword arguments for `from_pretrained(name, ...)`: local_files_only when offline.

    Raises ConfigError for a path that does not exist or a string that cannot be a Hub name.
    """
    if Path(name).expanduser().is_dir():
        return {}
    if name.startswith((".", "/", "~")):
        raise ConfigError(f"model folder {name} does not exist. {packaged_hint()}")
    if not _REPO_ID.match(name):
        raise ConfigError(f"model {name!r} is neither an existing folder nor a Hugging Face Hub "
                          f"name. {packaged_hint()}")
    return {"local_files_only": True} if hub_is_offline() else {}


def hub_id(name_or_path: str | None) -> str | None:
    """The Hugging Face Hub id of the model `name_or_path` names, or None where it is unknown.

    A packaged alias gives the id of the model it packages (`smollm2-135m` ->
    `HuggingFaceTB/SmolLM2-135M-Instruct`); a folder inside a Hugging Face cache
    (`.../models--owner--name/snapshots/<hash>`) gives `owner/name`; another existing folder gives
    None (its config.json's `_name_or_path` often names the model it was fine-tuned from, not the
    model itself); any other string that can be a Hub name is taken as one.
    """
    if not name_or_path:
        return None
    alias = resolve_alias(name_or_path)
    if alias is not None:
        return HUB_IDS.get(alias)
    path = Path(name_or_path).expanduser()
    if path.is_dir() or name_or_path.startswith((".", "/", "~")):
        found = _CACHE_SNAPSHOT.search(path.resolve().as_posix())
        return f"{found.group(1)}/{found.group(2)}" if found else None
    return name_or_path if _REPO_ID.match(name_or_path) else None


def local_path(name: str) -> str:
    """`name` with a leading ~ expanded when it names an existing folder."""
    path = Path(name).expanduser()
    return str(path) if path.is_dir() else name


def hub_is_offline() -> bool:
    """Whether the Hub must not be contacted: an offline switch is set or its host is unreachable."""
    if any(os.environ.get(v, "").strip().lower() in _TRUE
           for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return False  # the host may only be reachable through the proxy: let the Hub client try
    return not _host_reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))


def _host_reachable(endpoint: str) -> bool:
    """Whether a TCP connection to the endpoint's host opens within a few seconds."""
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def load_error(name: str, error: Exception, offline: bool) -> ConfigError:
    """A clear error for a model that transformers could not load."""
    where = ("the Hugging Face Hub is unreachable (offline) and it is not in the local "
             "Hugging Face cache" if offline else
             "it is not a local folder, and the Hugging Face Hub does not know it or refused it")
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ConfigError(f"could not load model {name!r}: {where} ({reason}). {packaged_hint()}")


def packaged_hint() -> str:
    """One sentence listing the packaged aliases, which load without a network."""
    names = ", ".join(f"{alias} ({desc.split(',')[0]})" for alias, desc in PACKAGED.items())
    return f"Models that load offline: {names}."
