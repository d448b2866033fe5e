"""`vidlm tokenizer eval`: reconstruction quality and speed of a trained tokenizer.

PSNR and SSIM (mean over all frames), codebook usage (fraction of the codebook used on the set)
and perplexity, encode and decode frames/s, and a side-by-side mp4 (original | reconstruction,
one row per clip) of the first clips. Clips come from webdataset shards (a glob, a folder of
.tar) or a folder of video files, centre-cropped and resized to --size, --frames long.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .metrics import code_stats, psnr_per_frame, ssim_per_frame
from .model import VideoTokenizer


def _is_shards(spec: str) -> bool:
    p = Path(spec)
    return spec.endswith(".tar") or "{" in spec or (p.is_dir() and any(p.glob("*.tar")))


def iter_clips(data: list[str], size: tuple[int, int], frames: int, fps: float, limit: int):
    """Yield up to `limit` clips (C,T,H,W) float in [-1,1] of exactly size (W,H) and `frames`."""
    from vidlm.data.buckets import Bucket, resize_crop
    from vidlm.data.loader import LoaderConfig, VideoLoader
    from vidlm.data.shards import find_videos
    from vidlm.data.video import VideoDecodeError, read_clip

    bucket, n = Bucket(size[0], size[1], frames), 0
    shards = [d for d in data if _is_shards(d)]
    videos = find_videos([d for d in data if not _is_shards(d)])
    if not shards and not videos:
        raise FileNotFoundError(f"no shards or video files found at {data}")
    if shards:
        cfg = LoaderConfig(batch_size=1, areas=(size[0] * size[1],), frames=(frames,), factor=1, time_factor=1, fps=fps,
                           train=False, shuffle_buffer=1, require_caption=False)
        for batch in VideoLoader(shards, cfg, rank=0, world_size=1):
            if n >= limit:
                return
            n += 1
            yield resize_crop(batch["video"][0], bucket, None)
    for path in videos:
        if n >= limit:
            return
        try:
            clip = read_clip(path, frames, fps, short="pad")
        except VideoDecodeError as e:
            print(f"skipped {path}: {e}")
            continue
        n += 1
        yield resize_crop(clip, bucket, None)


@torch.inference_mode()
def evaluate(model: VideoTokenizer, clips, *, batch_size: int = 4, preview: int = 4) -> tuple[dict, list]:
    """Metrics over `clips` (iterable of (C,T,H,W)); returns (report, preview pairs)."""
    model.eval()
    device = model.last_layer.device
    hist = torch.zeros(model.codebook_size, dtype=torch.long)
    psnrs, ssims, pairs = [], [], []
    t_enc = t_dec = 0.0
    n_frames = n_clips = 0
    grid = None

    def run(batch):
        nonlocal t_enc, t_dec, n_frames, n_clips, grid
        x = torch.stack(batch).to(device)
        t0 = time.perf_counter()
        ids = model.encode(x)
        t1 = time.perf_counter()
        rec = model.decode(ids).clamp(-1, 1)
        t2 = time.perf_counter()
        t_enc, t_dec = t_enc + t1 - t0, t_dec + t2 - t1
        n_frames, n_clips, grid = n_frames + x.shape[0] * x.shape[2], n_clips + x.shape[0], tuple(ids.shape[1:])
        hist.add_(torch.bincount(ids.flatten().cpu(), minlength=model.codebook_size))
        x, rec = x.float().cpu(), rec.float().cpu()
        psnrs.append(psnr_per_frame(rec, x))
        ssims.append(ssim_per_frame(rec, x))
        for a, b in zip(x, rec):
            if len(pairs) < preview:
                pairs.append((a, b))

    batch = []
    for clip in clips:
        batch.append(clip)
        if len(batch) == batch_size:
            run(batch)
            batch = []
    if batch:
        run(batch)
    if not n_clips:
        raise ValueError("no clips to evaluate")
    stats = code_stats(hist)
    report = {
        "clips": n_clips, "frames": n_frames, "latent_grid": list(grid), "codebook_size": model.codebook_size,
        "psnr": float(torch.cat(psnrs).mean()), "ssim": float(torch.cat(ssims).mean()),
        "psnr_worst_clip_frame": float(torch.cat(psnrs).min()),
        "codebook_usage": stats["usage"], "perplexity": stats["perplexity"],
        "encode_frames_per_s": n_frames / max(t_enc, 1e-9), "decode_frames_per_s": n_frames / max(t_dec, 1e-9),
    }
    return report, pairs


def write_side_by_side(path, pairs, fps: float) -> Path:
    """One row per clip: original | reconstruction."""
    from vidlm.data.encode import write_video

    rows = [torch.cat([a, b], dim=-1) for a, b in pairs]  # (C,T,H,2W)
    return write_video(path, torch.cat(rows, dim=-2), fps)


def main(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    model = VideoTokenizer.from_pretrained(args.model)
    model.latent_shape(args.frames, args.size[1], args.size[0])  # a clear error before any decoding
    clips = iter_clips(args.data, args.size, args.frames, args.fps, args.clips)
    report, pairs = evaluate(model, clips, batch_size=args.batch_size, preview=args.preview)
    report = {"model": str(args.model), "data": args.data, "size": list(args.size), **report}
    video = args.video or (str(Path(args.out).with_suffix(".mp4")) if args.out else None)
    if video and pairs:
        report["side_by_side"] = str(write_side_by_side(video, pairs, args.fps))
    for k, v in report.items():
        print(f"{k:>24}: {round(v, 4) if isinstance(v, float) else v}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0
