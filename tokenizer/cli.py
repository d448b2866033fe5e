"""`vidlm tokenizer`: train, evaluate and export the causal 3D VQGAN video tokenizer."""

from __future__ import annotations

import argparse
import sys

from vidlm.config import parse_size

EPILOG = """examples:
  vidlm tokenizer train --config recipes/tokenizer/debug.yaml --run runs/tok-debug
  vidlm tokenizer train --config recipes/tokenizer/demo.yaml --data shards/shapes --run runs/tok-demo
  NPROC=2 recipes/launch/cpu.sh "vidlm.tokenizer.cli train" recipes/tokenizer/debug.yaml \\
      --deepspeed recipes/deepspeed/zero2.json --run runs/tok-2rank
  vidlm tokenizer export --run runs/tok-demo --out models/tokenizer-demo          (EMA weights)
  vidlm tokenizer eval --model models/tokenizer-demo --data shards/heldout --out report.json
  vidlm tokenizer eval --model models/tokenizer-demo --data ../shared/data/real --size 64x64

A run resumes from RUN/latest when started again with the same --run.
"""


def build_parser() -> argparse.ArgumentParser:
    from vidlm.runtime import add_train_parser

    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="vidlm tokenizer", description=__doc__, epilog=EPILOG, formatter_class=fmt)
    sub = p.add_subparsers(dest="cmd", required=True)

    add_train_parser(sub, "tokenizer", data_help="shard glob or folder (default: the recipe's data.shards, else "
                     "synthesized)", epilog=EPILOG, formatter_class=fmt)

    e = sub.add_parser("eval", help="PSNR, SSIM, codebook usage, speed; side-by-side mp4",
                       epilog=EPILOG, formatter_class=fmt)
    e.add_argument("--model", required=True, help="tokenizer folder (config.json + model.safetensors)")
    e.add_argument("--data", required=True, nargs="+", help="shards (glob/folder of .tar) or a folder of videos")
    e.add_argument("--size", type=parse_size, default=(64, 64), help="WIDTHxHEIGHT (default 64x64)")
    e.add_argument("--frames", type=int, default=17)
    e.add_argument("--fps", type=float, default=8.0)
    e.add_argument("--clips", type=int, default=64, help="clips evaluated (default 64)")
    e.add_argument("--batch-size", type=int, default=4)
    e.add_argument("--out", help="report JSON path")
    e.add_argument("--video", help="side-by-side mp4 (default: next to --out, or none)")
    e.add_argument("--preview", type=int, default=4, help="clips in the side-by-side mp4")
    e.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")

    x = sub.add_parser("export", help="write EMA (or raw) weights of RUN/latest with save_pretrained",
                       epilog=EPILOG, formatter_class=fmt)
    x.add_argument("--run", required=True)
    x.add_argument("--out", required=True)
    x.add_argument("--raw", action="store_true", help="the trained weights, not their EMA")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "train":
        from vidlm.runtime import run_training

        from .config import TrainConfig
        from .train import main as train

        return run_training(TrainConfig, train, args)
    if args.cmd == "export":
        from .train import export

        out = export(args.run, args.out, raw=args.raw)
        print(f"wrote {out}/model.safetensors and config.json ({'raw' if args.raw else 'EMA'} weights)")
        return 0
    from .evaluate import main as eval_main

    return eval_main(args)


if __name__ == "__main__":
    from vidlm.errors import run

    sys.exit(run(main, "vidlm tokenizer"))
