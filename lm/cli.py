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
  vidlm lm prior --data tokens/shapes --out models/lm       (the frame prior beside the LM: prior.safetensors)

A run resumes from RUN/latest when started again with the same --run (exactly: same losses).
"""


def build_parser() -> argparse.ArgumentParser:
    from vidlm.lm.prior import CONTEXT, MIN_CONTEXT

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
    r = sub.add_parser("prior", help="train the frame prior (vidlm.lm.prior) into an LM folder", epilog=EPILOG,
                       formatter_class=fmt)
    r.add_argument("--data", required=True, help="token folder (the LM's: the same codes)")
    r.add_argument("--out", required=True, help="the LM folder to write prior.safetensors + prior.json into")
    r.add_argument("--run", help="run folder of its checkpoints (default OUT/prior-run; started again, the run "
                   "resumes there; removed when it finishes)")
    r.add_argument("--steps", type=int, default=3000)
    r.add_argument("--batch", type=int, default=64, help="windows of context + 1 frames per step")
    r.add_argument("--lr", type=float, default=1e-3)
    r.add_argument("--width", type=int, default=128, help="channels (a multiple of 16 and of --context)")
    r.add_argument("--layers", type=int, default=6)
    r.add_argument("--context", type=int, default=CONTEXT, help="frames the net reads before the one it predicts")
    r.add_argument("--min-context", type=int, default=MIN_CONTEXT, help="the fewest whole frames it predicts from (the "
                   "farther ones read as blank: the first generated frames of t2v, i2v and loops get a prior too)")
    r.add_argument("--weight", type=float, default=2.0, help="the prior's default weight in sampling")
    r.add_argument("--val-clips", type=int, default=64, help="the token folder's last clips, held out")
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--threads", type=int, default=None)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "export":
        from vidlm.lm.train import export

        print(f"exported {export(args.run, args.out, step=args.step)}")
        return 0
    if args.cmd == "prior":
        import torch
        from vidlm.lm.prior import train_prior

        if args.threads:
            torch.set_num_threads(args.threads)
        last = train_prior(args.data, args.out, steps=args.steps, batch=args.batch, lr=args.lr, width=args.width,
                           layers=args.layers, weight=args.weight, context=args.context,
                           min_context=args.min_context, val_clips=args.val_clips, seed=args.seed,
                           run_dir=args.run)
        print(f"frame prior -> {args.out} ({last})")
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
