"""The reliability drills: each failure of issue 14 run as a user meets it (the CLI in a process
of its own; a real SIGKILL; a full disk from a small tmpfs where one can be mounted, else the
same error planted where the disk's would arise), asserting the message, the exit code (2 for
bad input, 1 for what the operating system refused), no traceback, and that nothing was lost
or deleted. docs/concepts/reliability.md names the drill behind each guarantee."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import saelab
from saelab.cli import main

DRIVE = Path(__file__).with_name("drive.py")
HP = "model.layers.0"
TRAIN = ["--n-latents", "64", "--k", "4", "--batch-size", "128", "--no-progress"]


def cli(*args: str, plan: tuple[str, ...] = (), wait: bool = True):
    """`saelab ARGS` in a process of its own, with `plan` (see drive.py) planted."""
    command = [sys.executable, str(DRIVE), *plan, "--", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def refused(proc, code: int, *fragments: str) -> None:
    """The process ended with `code`, a message holding every fragment, and no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr[-2000:])


def ok(proc) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` (the lock file aside: its content is a process id)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def steps_logged(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def store(model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("drill_store") / "store"
    assert main(["capture", "--model", str(model_dir), "--hookpoints", HP, "--n-tokens", "2048",
                 "--context-len", "64", "--shard-rows", "1024", "--out", str(out),
                 "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def run(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("drill_run") / "run"
    assert main(["train", str(store), *TRAIN, "--steps", "30", "--checkpoint-every", "10",
                 "--out", str(out)]) == 0
    return out


def tampered(store: Path, folder: Path, edit) -> Path:
    """A copy of `store` whose first shard's activations went through `edit`, with the
    checksum recorded again: only the numbers are at fault, as if the capture wrote them."""
    shutil.copytree(store, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    shard = folder / manifest["shards"][0]["file"]
    tensors = load_file(shard)
    edit(tensors[f"acts/{HP}"])
    save_file(tensors, shard)
    manifest["shards"][0].update(sha256=hashlib.sha256(shard.read_bytes()).hexdigest(),
                                 bytes=shard.stat().st_size)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


# --- nothing deleted or overwritten without asking ---------------------------------------

def test_convert_onto_its_own_run_folder_or_source_is_refused_and_nothing_changes(run, tmp_path):
    before = snapshot(run)
    refused(cli("convert", run / "sae", run, "--to", "saelens"), 2, "overlaps the source")
    refused(cli("convert", run / "sae", run, "--to", "saelens", "--overwrite"), 2)
    refused(cli("convert", run / "sae", run / "sae", "--to", "saelens", "--overwrite"), 2)
    assert snapshot(run) == before
    ok(cli("convert", run / "sae", tmp_path / "lens", "--to", "saelens"))
    mine = snapshot(tmp_path / "lens")
    refused(cli("convert", run / "sae", tmp_path / "lens", "--to", "saelens"), 2, "--overwrite")
    assert snapshot(tmp_path / "lens") == mine


def test_training_into_its_own_store_is_refused_even_with_overwrite(store):
    before = snapshot(store)
    for out in (store, store / "run", store.parent):
        refused(cli("train", store, *TRAIN, "--steps", "3", "--out", out, "--overwrite"), 2,
                "overlaps the data it reads")
    assert snapshot(store) == before
    ok(cli("check", store))


def test_overwrite_removes_only_what_saelab_wrote(store, model_dir, tmp_path):
    out = tmp_path / "run"
    ok(cli("train", store, *TRAIN, "--steps", "3", "--out", out))
    (out / "notes.txt").write_text("mine")
    (out / "plots").mkdir()
    (out / "plots" / "a.png").write_bytes(b"png")
    refused(cli("train", store, *TRAIN, "--steps", "4", "--out", out), 2, "--overwrite")
    ok(cli("train", store, *TRAIN, "--steps", "4", "--out", out, "--overwrite"))
    assert (out / "notes.txt").read_text() == "mine" and (out / "plots" / "a.png").is_file()
    assert steps_logged(out)[-1] == 4
    cap = tmp_path / "cap"  # a capture's overwrite replaces the store's files, keeps the others
    cap.mkdir()
    (cap / "readme.md").write_text("mine")
    args = capture_args(model_dir, cap, 512)
    refused(cli(*args), 2, "readme.md", "--overwrite")
    ok(cli(*args, "--overwrite"))
    assert (cap / "readme.md").read_text() == "mine"
    ok(cli("check", cap))


def capture_args(model_dir: Path, out: Path, n_tokens: int) -> list:
    return ["capture", "--model", model_dir, "--hookpoints", HP, "--n-tokens", str(n_tokens),
            "--context-len", "64", "--shard-rows", "1024", "--out", out, "--no-progress"]


# --- locks ------------------------------------------------------------------------------

@contextlib.contextmanager
def paused(args: list, plan: tuple[str, ...]):
    """`saelab ARGS` started with a pause `plan` (its last item the flag file the pause
    creates), yielded once it is paused holding its folder's lock; SIGKILLed after the block."""
    flag, proc = Path(plan[-1]), cli(*args, plan=plan, wait=False)
    try:
        for _ in range(600):
            if flag.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert flag.exists(), proc.communicate()[1][-2000:]
        yield proc
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_a_second_run_into_a_running_ones_folder_is_refused_and_a_killed_one_leaves_no_lock(
        store, tmp_path):
    out, flag = tmp_path / "run", tmp_path / "paused"
    args = ["train", store, *TRAIN, "--steps", "12", "--checkpoint-every", "4", "--log-every", "1",
            "--out", out]
    with paused(args, ("--pause-at-step", "6", str(flag))) as first:
        refused(cli(*args), 2, f"in use by another saelab run (process {first.pid})")
        refused(cli(*args, "--overwrite"), 2, f"process {first.pid}")
    ok(cli(*args))  # the same command resumes: the killed run's lock went with it
    assert steps_logged(out) == list(range(1, 13))


def test_a_second_capture_into_a_running_ones_folder_is_refused(model_dir, tmp_path):
    out, flag = tmp_path / "store", tmp_path / "paused"
    args = capture_args(model_dir, out, 4096)
    with paused(args, ("--pause-at-shard", str(flag))) as first:
        refused(cli(*args), 2, f"in use by another saelab capture (process {first.pid})")
        refused(cli(*args, "--overwrite"), 2, f"process {first.pid}")
    ok(cli(*args))
    ok(cli("check", out))


# --- resume from any kill ---------------------------------------------------------------

def test_a_run_killed_before_its_first_checkpoint_reruns_with_the_same_command(store, tmp_path):
    out = tmp_path / "run"
    args = ["train", store, *TRAIN, "--steps", "8", "--checkpoint-every", "100", "--log-every",
            "1", "--out", out]
    proc = cli(*args, plan=("--kill-at-step", "5"))
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "checkpoint").exists() and (out / "metrics.jsonl").is_file()
    ok(cli(*args))
    assert steps_logged(out) == list(range(1, 9))


def test_a_kill_between_the_renames_of_a_checkpoint_swap_resumes_from_the_intact_one(
        store, tmp_path):
    args = [*TRAIN, "--steps", "30", "--checkpoint-every", "10", "--log-every", "1"]
    ok(cli("train", store, *args, "--out", tmp_path / "whole"))
    out = tmp_path / "run"
    proc = cli("train", store, *args, "--out", out, plan=("--kill-in-swap", "checkpoint", "2"))
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "checkpoint").exists()  # killed with the step-10 checkpoint set aside
    assert [p.name for p in out.glob(".checkpoint.old-*")]
    rerun = cli("train", store, *args, "--out", out)
    ok(rerun)
    assert "intact and restored" in rerun.stderr
    assert not list(out.glob(".checkpoint.*"))
    whole = load_file(tmp_path / "whole" / "sae" / "weights.safetensors")
    resumed = load_file(out / "sae" / "weights.safetensors")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert steps_logged(out) == list(range(1, 31))


# --- integrity --------------------------------------------------------------------------

def test_an_altered_shard_is_refused_by_train_eval_and_check(store, run, tmp_path):
    bad = tmp_path / "store"
    shutil.copytree(store, bad)
    shard = bad / "00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x40  # one data byte; the header is intact
    shard.write_bytes(bytes(data))
    message = "does not match the checksum"
    refused(cli("check", bad), 2, message, "00001.safetensors")
    refused(cli("train", bad, *TRAIN, "--steps", "20", "--out", tmp_path / "r"), 2, message)
    refused(cli("eval", run / "sae", bad, "--metrics", "reconstruction", "--out",
                tmp_path / "e"), 2, message)
    assert not (tmp_path / "e" / "report.json").exists()


def test_a_manifest_that_overstates_a_shards_rows_is_refused_by_train_and_eval(
        store, run, tmp_path):
    bad = tmp_path / "store"
    shutil.copytree(store, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    real = manifest["shards"][0]["rows"]
    manifest["shards"][0]["rows"] = real + 100
    (bad / "manifest.json").write_text(json.dumps(manifest))
    message = f"holds {real + 100} rows, the shard holds {real}"
    refused(cli("train", bad, *TRAIN, "--steps", "20", "--out", tmp_path / "r"), 2, message)
    refused(cli("eval", run / "sae", bad, "--metrics", "reconstruction"), 2, message)
    refused(cli("check", bad), 2, message)


def test_an_incomplete_store_is_refused_unless_asked(store, run, tmp_path):
    bad = tmp_path / "store"
    shutil.copytree(store, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["complete"] = False
    (bad / "manifest.json").write_text(json.dumps(manifest))
    refused(cli("train", bad, *TRAIN, "--steps", "3", "--out", tmp_path / "r"), 2, "incomplete")
    refused(cli("eval", run / "sae", bad, "--metrics", "sparsity"), 2, "incomplete")
    proc = cli("check", bad)
    assert proc.returncode == 1 and "INCOMPLETE" in proc.stdout
    allowed = cli("eval", run / "sae", bad, "--metrics", "sparsity", "--allow-incomplete-store")
    ok(allowed)
    assert "incomplete" in allowed.stderr.lower()


# --- no silent wrong answer -------------------------------------------------------------

def test_non_finite_activations_are_refused_by_eval_naming_the_row(store, run, tmp_path):
    def plant(acts):
        acts[700, 3] = float("nan")
    bad = tampered(store, tmp_path / "store", plant)
    refused(cli("eval", run / "sae", bad, "--metrics", "reconstruction", "sparsity", "--out",
                tmp_path / "e"), 2, "NaN or inf at row 700")
    assert not (tmp_path / "e").exists()


def test_a_value_whose_square_overflows_is_refused_by_train_naming_the_row(store, tmp_path):
    def plant(acts):
        acts[5, 0] = 1e20
    bad = tampered(store, tmp_path / "store", plant)
    refused(cli("train", bad, *TRAIN, "--steps", "3", "--out", tmp_path / "r"), 2, "row")
    assert not (tmp_path / "r" / "sae").exists()


def test_broken_or_ambiguous_weights_are_refused_and_float16_ones_evaluate(store, run, tmp_path):
    def copy(name: str, edit_weights=None, edit_cfg=None) -> Path:
        folder = tmp_path / name
        shutil.copytree(run / "sae", folder)
        if edit_weights:
            tensors = load_file(folder / "weights.safetensors")
            edit_weights(tensors)
            save_file(tensors, folder / "weights.safetensors", metadata={"format": "saelab"})
        if edit_cfg:
            cfg = json.loads((folder / "cfg.json").read_text())
            edit_cfg(cfg)
            (folder / "cfg.json").write_text(json.dumps(cfg))
        return folder

    nan = copy("nan", edit_weights=lambda t: t["W_dec"].view(-1)[:3].fill_(float("nan")))
    refused(cli("eval", nan, store, "--metrics", "reconstruction"), 2, "'W_dec' holds NaN")
    no_k = copy("no_k", edit_cfg=lambda c: c.pop("k"))
    refused(cli("eval", no_k, store, "--metrics", "reconstruction"), 2, "lacks 'k'")
    half = copy("half", edit_weights=lambda t: t.update({k: v.half() for k, v in t.items()}))
    ok(cli("eval", half, store, "--metrics", "reconstruction", "--out", tmp_path / "e16"))
    ok(cli("eval", run / "sae", store, "--metrics", "reconstruction", "--out", tmp_path / "e32"))
    fvu16, fvu32 = (json.loads((tmp_path / e / "report.json").read_text())["reconstruction"]["fvu"]
                    for e in ("e16", "e32"))
    assert abs(fvu16 - fvu32) < 1e-2 * fvu32  # the half-precision copy of the same dictionary


def test_a_dictionary_of_another_width_is_refused_with_both_widths(store, run, tmp_path):
    narrow = saelab.create("topk", d_in=16, n_latents=32, k=2)
    narrow.provenance = {"hookpoint": HP}
    narrow.save(tmp_path / "narrow")
    refused(cli("eval", tmp_path / "narrow", store, "--metrics", "reconstruction"), 2,
            "[rows, 16]", "32)")


def test_a_gpu_asked_of_a_machine_without_one_is_a_message(store, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    refused(cli("train", store, *TRAIN, "--steps", "3", "--device", "cuda", "--out",
                tmp_path / "r"), 2, "cuda")


def test_a_port_in_use_is_a_message(tmp_path):
    (tmp_path / "index.html").write_text("<html></html>")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        refused(cli("view", tmp_path, "--port", str(port)), 2, str(port))


# --- a full disk ------------------------------------------------------------------------

FULL = "no space left on the device"


class Disk:
    """Where a drill writes on a full disk: a 600 KiB tmpfs when one can be mounted (root),
    `grow()` making it 64 MiB as freeing space would; else a plain folder, and `plan(n)` plants
    the disk's error after n safetensors writes of the process (drive.py --enospc-after)."""

    def __init__(self, path: Path, mounted: bool):
        self.path, self.mounted = path, mounted

    def plan(self, n: int) -> tuple[str, ...]:
        return () if self.mounted else ("--enospc-after", str(n))

    def grow(self) -> None:
        if self.mounted:
            subprocess.run(["mount", "-o", "remount,size=64m", str(self.path)], check=True)


@pytest.fixture(params=["tmpfs", "planted"])
def disk(request, tmp_path):
    where = tmp_path / "disk"
    where.mkdir()
    mounted = request.param == "tmpfs" and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(where)],
        capture_output=True).returncode == 0
    if request.param == "tmpfs" and not mounted:
        pytest.skip("no tmpfs can be mounted here (not root): the planted drill stands in")
    yield Disk(where, mounted)
    if mounted:
        subprocess.run(["umount", str(where)], check=True)


def test_a_full_disk_during_capture_is_a_message_and_the_capture_resumes_once_there_is_room(
        model_dir, disk, tmp_path):
    out = disk.path / "store"  # 8192 rows of 32 floats: shards of about 130 KiB each
    refused(cli(*capture_args(model_dir, out, 8192), plan=disk.plan(2)), 1, FULL)
    assert not list(disk.path.rglob("*.tmp"))
    disk.grow()
    ok(cli(*capture_args(model_dir, out, 8192)))
    ok(cli("check", out))
    ok(cli(*capture_args(model_dir, tmp_path / "whole", 8192)))
    assert snapshot(out) == snapshot(tmp_path / "whole")


def test_a_full_disk_during_training_is_a_message_and_the_run_reruns(store, disk):
    out = disk.path / "run"  # a checkpoint of 2,048 latents (weights and Adam) is about 1.5 MiB
    args = ["train", store, *TRAIN, "--n-latents", "2048", "--steps", "4", "--checkpoint-every",
            "2", "--out", out]
    refused(cli(*args, plan=disk.plan(0)), 1, FULL)
    assert not (out / "checkpoint").exists() and not list(out.glob(".checkpoint*"))
    disk.grow()
    ok(cli(*args))
    assert (out / "sae" / "weights.safetensors").is_file()


def test_a_full_disk_during_convert_is_a_message_and_leaves_no_half_folder(disk, tmp_path):
    big = saelab.create("topk", d_in=32, n_latents=4096, k=4)  # about 1 MiB of weights
    big.save(tmp_path / "big")
    proc = cli("convert", tmp_path / "big", disk.path / "lens", "--to", "saelens",
               plan=disk.plan(0))
    refused(proc, 1, FULL, str(disk.path / "lens"))
    assert ".tmp" not in proc.stderr
    assert not (disk.path / "lens").exists() and not list(disk.path.iterdir())
    disk.grow()
    ok(cli("convert", tmp_path / "big", disk.path / "lens", "--to", "saelens"))
