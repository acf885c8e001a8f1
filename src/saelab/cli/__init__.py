"""`saelab <command>`: thin wrappers over the Python API, each generated from its config dataclass.

Why tyro: it builds a command line from a typed dataclass and nothing else, so the config classes
stay the one source of truth. `Literal[...]` fields become choices, `X | None` accepts `None`,
booleans get `--x/--no-x`, nested configs get dotted flags (`--train.lr`), and a default instance
per call lets a config file supply the defaults that the command line then overrides. It is
typed end to end and actively maintained; simple-parsing (SAELens, sparsify) does the same job
on argparse, but with less of the typing (unions, Literal) handled for us.

A config file (`--config f.json` or `.yaml`) is loaded strictly by `saelab.config` (unknown keys
refused with a did-you-mean, wrong types named); its values become the defaults, and options on
the command line win. Errors meant for users print their message and exit 2, without a traceback
unless `--debug`.

`saelab.cli.commands` holds the commands and `main`; `saelab.cli.parsing` turns config
dataclasses into tyro command lines and checks config files.
"""

from saelab.cli.commands import Command, commands, main, parse

__all__ = ["Command", "commands", "main", "parse"]
