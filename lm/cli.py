"""`vidlm lm`: train and export the video LM."""

from __future__ import annotations

import argparse
import sys

EPILOG = """examples:
  vidlm data tokenize --tokenizer models/tokenizer --text models/text --shards shards/shapes --out tokens/shapes
  vidlm lm train --config recipes/lm/demo.yaml --data tokens/shapes --run runs/lm-demo
  vidlm lm train --config recipes/lm/debug.yaml --data tokens/shapes --deepspeed recipes/deepspeed/zero2.json
  NPROC=2 recipes/launch/cpu.sh "vidlm.lm.cli train" recipes/lm/debug.yaml \\
      --deepspeed recipes/deepspeed/zero3.json --data tokens/shapes --run runs/lm-2rank
  recipes/launch/8gpu.sh "vidlm.lm.cli train" recipes/lm/M.yaml --deepspeed recipes/deepspeed/zero2.json
  vidlm lm export --run runs/lm-demo --out models/lm        (safetensors + config.json + vocab.json)

A run resumes from RUN/latest when started again with the same --run (exactly: same losses).
"""


def build_parser() -> argparse.ArgumentParser:
    from vidlm.runtime import add_train_parser

    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="vidlm lm", description=__doc__, epilog=EPILOG, formatter_class=fmt)
    sub = p.add_subparsers(dest="cmd", required=True)
    add_train_parser(sub, "lm", data_help="token folder (default: the recipe's data.tokens)", epilog=EPILOG,
                     formatter_class=fmt)
    x = sub.add_parser("export", help="RUN/latest -> safetensors + config.json + vocab.json", epilog=EPILOG,
                       formatter_class=fmt)
    x.add_argument("--run", required=True)
    x.add_argument("--out", required=True)
    x.add_argument("--step", type=int, help="export this earlier checkpoint of the run (default: latest)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "export":
        from vidlm.lm.train import export

        print(f"exported {export(args.run, args.out, step=args.step)}")
        return 0
    from vidlm.lm.config import TrainConfig
    from vidlm.lm.train import main as train

    from vidlm.runtime import run_training

    def fit(cfg, **kw):
        from vidlm.pretokenize import load_places  # two-level codes: where each code draws

        return train(cfg, places=load_places(kw.get("data") or cfg.data.tokens), **kw)["last"]

    return run_training(TrainConfig, fit, args)


if __name__ == "__main__":
    from vidlm.errors import run

    sys.exit(run(main, "vidlm lm"))
