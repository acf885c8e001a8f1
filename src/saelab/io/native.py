"""saelab's own format: a folder with cfg.json and weights.safetensors.

Defined beside the Dictionary contract (`saelab.dictionaries._native`), so that
`Dictionary.save` needs nothing of `saelab.io`; re-exported here with the other formats.
"""

from saelab.dictionaries._native import (
    CFG,
    EXACT,
    WEIGHTS,
    check_state,
    library_version,
    load,
    load_state,
    load_weights,
    read_config,
    save,
)

__all__ = ["CFG", "EXACT", "WEIGHTS", "check_state", "library_version", "load", "load_state", "load_weights",
           "read_config", "save"]
