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
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import logging
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, NamedTuple

from saelab.config import (build, check_fields, check_known, default_of, load_config_file,
                           option, required)
from saelab.errors import SaelabError

CONFIG_HELP = ("Read option values from a JSON or YAML file (strict: unknown keys and wrong "
               "types are refused); options on the command line win.")


class Command(NamedTuple):
    """One `saelab` subcommand."""

    config: type
    """The config dataclass whose fields are the command's options (for `train`, plus the
    fields of the chosen architecture's `saelab.dictionaries.get(name).Config`)."""
    help: str
    """One-line help."""


# --- configs of the commands whose step lives outside this package's own modules ----------------
def _architectures() -> list[str]:
    from saelab.dictionaries import names

    return names()


def _train_config() -> type:
    from saelab.train import TrainConfig

    return TrainConfig


@dataclass
class ViewConfig:
    """Serve a dashboard folder on 127.0.0.1."""

    folder: str = required("Dashboard folder (from `saelab dashboard`).", positional=True)
    port: int = option(8000, "Port (0 picks a free one).")


@dataclass
class ConvertConfig:
    """Convert a dictionary between saelab's, SAELens' and sparsify's formats."""

    src: str = required("Dictionary folder in any known format, or hf://owner/repo/path.",
                        positional=True)
    dst: str = required("Output folder (replaced atomically).", positional=True)
    to: Literal["saelens", "sparsify", "saelab"] = required("Output format.")
    hookpoint: str | None = option(None, "Sub-folder of a multi-hookpoint (sparsify) source.")
    norm_scaling_factor: float | None = option(None, "SAELens expected_average_only_in factor to "
                                                     "fold into the weights.")


@dataclass
class PushConfig:
    """Upload a run's dictionary to the Hugging Face Hub with a repo card."""

    run: str = required("Run folder (with sae/) or dictionary folder.", positional=True)
    repo: str = required("Hub repository, owner/name (created if missing).", positional=True)
    path_in_repo: str = option("sae", "Folder inside the repository.")
    private: bool = option(False, "Create the repository private.")


@functools.lru_cache(maxsize=None)
def _train_command() -> type:
    """TrainConfig plus what `saelab train` adds: the store, the architecture, its size."""
    TrainConfig = _train_config()

    @dataclass(kw_only=True)
    class TrainCommand(TrainConfig):
        """Train a dictionary on an activation store (data parallel under torchrun)."""

        store: str = required("Activation store folder (from `saelab capture`).",
                              positional=True)
        architecture: str = option("topk", "Dictionary architecture; `--architecture X --help` "
                                           "lists X's fields.", choices=_architectures)
        n_latents: int = option(4608, "Number of latents.")
        hookpoints: list[str] | None = option(None, "Train one dictionary per hookpoint, each in "
                                                    "its own folder under OUT; under torchrun "
                                                    "the hookpoints are shared out over the "
                                                    "ranks (layer parallel).")

    return TrainCommand


# --- the commands ---------------------------------------------------------------------------------
def cmd_demo(cfg) -> int:
    from saelab.evaluate import format_report
    from saelab.pipeline import run_demo

    report = run_demo(cfg)
    demo, out = report["demo"], Path(cfg.out)
    print(f"\nsaelab demo finished in {demo['seconds']['total']:.0f} s "
          f"({demo['model']} {demo['hookpoint']}, {demo['train_rows']:,} training "
          f"vectors, {demo['excluded_fraction']:.2%} of tokens left out by the exclusion "
          f"rule)")
    print(format_report(report))
    print(f"\n  dictionary   {out / 'sae'}\n  report       {out / 'report.json'}\n"
          f"  dashboard    {out / 'dashboard' / 'index.html'}\n"
          f"  open it with: saelab view {out / 'dashboard'}")
    return 0


def cmd_capture(cfg) -> int:
    from saelab.pipeline import capture

    store = capture(cfg)
    print(f"{store.n_rows:,} rows of {', '.join(store.hookpoints)} in {store.path}")
    return 0


def cmd_hookpoints(cfg) -> int:
    from saelab.capture.listing import format_hookpoints, list_hookpoints
    from saelab.models import load

    lm = load(cfg.model)
    print(format_hookpoints(list_hookpoints(lm.model, cfg.pattern, cfg.n_tokens)))
    return 0


def cmd_train(cmd, dictionary: dict) -> int:
    import saelab
    from saelab.store import ActivationStore
    from saelab.train import distributed as dist
    from saelab.train import run_folder

    store = ActivationStore(cmd.store)
    names = {f.name for f in dataclasses.fields(_train_config())}
    cfg = build(_train_config(), {k: getattr(cmd, k) for k in names})
    if cfg.out is None:
        cfg = dataclasses.replace(cfg, out=str(Path("runs") / cmd.architecture))
    started = not dist.is_initialized() and dist.init_from_env(cfg.device)  # under torchrun
    try:
        make = functools.partial(_create, cmd, dictionary, store)
        if cmd.hookpoints:  # layer parallel: the hookpoints shared out over the ranks
            trained = dist.fit_hookpoints(lambda h: make(dataclasses.replace(cfg, hookpoint=h)),
                                          store, cmd.hookpoints, cfg)
            for h, sae in trained.items():
                print(f"[rank {dist.rank()}] trained {sae.architecture} ({sae.n_latents} "
                      f"latents) on {h} -> {run_folder(cfg.out, h) / 'sae'}")
            return 0
        sae = saelab.fit(make(cfg), store, cfg)  # data parallel under torchrun
        if dist.is_main():
            ranks = f" on {dist.world_size()} ranks" if dist.world_size() > 1 else ""
            print(f"trained {sae.architecture} ({sae.n_latents} latents){ranks} -> "
                  f"{Path(cfg.out) / 'sae'}")
        return 0
    finally:
        if started:
            import torch.distributed

            torch.distributed.destroy_process_group()


def _create(cmd, dictionary: dict, store, cfg):
    """The dictionary to train: `cmd.architecture` sized for the store, seeded by `cfg.seed`."""
    import saelab

    fields = dict(dictionary)
    if cfg.target_hookpoint and fields.get("d_out") is None:
        fields["d_out"] = store.d(store.hookpoint(cfg.target_hookpoint))
    return saelab.create(cmd.architecture, d_in=store.d(store.hookpoint(cfg.hookpoint)),
                         n_latents=cmd.n_latents, seed=cfg.seed, **fields)


def cmd_eval(cfg) -> int:
    from saelab.evaluate import format_report
    from saelab.pipeline import evaluate_step

    report, out = evaluate_step(cfg)
    print(format_report(report))
    print(f"report: {out / 'report.json'}")
    return 0


def cmd_dashboard(cfg) -> int:
    from saelab.pipeline import dashboard_step

    print(f"dashboard: {dashboard_step(cfg)}")
    return 0


def cmd_view(cfg: ViewConfig) -> int:
    import http.server

    folder = Path(cfg.folder)
    if not (folder / "index.html").is_file():
        raise SaelabError(f"{folder} holds no index.html; build one with `saelab dashboard`")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", cfg.port), handler)
    print(f"serving {folder} at http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def cmd_convert(cfg: ConvertConfig) -> int:
    from saelab.io import convert, detect

    src = cfg.src
    kind = "hub" if src.startswith("hf://") else detect(
        Path(src) / cfg.hookpoint if cfg.hookpoint else src)
    out = convert(src, cfg.dst, cfg.to, hookpoint=cfg.hookpoint,
                  norm_scaling_factor=cfg.norm_scaling_factor)
    print(f"converted {src} ({kind}) -> {out} ({cfg.to})")
    return 0


def cmd_push(cfg: PushConfig) -> int:
    from saelab.io.hub import push

    address = push(cfg.run, cfg.repo, cfg.path_in_repo, private=cfg.private)
    print(f"pushed: load it with saelab.load({address!r})")
    return 0


def _pipeline(name: str) -> Callable[[], type]:
    def config() -> type:
        import saelab.pipeline

        return getattr(saelab.pipeline, name)
    return config


def _hookpoints_config() -> type:
    from saelab.capture.listing import HookpointsConfig

    return HookpointsConfig


_COMMANDS: dict[str, tuple[Callable[[], type], str, Callable]] = {
    "demo": (_pipeline("DemoConfig"), "Capture, train, evaluate and build a dashboard on the "
                                      "built-in default (SmolLM2-135M, Wikipedia).", cmd_demo),
    "capture": (_pipeline("CaptureConfig"), "Capture activations into a store.", cmd_capture),
    "hookpoints": (_hookpoints_config, "List a model's hookpoints with their output shapes.",
                   cmd_hookpoints),
    "train": (_train_command, "Train a dictionary on an activation store (data parallel when "
                              "launched with torchrun).", cmd_train),
    "eval": (_pipeline("EvalConfig"), "Evaluate a dictionary on an activation store.", cmd_eval),
    "dashboard": (_pipeline("DashboardConfig"), "Build the static HTML dashboard of a "
                                                "dictionary.", cmd_dashboard),
    "view": (lambda: ViewConfig, "Serve a dashboard folder on 127.0.0.1.", cmd_view),
    "convert": (lambda: ConvertConfig, "Convert a dictionary between saelab's, SAELens' and "
                                       "sparsify's formats (reads dictionary_learning too).",
                cmd_convert),
    "push": (lambda: PushConfig, "Upload a run's dictionary to the Hugging Face Hub with a repo "
                                 "card (needs huggingface_hub and a token).", cmd_push),
}


def commands() -> dict[str, Command]:
    """Every subcommand: its config dataclass and one-line help (the CLI reference's source)."""
    return {name: Command(config(), help) for name, (config, help, _) in _COMMANDS.items()}


# --- dataclass -> tyro ---------------------------------------------------------------------------
def _cli_hint(hint: Any, f: dataclasses.Field) -> Any:
    """The annotation tyro sees: `str` becomes a Literal of the field's run-time choices."""
    choices = f.metadata.get("choices")
    if choices is None:
        return hint
    literal = Literal[tuple(choices())]  # type: ignore[misc]
    if hint is str:
        return literal
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        return list[literal]
    if args and type(None) in args:  # X | None
        return _cli_hint(next(a for a in args if a is not type(None)), f) | None
    return hint


def _cli_dataclass(name: str, sources: list[tuple[type, frozenset[str]]],
                   defaults: dict[str, Any], with_config: bool) -> type:
    """A dataclass for tyro with the fields of `sources` (minus their skipped names), their help
    and positional flags from the field metadata, and `defaults` (from a config file) over the
    fields' own defaults."""
    import tyro

    fields = []
    for cls, skip in sources:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in skip:
                continue
            hint = _cli_hint(hints[f.name], f)
            default = defaults.get(f.name, default_of(f))
            nested = dataclasses.is_dataclass(hint)
            if nested:
                hint = _cli_dataclass(hint.__name__, [(hint, frozenset())],
                                      _field_values(default), False)
                default = hint(**_field_values(default)) if default is not None else default
            marks = [tyro.conf.arg(help=f.metadata.get("help", ""),
                                   metavar=f.name.upper() if f.metadata.get("positional")
                                   else None)]
            if f.metadata.get("positional"):
                marks.append(tyro.conf.Positional)
            fields.append((f.name, Annotated[(hint, *marks)], _field(default)))
    if with_config:
        fields.append(("config", Annotated[str | None, tyro.conf.arg(help=CONFIG_HELP)],
                       dataclasses.field(default=None)))
    return dataclasses.make_dataclass(name, fields, kw_only=True)


def _field_values(obj: Any) -> dict[str, Any]:
    """A dataclass instance's field values (not recursively); {} for anything else."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    return {}


def _field(default: Any) -> dataclasses.Field:
    if default is dataclasses.MISSING:
        return dataclasses.field()
    if isinstance(default, (list, dict, set)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default))
    return dataclasses.field(default=default)


def _plain(parsed: Any) -> dict[str, Any]:
    """tyro's result as a dict of field values (nested configs as dicts), without `config`."""
    values = dataclasses.asdict(parsed)
    values.pop("config", None)
    return values


# --- parsing -------------------------------------------------------------------------------------
def _peek(argv: list[str], flag: str) -> str | None:
    """The value of option `flag` in a command's arguments, if given (read before parsing: the
    config file and the architecture decide which options exist)."""
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def parse(name: str, argv: list[str]) -> tuple[Any, dict]:
    """Parse one command's arguments: (its config, for `train` the dictionary's fields)."""
    import tyro

    config, help_text, _ = _COMMANDS[name]
    cls = config()
    path = _peek(argv, "--config")
    file = load_config_file(path) if path else {}
    sources = [(cls, frozenset())]
    arch = None
    if name == "train":
        arch = _peek(argv, "--architecture") or file.get("architecture") or "topk"
        sources = _train_sources(cls, arch)
    what = f"config file {path}" + (f" (train, architecture {arch!r})" if arch else "")
    defaults = _checked(sources, file, what)
    parser_cls = _cli_dataclass(f"saelab_{name}", sources, defaults, True)
    parsed = _plain(tyro.cli(parser_cls, args=argv, prog=f"saelab {name}",
                             description=help_text))
    if name != "train":
        return build(cls, parsed, what=f"saelab {name}"), {}
    dictionary_names = {f.name for f in dataclasses.fields(sources[1][0])} - sources[1][1]
    dictionary = {k: v for k, v in parsed.items() if k in dictionary_names}
    command = build(cls, {k: v for k, v in parsed.items() if k not in dictionary_names},
                    what="saelab train")
    return command, dictionary


def _train_sources(cls: type, arch: str) -> list[tuple[type, frozenset[str]]]:
    """The field sources of `saelab train --architecture arch`: the command's own fields first,
    then the architecture's (minus d_in, n_latents), then TrainConfig's."""
    from saelab.dictionaries import get, names

    own = frozenset(f.name for f in dataclasses.fields(cls)) - frozenset(
        f.name for f in dataclasses.fields(_train_config()))
    dictionary = get(arch if arch in names() else "topk").Config
    return [(cls, frozenset(f.name for f in dataclasses.fields(cls)) - own),
            (dictionary, frozenset({"d_in", "n_latents"})),
            (_train_config(), frozenset())]


def _checked(sources: list[tuple[type, frozenset[str]]], file: dict, what: str) -> dict:
    """The config file's values, checked strictly against the fields of `sources`."""
    known = [f.name for cls, skip in sources for f in dataclasses.fields(cls)
             if f.name not in skip]
    unknown = {k: v for k, v in file.items() if k not in known}
    if unknown:
        check_known(unknown, known, what)
    out: dict = {}
    for cls, skip in sources:
        mine = {k: v for k, v in file.items() if k in
                {f.name for f in dataclasses.fields(cls)} - skip}
        out.update(check_fields(cls, mine, what))
    return out


def main(argv: list[str] | None = None) -> int:
    from saelab import __version__

    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(
        prog="saelab", description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {n:<11} {h}" for n, (_, h, _) in
                                         _COMMANDS.items())
               + "\n\n`saelab COMMAND --help` lists a command's options.")
    top.add_argument("--version", action="version", version=f"saelab {__version__}")
    top.add_argument("--debug", action="store_true", help="Show tracebacks of errors.")
    top.add_argument("-v", "--verbose", action="store_true", help="Log progress details.")
    top.add_argument("command", choices=list(_COMMANDS), metavar="COMMAND",
                     help="One of the commands below.")
    top.add_argument("args", nargs=argparse.REMAINDER, help="The command's options.")
    args = top.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg, extra = parse(args.command, args.args)
        run = _COMMANDS[args.command][2]
        return run(cfg, extra) if args.command == "train" else run(cfg)
    except SaelabError as e:
        if args.debug:
            raise
        print(f"saelab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("saelab: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
