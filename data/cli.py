"""`vidlm data`: build, inspect and tokenize data sets."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vidlm.config import parse_size

EPILOG = """examples:
  vidlm data synth --out shards/shapes --num 2000 --seed 0
  vidlm data synth --out shards/shapes-wide --num 500 --size 96x64
  vidlm data shards --videos ../shared/data/real --captions ../shared/data/real/captions.jsonl \\
      --out shards/real --workers 2 --max-side 128
  vidlm data preview --shards shards/shapes --out preview.png --batches 2
  vidlm data train-text-tokenizer --shards shards/shapes --vocab-size 512 --out runs/text
  vidlm data tokenize --help        (token shards; vidlm.pretokenize)
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vidlm data", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("synth", help="render shapes-world clips into mp4 shards", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--out", required=True, help="output directory for shapes-%%06d.tar")
    s.add_argument("--num", type=int, required=True, help="number of clips")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=parse_size, default=(64, 64), help="WIDTHxHEIGHT (default 64x64)")
    s.add_argument("--frames", type=int, default=17)
    s.add_argument("--fps", type=float, default=8.0)
    s.add_argument("--shard-size", type=int, default=500)

    s = sub.add_parser("shards", help="pack video files (+ captions) into webdataset shards",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--videos", required=True, nargs="+", help="directories, files or globs")
    s.add_argument("--captions", help='JSONL with {"file": NAME, "caption": TEXT} per line')
    s.add_argument("--out", required=True)
    s.add_argument("--shard-size", type=int, default=100)
    s.add_argument("--workers", type=int, default=1, help="parallel probing processes")
    s.add_argument("--prefix", default="clips")
    s.add_argument("--max-side", type=int, help="store videos bigger than this re-encoded with this "
                   "longer side (mp4), e.g. 128 for training at 64 px: decoding is then ~10x cheaper")

    s = sub.add_parser("preview", help="contact sheet of decoded loader batches (png/gif)",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--shards", required=True, nargs="+")
    s.add_argument("--out", required=True, help=".png (rows of frame strips) or .gif")
    s.add_argument("--batches", type=int, default=1)
    s.add_argument("--batch-size", type=int, default=4)
    s.add_argument("--frames", type=int, default=17)
    s.add_argument("--fps", type=float, default=8.0)
    s.add_argument("--area", type=int, default=64 * 64)
    s.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("train-text-tokenizer", help="train the sentencepiece caption tokenizer",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--shards", required=True, nargs="+")
    s.add_argument("--vocab-size", type=int, default=512)
    s.add_argument("--out", required=True)

    sub.add_parser("tokenize", help="write token shards (see `vidlm data tokenize --help`)", add_help=False)
    return p


def _preview(args) -> int:
    import torch
    from einops import rearrange

    from .encode import write_video
    from .loader import LoaderConfig, VideoLoader

    cfg = LoaderConfig(batch_size=args.batch_size, frames=(args.frames,), fps=args.fps, areas=(args.area,),
                       seed=args.seed, train=False, require_caption=False, shuffle_buffer=1)
    loader = VideoLoader(args.shards, cfg)
    rows = []
    for i, batch in enumerate(loader):
        print(f"batch {i}: {tuple(batch['video'].shape)} bucket {batch['bucket'].name}")
        for key, caption in zip(batch["key"], batch["caption"]):
            print(f"  {key}: {caption}")
        rows.append(batch["video"])
        if len(rows) >= args.batches:
            break
    if not rows:
        print(f"no batches (skipped: {dict(loader.counts)})", file=sys.stderr)
        return 1
    shapes = {tuple(r.shape[2:]) for r in rows}
    rows = [r for r in rows if tuple(r.shape[2:]) == tuple(rows[0].shape[2:])]
    clips = torch.cat(rows)  # (N, C, T, H, W)
    out = Path(args.out)
    if out.suffix.lower() == ".png":  # one row per clip, frames left to right
        sheet = rearrange(clips, "n c t h w -> c 1 (n h) (t w)")
    else:  # an animated grid, clips side by side
        sheet = rearrange(clips, "n c t h w -> c t h (n w)")
    write_video(out, sheet, args.fps)
    note = "" if len(shapes) == 1 else " (first bucket only)"
    print(f"wrote {out}{note}; skipped so far: {dict(loader.counts)}")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "tokenize":  # it needs the video tokenizer: a layer above data
        raise SystemExit("vidlm data tokenize: run it as `vidlm data tokenize ...` (or `python -m vidlm.pretokenize`)")
    args = build_parser().parse_args(argv)
    if args.cmd == "synth":
        from .synthetic import synth_shards

        w, h = args.size
        paths = synth_shards(args.out, args.num, args.seed, shard_size=args.shard_size, progress=True,
                             width=w, height=h, frames=args.frames, fps=args.fps)
        print(f"wrote {args.num} clips to {len(paths)} shard(s) in {args.out}")
    elif args.cmd == "shards":
        from .shards import load_captions, write_shards

        captions = load_captions(args.captions) if args.captions else None
        report = write_shards(args.videos, args.out, captions=captions, shard_size=args.shard_size,
                              workers=args.workers, prefix=args.prefix, max_side=args.max_side)
        print(report.summary())
    elif args.cmd == "preview":
        return _preview(args)
    elif args.cmd == "train-text-tokenizer":
        from .text import captions_from_shards, train_text_tokenizer

        tok = train_text_tokenizer(captions_from_shards(args.shards), args.vocab_size, args.out)
        print(f"text tokenizer with {tok.vocab_size} pieces -> {Path(args.out) / 'text.model'}")
    return 0


if __name__ == "__main__":
    from vidlm.errors import run

    sys.exit(run(main, "vidlm data"))
