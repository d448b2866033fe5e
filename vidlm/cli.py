"""The `vidlm` command: one subcommand per stage, each its own module's `main(argv)`.

    vidlm data ...        build, inspect and tokenize data sets        (vidlm.data.cli)
    vidlm tokenizer ...   train, evaluate and export the video tokenizer (vidlm.tokenizer.cli)
    vidlm lm ...          train and export the video LM                (vidlm.lm.cli)
    vidlm generate ...    sample videos for a task                     (vidlm.generate)
    vidlm serve           a local web app for every task (Gradio)      (vidlm.serve)
    vidlm demo            the end-to-end demo on the shapes world      (vidlm.demo)
    vidlm eval ...        world-simulation evaluation                  (vidlm.evaluate)
    vidlm bench ...       benchmarks (bench/)                          (vidlm.bench)

Every subcommand also runs as `python -m MODULE`. Errors a user can act on print one line and
exit 2 (`vidlm.errors`); `--debug` or VIDLM_DEBUG=1 shows the traceback.
"""

import importlib
import sys

from vidlm.errors import run

COMMANDS = {
    "data": ("vidlm.data.cli", "build, inspect and tokenize data sets"),
    "tokenizer": ("vidlm.tokenizer.cli", "train, evaluate and export the video tokenizer"),
    "lm": ("vidlm.lm.cli", "train and export the video LM"),
    "generate": ("vidlm.generate", "generate videos: t2v, t2i, i2v, extend, connect, loop, edit, long"),
    "serve": ("vidlm.serve", "a local web app for every task (Gradio; vidlm[serve])"),
    "demo": ("vidlm.demo", "end-to-end demo on the shapes world"),
    "eval": ("vidlm.evaluate", "world-simulation evaluation"),
    "bench": ("vidlm.bench", "benchmarks of a source checkout (bench/)"),
}


def usage() -> str:
    lines = ["usage: vidlm COMMAND [options]   (vidlm COMMAND --help for each)", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"vidlm: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = COMMANDS[name][0]
    if name == "data" and rest[:1] == ["tokenize"]:  # codes from the tokenizer: a layer above data
        module, name, rest = "vidlm.pretokenize", "data tokenize", rest[1:]
    return run(importlib.import_module(module).main, f"vidlm {name}", rest)


if __name__ == "__main__":
    sys.exit(main())
