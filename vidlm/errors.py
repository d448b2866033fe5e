"""Errors a user can act on: one line naming what was wrong and what to do, exit code 2.

Every entry point (`vidlm SUBCOMMAND`, `python -m MODULE`) runs its `main` through `run`: a
missing or unreadable file, a bad config, a video that does not decode, weights that do not
load, a request larger than the model's context, a run that diverged, all print
`PROG: message` on stderr and exit 2. `--debug` (anywhere on the command line) or
VIDLM_DEBUG=1 shows the traceback instead. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys


class UserError(Exception):
    """An error whose message tells the user what was wrong and what to do (mixed into our
    ValueError / RuntimeError subclasses: ConfigError, VideoDecodeError, ...)."""


USER_ERRORS = (UserError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
"""What `run` answers with one line: our own errors, and the built-in ones our checks raise
with a message (bad values and sizes, missing files)."""


def debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("VIDLM_DEBUG", "") not in ("", "0")


def run(main, prog: str, argv: list[str] | None = None) -> int:
    """`main(argv)` with user errors as one line on stderr and exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    try:
        return main(argv) or 0
    except SystemExit as e:  # raise SystemExit("prog: message"): a user error already worded
        if not isinstance(e.code, str) or debug:
            raise
        print(" ".join(e.code.split()), file=sys.stderr)
        return 2
    except USER_ERRORS as e:
        if debug:
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"{prog}: {message}", file=sys.stderr)
        return 2
