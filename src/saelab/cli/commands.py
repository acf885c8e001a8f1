"""`saelab <command>`: thin wrappers over the Python API, each generated from its config dataclass.

The commands: their config dataclasses, one-line help and steps (`cmd_*`), and `main`, the
top-level parser that hands a command's arguments to `saelab.cli.parsing`. Errors meant for users
print their message and exit 2, without a traceback unless `--debug`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, NamedTuple

from saelab.cli.parsing import parse_config, train_command
from saelab.config import build, option, required
from saelab.errors import SaelabError, explain_os_error


class Command(NamedTuple):
    """One `saelab` subcommand."""

    config: type
    """The config dataclass whose fields are the command's options (for `train`, plus the
    fields of the chosen architecture's `saelab.dictionaries.get(name).Config`)."""
    help: str
    """One-line help."""


# --- configs of the commands whose step lives outside this package's own modules ----------------
@dataclass
class ViewConfig:
    """Serve the feature browser of a dashboard (or a run folder holding one) on 127.0.0.1."""

    folder: str = required("Dashboard folder (from `saelab dashboard`), or a run folder with "
                           "a dashboard/ inside (the demo's).", positional=True)
    port: int = option(8000, "Port (0 picks a free one).")
    static: bool = option(False, "Serve only the static pages (no server-side app).")


@dataclass
class ConvertConfig:
    """Convert a dictionary between saelab's, SAELens' and sparsify's formats."""

    src: str = required("Dictionary folder in any known format, or hf://owner/repo/path.",
                        positional=True)
    dst: str = required("Output folder (written atomically; never the source or a folder "
                        "around it).", positional=True)
    to: Literal["saelens", "sparsify", "saelab"] = required("Output format.")
    hookpoint: str | None = option(None, "Sub-folder of a multi-hookpoint (sparsify) source.")
    norm_scaling_factor: float | None = option(None, "SAELens expected_average_only_in factor to "
                                                     "fold into the weights.")
    overwrite: bool = option(False, "Replace an existing output folder.")


@dataclass
class CheckConfig:
    """Verify an activation store: every shard against its recorded checksum and row count."""

    store: str = required("Activation store folder (from `saelab capture`).", positional=True)


@dataclass
class PushConfig:
    """Upload a run's dictionary to the Hugging Face Hub with a repo card."""

    run: str = required("Run folder (with sae/) or dictionary folder.", positional=True)
    repo: str = required("Hub repository, owner/name (created if missing).", positional=True)
    path_in_repo: str = option("sae", "Folder inside the repository.")
    private: bool = option(False, "Create the repository private.")


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
    from saelab.train import TrainConfig, run_folder
    from saelab.train import distributed as dist

    store = ActivationStore(cmd.store)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = build(TrainConfig, {k: getattr(cmd, k) for k in names})
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

    if cfg.compare:
        return cmd_compare(cfg)
    report, out = evaluate_step(cfg)
    print(format_report(report))
    print(f"report: {out / 'report.json'}")
    return 0


def cmd_compare(cfg) -> int:
    """`saelab eval --compare REPORT ...`: the reports side by side, printed and as HTML."""
    from saelab.evaluate import compare, format_comparison, write_comparison

    if cfg.sae is not None or cfg.store is not None:
        raise SaelabError("saelab eval --compare compares reports: name them after --compare, "
                          "without SAE and STORE")
    comparison = compare(cfg.compare)
    first = Path(cfg.compare[0])
    folder = Path(cfg.out) if cfg.out else first.parent if first.suffix == ".json" else first
    print(format_comparison(comparison))
    print(f"comparison: {write_comparison(folder / 'compare.html', comparison)}")
    return 0


def cmd_dashboard(cfg) -> int:
    from saelab.pipeline import dashboard_step

    print(f"dashboard: {dashboard_step(cfg)}")
    return 0


def cmd_view(cfg: ViewConfig) -> int:
    from saelab.interpret.viewer import serve
    from saelab.io import load

    server = serve(cfg.folder, cfg.port, static=cfg.static, load_dictionary=load)
    print(f"serving {cfg.folder} at http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)")
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
                  norm_scaling_factor=cfg.norm_scaling_factor, overwrite=cfg.overwrite)
    print(f"converted {src} ({kind}) -> {out} ({cfg.to})")
    return 0


def cmd_check(cfg: CheckConfig) -> int:
    import time

    from saelab.store import ActivationStore

    start = time.perf_counter()
    store = ActivationStore(cfg.store)
    shards = store.verify()
    state = "complete" if store.complete else "INCOMPLETE (its capture has not finished)"
    print(f"{cfg.store}: {shards} shards, {store.n_rows} rows, every sha256 and row count "
          f"matches the manifest ({time.perf_counter() - start:.1f} s); {state}")
    return 0 if store.complete else 1


def cmd_push(cfg: PushConfig) -> int:
    from saelab.io.hub import push

    address = push(cfg.run, cfg.repo, cfg.path_in_repo, private=cfg.private)
    print(f"pushed: load it with saelab.load({address!r})")
    return 0


def cmd_explain(cfg) -> int:
    import saelab
    from saelab.interpret.explain import format_summary, run_explain

    records = run_explain(saelab.load(cfg.sae), cfg)
    out = Path(cfg.out) if cfg.out else Path(cfg.sae).parent / "explain"
    print(format_summary(records))
    print(f"explanations: {out / 'explanations.jsonl'}")
    return 0


def cmd_steer(cfg) -> int:
    from saelab.steer import format_comparison, run_steer

    print(format_comparison(run_steer(cfg), as_json=cfg.json))
    return 0


def _steer_config() -> type:
    from saelab.steer import SteerConfig

    return SteerConfig


def cmd_diffusion_capture(cfg) -> int:
    from saelab.steer.diffusion_run import run_diffusion_capture

    store = run_diffusion_capture(cfg)
    grid = store.manifest["diffusion"]["grid"]
    print(f"captured {store.n_rows:,} rows of {store.hookpoint()} ({store.manifest['n_contexts']} "
          f"images, steps {store.manifest['diffusion']['steps']}, {grid[0]}x{grid[1]} positions) "
          f"-> {cfg.out}")
    return 0


def _diffusion_capture_config() -> type:
    from saelab.steer.diffusion_run import DiffusionCaptureConfig

    return DiffusionCaptureConfig


def cmd_embed(cfg) -> int:
    from saelab.analyse import embed_step

    emb, folder, reused = embed_step(cfg)
    per_doc = len(emb.latents_Z) / max(1, len(emb))
    print(f"{'reused' if reused else 'embedded'} {len(emb):,} documents ({emb.n_latents:,} "
          f"latents, {per_doc:.0f} active per document, {cfg.pooling}-pooled) -> {folder}")
    return 0


def cmd_diff(cfg) -> int:
    from saelab.analyse import diff_step, format_diff

    print(format_diff(diff_step(cfg), examples=cfg.examples))
    if cfg.out:
        print(f"\ndiff: {cfg.out}")
    return 0


def cmd_correlate(cfg) -> int:
    from saelab.analyse.concepts import correlate_step, format_correlation

    print(format_correlation(correlate_step(cfg)))
    return 0


def cmd_cluster(cfg) -> int:
    from saelab.analyse.concepts import cluster_step, format_clusters

    print(format_clusters(cluster_step(cfg)))
    return 0


def _concepts(name: str) -> Callable[[], type]:
    def config() -> type:
        import saelab.analyse.concepts

        return getattr(saelab.analyse.concepts, name)
    return config


def cmd_stitch(cfg) -> int:
    from saelab.transfer import format_stitch, stitch_step

    print(format_stitch(stitch_step(cfg)))
    print(f"map: {cfg.out}")
    return 0


def cmd_transfer(cfg) -> int:
    from saelab.transfer import transfer_step

    moved = transfer_step(cfg)
    print(f"transferred {moved.architecture} ({moved.n_latents:,} latents) to "
          f"{moved.provenance.get('model')} {moved.provenance.get('hookpoint')} "
          f"({moved.d_in} wide) -> {cfg.out}")
    return 0


def _transfer(name: str) -> Callable[[], type]:
    def config() -> type:
        import saelab.transfer

        return getattr(saelab.transfer, name)
    return config


def _analyse(name: str) -> Callable[[], type]:
    def config() -> type:
        import saelab.analyse

        return getattr(saelab.analyse, name)
    return config


def _explain_config() -> type:
    from saelab.interpret.explain import ExplainConfig

    return ExplainConfig


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
    "train": (train_command, "Train a dictionary on an activation store (data parallel when "
                             "launched with torchrun).", cmd_train),
    "eval": (_pipeline("EvalConfig"), "Evaluate a dictionary on an activation store.", cmd_eval),
    "dashboard": (_pipeline("DashboardConfig"), "Build a dictionary's dashboard: static pages "
                                                "and the feature browser's data.", cmd_dashboard),
    "view": (lambda: ViewConfig, "Serve the feature browser of a dashboard on 127.0.0.1.",
             cmd_view),
    "convert": (lambda: ConvertConfig, "Convert a dictionary between saelab's, SAELens' and "
                                       "sparsify's formats (reads dictionary_learning too).",
                cmd_convert),
    "check": (lambda: CheckConfig, "Verify an activation store's shards against the checksums "
                                   "and row counts of its manifest.", cmd_check),
    "push": (lambda: PushConfig, "Upload a run's dictionary to the Hugging Face Hub with a repo "
                                 "card (needs huggingface_hub and a token).", cmd_push),
    "explain": (_explain_config, "Explain a dictionary's features with a language model and "
                                 "score the explanations.", cmd_explain),
    "embed": (_analyse("EmbedConfig"), "Embed each document of a corpus as the pooled "
                                       "activations of a dictionary's latents.", cmd_embed),
    "diff": (_analyse("DiffConfig"), "The latents whose document frequency differs most "
                                     "between two corpora, tested and with examples.", cmd_diff),
    "correlate": (_concepts("CorrelateConfig"), "Pairs of latents that fire in the same "
                                                "documents beyond chance, tested.", cmd_correlate),
    "cluster": (_concepts("ClusterConfig"), "Cluster a corpus's documents along chosen latents, "
                                            "scored against their labels.", cmd_cluster),
    "stitch": (_transfer("StitchConfig"), "Fit affine maps both ways between two models' "
                                          "residual streams on the same text (held-out R^2).",
               cmd_stitch),
    "transfer": (_transfer("TransferConfig"), "Carry a dictionary to the other model of a map "
                                              "written by `saelab stitch`.", cmd_transfer),
    "steer": (_steer_config, "Generate with and without a feature's intervention, side by "
                             "side, with its activation on each token.", cmd_steer),
    "diffusion-capture": (_diffusion_capture_config, "Capture a diffusion U-Net block's delta at "
                                                     "chosen denoising steps into a store.",
                          cmd_diffusion_capture),
}


def commands() -> dict[str, Command]:
    """Every subcommand: its config dataclass and one-line help (the CLI reference's source)."""
    return {name: Command(config(), help) for name, (config, help, _) in _COMMANDS.items()}


def parse(name: str, argv: list[str]) -> tuple[Any, dict]:
    """Parse one command's arguments: (its config, for `train` the dictionary's fields)."""
    config, help_text, _ = _COMMANDS[name]
    return parse_config(name, config(), help_text, argv)


def _parser() -> argparse.ArgumentParser:
    """The top-level parser: global options, then a command and its options (left to `parse`)."""
    from saelab import __version__

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
    return top


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
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
    except OSError as e:  # disk full, permission, port in use: the system's, said plainly
        if args.debug:
            raise
        print(f"saelab: error: {explain_os_error(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("saelab: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
