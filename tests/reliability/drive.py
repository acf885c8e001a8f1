"""Run `saelab ARGS` as the CLI does, with one failure planted at an exact point:

    python drive.py --kill-at-step N -- train ...        SIGKILL itself before training step N
    python drive.py --pause-at-step N FILE -- train ...  at step N, create FILE and sleep (a run
                                                         caught in the act, for lock drills)
    python drive.py --pause-at-shard FILE -- capture ... the same, when the first shard is written
    python drive.py --kill-in-swap NAME COUNT -- ...     SIGKILL itself between the two renames
                                                         of the COUNT-th replacement of folder NAME
    python drive.py --enospc-after N -- ...              every safetensors write after the first N
                                                         fails as on a full disk (for machines
                                                         where a small tmpfs cannot be mounted)

Each is a real event for the process (a SIGKILL is not caught; the disk-full error comes from the
same place a full disk's would), so the drill sees what a user would.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path


def kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def at_step(step: int, act) -> None:
    from saelab.train import Run

    original = Run.take_step

    def take_step(run, batch):
        if run.step == step:
            act()
        return original(run, batch)

    Run.take_step = take_step


def pause(flag: str):
    def act() -> None:
        Path(flag).write_text(str(os.getpid()))
        time.sleep(120)
    return act


def pause_at_shard(flag: str) -> None:
    import saelab.store.writer as writer

    original = writer.write_safetensors

    def write(path, tensors, metadata=None):
        original(path, tensors, metadata)
        if Path(path).name == "00000.safetensors":
            pause(flag)()

    writer.write_safetensors = write


def kill_in_swap(name: str, count: int) -> None:
    real = os.replace
    seen = [0]

    def replace(src, dst, *a, **kw):
        real(src, dst, *a, **kw)
        if Path(dst).name.startswith(f".{name}.old-"):  # the first rename of a folder swap
            seen[0] += 1
            if seen[0] == count:
                kill()  # the new version is not in place yet

    os.replace = replace


def enospc_after(n: int) -> None:
    import saelab._paths as paths
    from safetensors import SafetensorError

    original = paths.save_file
    calls = [0]

    def save_file(tensors, filename, metadata=None):
        calls[0] += 1
        if calls[0] > n:
            raise SafetensorError("Error while serializing: I/O error: No space left on device "
                                  "(os error 28)")
        return original(tensors, filename, metadata=metadata)

    paths.save_file = save_file


def main(argv: list[str]) -> int:
    split = argv.index("--")
    plan, args = argv[:split], argv[split + 1:]
    if plan[:1] == ["--kill-at-step"]:
        at_step(int(plan[1]), kill)
    elif plan[:1] == ["--pause-at-step"]:
        at_step(int(plan[1]), pause(plan[2]))
    elif plan[:1] == ["--pause-at-shard"]:
        pause_at_shard(plan[1])
    elif plan[:1] == ["--kill-in-swap"]:
        kill_in_swap(plan[1], int(plan[2]))
    elif plan[:1] == ["--enospc-after"]:
        enospc_after(int(plan[1]))
    elif plan:
        raise SystemExit(f"unknown plan {plan}")
    from saelab.cli import main as saelab_main

    return saelab_main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
