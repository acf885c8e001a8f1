"""`saelab <command>`: thin wrappers over the Python API.

Options come from the same config dataclasses the API uses (their field help is the `--help`
text); `--config FILE.json` supplies values too (command-line options win). Errors meant for
users print their message and exit 2, without a traceback unless `--debug`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable

from saelab.config import build, load_config_file
from saelab.errors import SaelabError


# --- dataclass -> argparse ----------------------------------------------------------------------
def _base_type(tp: Any) -> tuple[Any, bool]:
    """(scalar type, is_list) of a field annotation, Optional stripped."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    if origin is list:
        return typing.get_args(tp)[0], True
    return tp, False


def _none_or(kind: Callable) -> Callable:
    def parse(text: str):
        return None if text.lower() == "none" else kind(text)
    parse.__name__ = kind.__name__
    return parse


def add_dataclass(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One `--field-name` option per dataclass field (booleans get --x / --no-x)."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__, (cls.__doc__ or "").strip().split("\n")[0])
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        help_text = f"{f.metadata.get('help', '')} (default: {default})".replace("%", "%%")
        kind, is_list = _base_type(hints[f.name])
        if kind is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
        else:
            group.add_argument(flag, dest=f.name, type=_none_or(kind), default=argparse.SUPPRESS,
                               nargs="+" if is_list else None, help=help_text,
                               metavar=f.name.upper())


def config_from(cls: type, args: argparse.Namespace, extra: dict | None = None):
    """Build `cls` from --config file values, then command-line values, then `extra`."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_config_file(args.config))
    names = {f.name for f in dataclasses.fields(cls)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    values.update(extra or {})
    return build(cls, {k: v for k, v in values.items() if k in names}, what=cls.__name__)


# --- commands -------------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    from saelab.evaluate import format_report
    from saelab.pipeline import DemoConfig, run_demo

    cfg = config_from(DemoConfig, args)
    report = run_demo(cfg)
    out = Path(cfg.out)
    print(f"\nsaelab demo finished in {report['seconds']['total']:.0f} s "
          f"({report['model']} {report['hookpoint']}, {report['train_rows']:,} training "
          f"vectors, {report['excluded_fraction']:.2%} of tokens left out by the exclusion "
          f"rule)")
    print(format_report(report))
    print(f"\n  dictionary   {out / 'sae'}\n  report       {out / 'report.json'}\n"
          f"  dashboard    {out / 'dashboard' / 'index.html'}\n"
          f"  open it with: saelab view {out / 'dashboard'}")
    return 0


def cmd_capture(args) -> int:
    from saelab.pipeline import CaptureConfig, capture

    store = capture(config_from(CaptureConfig, args))
    print(f"{store.n_rows:,} rows of {', '.join(store.hookpoints)} in {store.path}")
    return 0


def _dictionary_fields(args) -> dict:
    from saelab.dictionaries import get

    cls = get(args.architecture)
    names = {f.name for f in dataclasses.fields(cls.Config)} - {"d_in", "n_latents"}
    return {k: v for k, v in vars(args).items() if k in names}


def cmd_train(args) -> int:
    import saelab
    from saelab.store import ActivationStore
    from saelab.train import TrainConfig
    from saelab.train import distributed as dist

    store = ActivationStore(args.store)
    cfg = config_from(TrainConfig, args)
    if cfg.out is None:
        cfg = dataclasses.replace(cfg, out=str(Path("runs") / f"{args.architecture}"))
    started = not dist.is_initialized() and dist.init_from_env(cfg.device)  # under torchrun
    try:
        if args.hookpoints:  # layer parallel: the hookpoints shared out over the ranks
            trained = dist.fit_hookpoints(lambda h: _create(args, store, dataclasses.replace(
                cfg, hookpoint=h)), store, args.hookpoints, cfg)
            for h, sae in trained.items():
                print(f"[rank {dist.rank()}] trained {sae.architecture} ({sae.n_latents} "
                      f"latents) on {h} -> {dist.run_folder(cfg.out, h) / 'sae'}")
            return 0
        sae = saelab.fit(_create(args, store, cfg), store, cfg)  # data parallel under torchrun
        if dist.is_main():
            ranks = f" on {dist.world_size()} ranks" if dist.world_size() > 1 else ""
            print(f"trained {sae.architecture} ({sae.n_latents} latents){ranks} -> "
                  f"{Path(cfg.out) / 'sae'}")
        return 0
    finally:
        if started:
            import torch.distributed

            torch.distributed.destroy_process_group()


def _create(args, store, cfg):
    import saelab

    d_in = store.d(store.hookpoint(cfg.hookpoint))
    fields = _dictionary_fields(args)
    if cfg.target_hookpoint and fields.get("d_out") is None:
        fields["d_out"] = store.d(store.hookpoint(cfg.target_hookpoint))
    return saelab.create(args.architecture, d_in=d_in, n_latents=args.n_latents, **fields)


def cmd_eval(args) -> int:
    import saelab
    from saelab.capture.exclude import Exclusion
    from saelab.evaluate import format_report
    from saelab.store import ActivationStore

    sae = saelab.load(args.sae)
    store = ActivationStore(args.store)
    trained_on = sae.provenance.get("hookpoint")
    hookpoint = store.hookpoint(args.hookpoint or
                                (trained_on if trained_on in store.hookpoints else None))
    kwargs: dict = {}
    target = args.target_hookpoint or sae.provenance.get("data_target_hookpoint")
    if "target" in sae.needs and target:  # a transcoder: compared with and spliced at its target
        kwargs["target_hookpoint"] = store.hookpoint(target)
    if args.splice_tokens > 0:
        from saelab.models import load

        lm = load(store.model)
        if lm.kind == "causal_lm":
            n = max(1, args.splice_tokens // store.manifest["context_len"])
            kwargs = dict(model=lm.model, tokens=store.contexts()["tokens"][:n],
                          exclusion=Exclusion.from_json(store.manifest.get("exclusion")),
                          **kwargs)
    out = args.out or str(Path(args.sae).parent / "eval")
    report = saelab.evaluate(sae, store, hookpoint=hookpoint, out=out, progress=True,
                             metrics=tuple(args.metrics), **kwargs)
    print(format_report(report))
    print(f"report: {Path(out) / 'report.json'}")
    return 0


def cmd_dashboard(args) -> int:
    import saelab
    from saelab.pipeline import dashboard

    lm = None
    if args.model:
        from saelab.models import load

        lm = load(args.model)
    path = dashboard(saelab.load(args.sae), args.store, args.out, lm, n_features=args.n_features)
    print(f"dashboard: {path}")
    return 0


def cmd_view(args) -> int:
    import functools
    import http.server

    folder = Path(args.folder)
    if not (folder / "index.html").is_file():
        raise SaelabError(f"{folder} holds no index.html; build one with `saelab dashboard`")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    print(f"serving {folder} at http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def cmd_convert(args) -> int:
    from saelab.io import convert, detect

    src = args.src
    kind = "hub" if str(src).startswith("hf://") else detect(
        Path(src) / args.hookpoint if args.hookpoint else src)
    out = convert(src, args.dst, args.to, hookpoint=args.hookpoint,
                  norm_scaling_factor=args.norm_scaling_factor)
    print(f"converted {src} ({kind}) -> {out} ({args.to})")
    return 0


def cmd_push(args) -> int:
    from saelab.io.hub import push

    address = push(args.run, args.repo, args.path_in_repo, private=args.private)
    print(f"pushed: load it with saelab.load({address!r})")
    return 0


# --- parser ---------------------------------------------------------------------------------------
def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    from saelab.pipeline import CaptureConfig, DemoConfig

    parser = argparse.ArgumentParser(prog="saelab", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="Show tracebacks of errors.")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log progress details.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, fn, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", metavar="FILE.json", help="Read option values from a JSON "
                                                             "file (command-line options win).")
        p.set_defaults(fn=fn)
        return p

    add_dataclass(command("demo", cmd_demo, "Capture, train, evaluate and build a dashboard on "
                                            "the built-in default (SmolLM2-135M, Wikipedia)."),
                  DemoConfig)
    add_dataclass(command("capture", cmd_capture, "Capture activations into a store."),
                  CaptureConfig)
    _train_args(command("train", cmd_train, "Train a dictionary on an activation store (data "
                                            "parallel when launched with torchrun)."), argv)
    _eval_args(command("eval", cmd_eval, "Evaluate a dictionary on an activation store."))
    _dashboard_args(command("dashboard", cmd_dashboard, "Build the static HTML dashboard of a "
                                                        "dictionary."))
    _convert_args(command("convert", cmd_convert, "Convert a dictionary between saelab's, "
                                                  "SAELens' and sparsify's formats (reads "
                                                  "dictionary_learning too)."))
    _push_args(command("push", cmd_push, "Upload a run's dictionary to the Hugging Face Hub with "
                                         "a repo card (needs huggingface_hub and a token)."))
    p = command("view", cmd_view, "Serve a dashboard folder on 127.0.0.1.")
    p.add_argument("folder", help="Dashboard folder.")
    p.add_argument("--port", type=int, default=8000, help="Port (default: 8000; 0 picks one).")
    return parser


def _train_args(p: argparse.ArgumentParser, argv: list[str]) -> None:
    """`saelab train`: the store, the architecture, then the fields of that architecture's
    config and of TrainConfig (the architecture is read from argv first, so its fields exist)."""
    from saelab.dictionaries import get, names
    from saelab.train import TrainConfig

    p.add_argument("store", help="Activation store folder (from `saelab capture`).")
    p.add_argument("--hookpoints", nargs="+", metavar="HOOKPOINT",
                   help="Train one dictionary per hookpoint, each in OUT/HOOKPOINT/; under "
                        "torchrun the hookpoints are shared out over the ranks (layer parallel).")
    p.add_argument("--architecture", default="topk", choices=names(),
                   help="Dictionary architecture (default: topk).")
    p.add_argument("--n-latents", dest="n_latents", type=int, default=4608,
                   help="Number of latents (default: 4608).")
    arch = _peek(argv, "--architecture", "topk")
    add_dataclass(p, get(arch if arch in names() else "topk").Config,
                  skip=("d_in", "n_latents"))
    add_dataclass(p, TrainConfig)


def _eval_args(p: argparse.ArgumentParser) -> None:
    from saelab.evaluate import families

    p.add_argument("sae", help="Dictionary folder.")
    p.add_argument("store", help="Activation store (held-out data).")
    p.add_argument("--hookpoint", help="Store hookpoint (default: the dictionary's).")
    p.add_argument("--target-hookpoint", dest="target_hookpoint",
                   help="Transcoders: the hookpoint they predict, compared with and spliced "
                        "(default: the one they were trained on).")
    p.add_argument("--metrics", nargs="+", default=["reconstruction", "sparsity"],
                   choices=families(), help="Metric families (default: reconstruction "
                                            "sparsity; afa: the AFA norm check).")
    p.add_argument("--splice-tokens", type=int, default=8192, dest="splice_tokens",
                   help="Tokens for the spliced next-token loss (0 skips it; needs the model).")
    p.add_argument("--out", help="Report folder (default: beside the dictionary, eval/).")


def _dashboard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("sae", help="Dictionary folder.")
    p.add_argument("store", help="Activation store whose contexts are shown.")
    p.add_argument("--out", default="dashboard", help="Output folder (default: dashboard).")
    p.add_argument("--model", help="Model, for the tokens each decoder direction promotes.")
    p.add_argument("--n-features", dest="n_features", type=int, default=200,
                   help="Features shown (default: 200).")


def _convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="Dictionary folder in any known format, or hf://owner/repo/path.")
    p.add_argument("dst", help="Output folder (replaced atomically).")
    p.add_argument("--to", required=True, choices=("saelens", "sparsify", "saelab"),
                   help="Output format.")
    p.add_argument("--hookpoint", help="Sub-folder of a multi-hookpoint (sparsify) source.")
    p.add_argument("--norm-scaling-factor", dest="norm_scaling_factor", type=float,
                   help="SAELens expected_average_only_in factor to fold into the weights.")


def _push_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="Run folder (with sae/) or dictionary folder.")
    p.add_argument("repo", help="Hub repository, owner/name (created if missing).")
    p.add_argument("--path-in-repo", dest="path_in_repo", default="sae",
                   help="Folder inside the repository (default: sae).")
    p.add_argument("--private", action="store_true", help="Create the repository private.")


def _peek(argv: list[str], flag: str, default: str) -> str:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return default


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.fn(args)
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
