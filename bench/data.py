"""Loader throughput, decord vs PyAV, in one run: read from shard + decode + resize + batch.

    python bench/data.py                      # shapes-world shards (made in a temp dir)
    python bench/data.py --real ../shared/data/real   # also the real mp4 clips decord reads

Both loaders do the same work (same shards, seed, buckets, batches); only the decoding backend
differs. Prints clips/s for each and the decord/PyAV ratio. One thread, num_workers=0.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def clips_per_s(shards, backend: str, *, batch_size: int, batches: int, area: int, frames: int,
                fps: float, repeats: int) -> float:
    from vidlm.data.loader import LoaderConfig, VideoLoader

    cfg = LoaderConfig(batch_size=batch_size, epoch_batches=batches, areas=(area,), frames=(frames,),
                       fps=fps, backend=backend, shuffle_buffer=16, require_caption=False)
    best = 0.0
    for _ in range(repeats):
        loader = VideoLoader(shards, cfg)
        start, n = time.perf_counter(), 0
        for batch in loader:
            n += batch["video"].shape[0]
        best = max(best, n / (time.perf_counter() - start))
        assert not loader.counts, f"{backend}: skipped {dict(loader.counts)}"
    return best


def compare(name: str, shards, **kw):
    rates = {b: clips_per_s(shards, b, **kw) for b in ("decord", "pyav")}
    print(f"{name:<28} decord {rates['decord']:8.1f} clips/s   pyav {rates['pyav']:8.1f} clips/s   "
          f"decord/pyav {rates['decord'] / rates['pyav']:.2f}x")
    return rates


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench/data.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=64, help="shapes-world clips to synthesize")
    p.add_argument("--batches", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2, help="best of N runs")
    p.add_argument("--real", help="directory of real clips (its mp4 files are benchmarked too)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    from vidlm.data.shards import write_shards
    from vidlm.data.synthetic import synth_shards

    with tempfile.TemporaryDirectory() as tmp:
        shapes = synth_shards(Path(tmp) / "shapes", args.clips, seed=0, shard_size=16)
        compare("shapes 64x64x17 @8fps", shapes, batch_size=args.batch_size, batches=args.batches,
                area=64 * 64, frames=17, fps=8.0, repeats=args.repeats)
        if args.real and Path(args.real).is_dir():
            mp4s = sorted(Path(args.real).glob("*.mp4"))
            report = write_shards(mp4s, Path(tmp) / "real", shard_size=4, progress=False)
            compare(f"real mp4 x{report.written} -> 128x128x17", report.shards, batch_size=1,
                    batches=2 * report.written, area=128 * 128, frames=17, fps=8.0, repeats=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
