"""`vidlm data tokenize`: run the video tokenizer once over video shards, write token shards.

For every clip (at its aspect-ratio bucket, centre crop, sampled by time at --fps) it stores
what the LM's tasks need (lm/tasks.py), so LM training never decodes a video:
- the clip's codes (N,h,w);
- stand-alone codes of its last j latent frames for j in --tails (a causal tokenizer's slice of
  the clip's codes is not the codes of the sliced pixels; heads need nothing: they are). A
  tokenizer that codes every frame alone (`frames_alone`) makes every slice a tail: info.json
  says so (`tail_slices`) and the LM draws tails of every length from the codes;
- the codes of its structure view (edit): lm.tasks.structure_view of the clip;
- its caption as text pieces (with --text), at most --max-text pieces;
and, for two-level codes, a copy of the tokenizer (DIR/tokenizer): where fine codes draw follows
from the coarse ones through it, and the LM trains on those coordinates.
Format: lm/tokendata.py. Skipped samples are counted by reason (the loader's counts).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

EXAMPLES = """examples:
  vidlm data tokenize --tokenizer runs/demo/model/tokenizer --text runs/demo/model/text \\
      --shards shards/shapes --out tokens/shapes
  vidlm data tokenize --tokenizer TOK --text TEXT --shards "shards/real-{000000..000009}.tar" \\
      --out tokens/real --frames 17 33 --area 4096 --tails 1 2 3
"""


def tail_frames(j: int, time_factor: int) -> int:
    """Pixel frames of a stand-alone clip of j latent frames: 1 + f (j - 1)."""
    return 1 + time_factor * (j - 1)


@torch.no_grad()
def tokenize_batch(tokenizer, video: torch.Tensor, tails=(1, 2), structure: bool = True):
    """video (B,C,T,H,W) -> codes (B,N,h,w), {j: (B,j,h,w)} for j < N, structure codes or None."""
    from vidlm.lm.tasks import structure_view

    codes = tokenizer.encode(video)
    n = codes.shape[1]
    tf = tokenizer.factors[0]
    tail_codes = {j: tokenizer.encode(video[:, :, video.shape[2] - tail_frames(j, tf):])
                  for j in tails if 0 < j < n}
    struct = tokenizer.encode(structure_view(video)) if structure else None
    return codes, tail_codes, struct


def tokenize_shards(tokenizer, text_tokenizer, shards, out_dir, *, frames=(17,), area: int = 64 * 64,
                    fps: float = 8.0, tails=(1, 2), batch_size: int = 8, max_text: int = 128,
                    per_shard: int = 1000, progress: bool = True, max_clips: int | None = None) -> dict:
    """Write out_dir/tokens-*.tar + vocab.json + info.json; returns info (written, skipped)."""
    from vidlm.data.loader import LoaderConfig, VideoLoader
    from vidlm.lm.tokendata import ShardWriter, TokenClip, TokenStore
    from vidlm.lm.vocab import Vocab
    from vidlm.logging import progress_bar

    tokenizer.eval()
    device = next(tokenizer.parameters()).device
    text_size = text_tokenizer.vocab_size if text_tokenizer is not None else 1
    vocab = Vocab(text_size=int(text_size), code_size=int(tokenizer.codebook_size))
    # batch size 1 in the loader (it drops a bucket's last partial batch); batches are made here
    cfg = LoaderConfig(batch_size=1, frames=tuple(frames), areas=(area,), time_factor=tokenizer.factors[0],
                       factor=tokenizer.factors[1],
                       fps=fps, train=False, require_caption=False, shuffle_buffer=1)
    loader = VideoLoader(shards, cfg)
    out = Path(out_dir)
    writer = ShardWriter(out, per_shard)
    bar = progress_bar(desc="tokenize", unit="clip", disable=not progress, total=max_clips)
    queues: dict = {}

    def flush(items) -> None:
        video = torch.cat([it["video"] for it in items]).to(device)
        codes, tail_codes, struct = tokenize_batch(tokenizer, video, tails)
        for i, it in enumerate(items):
            caption, b = it["caption"][0], it["bucket"]
            text = text_tokenizer.encode(caption)[:max_text] if text_tokenizer is not None and caption else []
            writer.write(TokenClip(
                key=it["key"][0], codes=codes[i].cpu(), text=text,
                tails={j: c[i].cpu() for j, c in tail_codes.items()},
                structure=struct[i].cpu() if struct is not None else None,
                meta={"caption": caption, "bucket": [b.width, b.height, b.frames]}))
        bar.update(len(items))
        bar.set_postfix(skipped=sum(loader.counts.values()), refresh=False)

    try:
        for seen, batch in enumerate(loader):
            if max_clips is not None and seen >= max_clips:
                break
            queue = queues.setdefault(batch["bucket"], [])
            queue.append(batch)
            if len(queue) == batch_size:
                flush(queue)
                queue.clear()
        for queue in queues.values():
            if queue:
                flush(queue)
    finally:
        writer.close()
        bar.close()
    vocab.save(out)
    if tokenizer.cfg.refine_rows:  # the LM reads where the fine codes draw from it (load_places)
        tokenizer.save_pretrained(out / "tokenizer")
    if writer.count:
        TokenStore.open(out)  # the flat copy training reads clip by clip (lm/tokendata.py)
    info = {"written": writer.count, "skipped": dict(loader.counts), "shards": [p.name for p in writer.paths],
            "vocab": vocab.to_dict(), "tails": list(tails), "tail_slices": tokenizer.cfg.frames_alone,
            "frames": list(frames), "area": area, "fps": fps,
            "codebook_size": int(tokenizer.codebook_size), "factors": list(tokenizer.factors)}
    (out / "info.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def load_places(folder):
    """The code_places of the tokenizer a token folder holds (two-level codes: the fine codes'
    places follow from the coarse codes through it), else None; what LM training renders."""
    where = Path(folder) / "tokenizer" if folder else None
    if where is None or not where.is_dir():
        return None
    from vidlm.tokenizer.model import VideoTokenizer

    return VideoTokenizer.from_pretrained(where).code_places


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vidlm data tokenize", description=__doc__, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True, help="video tokenizer folder (vidlm tokenizer export)")
    p.add_argument("--text", "--text-tokenizer", dest="text", default=None,
                   help="caption tokenizer folder (text.model); without it captions are not stored")
    p.add_argument("--shards", required=True, nargs="+", help="video shards: folder, glob or brace pattern")
    p.add_argument("--out", required=True, help="output folder for tokens-*.tar, vocab.json, info.json")
    p.add_argument("--frames", type=int, nargs="+", default=[17], help="bucket frame counts (1+4k)")
    p.add_argument("--area", type=int, default=64 * 64, help="bucket pixel area (default 64*64)")
    p.add_argument("--fps", type=float, default=8.0)
    p.add_argument("--tails", type=int, nargs="+", default=[1, 2],
                   help="latent lengths of the stand-alone tail segments to store (extend-backward, connect, loop)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-text", type=int, default=128, help="caption pieces kept")
    p.add_argument("--max-clips", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from vidlm.data.text import TextTokenizer
    from vidlm.tokenizer.model import VideoTokenizer

    tokenizer = VideoTokenizer.from_pretrained(args.tokenizer).to(args.device)
    text = TextTokenizer.from_dir(args.text) if args.text else None
    info = tokenize_shards(tokenizer, text, args.shards, args.out, frames=args.frames, area=args.area, fps=args.fps,
                           tails=args.tails, batch_size=args.batch_size, max_text=args.max_text,
                           max_clips=args.max_clips)
    skipped = ", ".join(f"{k}: {v}" for k, v in info["skipped"].items()) or "none"
    print(f"wrote {info['written']} clips to {len(info['shards'])} token shard(s) in {args.out}; skipped: {skipped}")
    return 0 if info["written"] else 1


if __name__ == "__main__":
    from vidlm.errors import run

    sys.exit(run(main, "vidlm data tokenize"))
