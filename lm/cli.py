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
    from vidlm.runtime import add_launcher_args

    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="vidlm lm", description=__doc__, epilog=EPILOG, formatter_class=fmt)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train (or resume) an LM run", epilog=EPILOG, formatter_class=fmt)
    t.add_argument("--config", required=True, help="run config YAML, e.g. recipes/lm/demo.yaml")
    t.add_argument("--data", help="token folder (default: the recipe's data.tokens)")
    t.add_argument("--run", help="run folder (default: the recipe's run_dir)")
    t.add_argument("--steps", type=int, help="override the recipe's steps")
    t.add_argument("--stop-at", type=int, help="stop at this step (with a checkpoint), schedule unchanged")
    add_launcher_args(t)
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
    import dataclasses

    from vidlm.lm.config import TrainConfig
    from vidlm.lm.train import main as train_main

    from vidlm import runtime as rt
    from vidlm.config import load_yaml

    cfg = load_yaml(TrainConfig, args.config)  # a bad config fails here, before anything starts
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, steps=args.steps)
    out = train_main(cfg, run_dir=args.run, data=args.data, deepspeed=args.deepspeed, local_rank=args.local_rank,
                     stop_at=args.stop_at)
    last = out["last"]
    if last:
        print("final: " + ", ".join(f"{k} {v:.4g}" for k, v in last.items() if isinstance(v, float) and "/" not in k))
    rt.finish(rt.init_distributed(args.local_rank))
    return 0


if __name__ == "__main__":
    from vidlm.errors import run

    sys.exit(run(main, "vidlm lm"))
