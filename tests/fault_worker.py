"""`vidlm STAGE train ARGS...` that kills itself (SIGKILL, as `kill -9` does) in the middle of one
checkpoint save: right after the first file of that step's folder is written, before `latest`
moves. Run as a plain process or under the deepspeed launcher (every rank runs this module).

    KILL_AT_SAVE=step-4 KILL_RANK=1 python -m tests.fault_worker tokenizer --config C --run R ...

Without KILL_AT_SAVE it is the plain training command (the uninterrupted and the resumed runs).
"""

from __future__ import annotations

import os
import signal
import sys

import torch


def arm(tag: str) -> None:
    """Wrap torch.save (DeepSpeed's checkpoint engine and our rank files both use it): the first
    file written inside a `tag` step folder is the last thing this process does."""
    real = torch.save

    def save(obj, f, *args, **kwargs):
        real(obj, f, *args, **kwargs)
        if f"{os.sep}{tag}{os.sep}" in str(f):
            os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save


def main(argv: list[str]) -> int:
    tag = os.environ.get("KILL_AT_SAVE")
    if tag and os.environ.get("RANK", "0") == os.environ.get("KILL_RANK", "0"):
        arm(tag)
    from vidlm.cli import main as vidlm

    stage, *rest = argv
    return vidlm([stage, "train", *rest])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
