"""Benchmark: LM token data held in RAM (the clips read from the shards as Python objects, as
training did before) against the flat TokenStore read clip by clip (what training reads now).

    .venv/bin/python bench/tokens.py [--clips 1000 10000 100000] [--work DIR]

Writes synthetic token shards (per clip: 9x8x8 codes, tails of 1 and 2 latent frames, structure
codes, 16 caption pieces: a 17-frame 64x64 demo clip), then, each in a fresh process: start-up
(from nothing to the first training sequence), resident memory after 1000 random clips were
read, and the one-off build of the store. Prints one row per size and the ratios.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROBE = r"""
import json, re, sys, time, torch
t0 = time.perf_counter()
from vidlm.lm.tokendata import TokenStore, read_clips
folder, kind = sys.argv[1], sys.argv[2]
if kind == "store":
    clips = TokenStore.open(folder)
else:
    clips = sorted(read_clips(folder), key=lambda c: c.key)
first = clips[0].codes.sum()
start = time.perf_counter() - t0
g = torch.Generator().manual_seed(0)
for i in torch.randint(0, len(clips), (1000,), generator=g).tolist():
    clips[i].codes.sum()
rss = int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1)) / 1024
print(json.dumps({"start_s": start, "peak_mib": rss, "clips": len(clips)}))
"""


def write_shards(folder: Path, n: int) -> float:
    import torch
    from vidlm.lm.tokendata import ShardWriter, TokenClip

    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(n)
    writer = ShardWriter(folder, per_shard=1000)
    for i in range(n):
        codes = torch.randint(0, 1000, (9, 8, 8), generator=g)
        writer.write(TokenClip(key=f"clip{i:07d}", codes=codes, text=list(range(16)),
                               tails={1: codes[-1:], 2: codes[-2:]}, structure=codes, meta={"caption": "x"}))
    writer.close()
    return time.perf_counter() - t0


def probe(folder: Path, kind: str) -> dict:
    r = subprocess.run([sys.executable, "-c", PROBE, str(folder), kind], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--work", type=Path, default=None, help="where to write the shards (default: a temp dir)")
    args = p.parse_args(argv)
    from vidlm.lm.tokendata import TokenStore

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-tokens-"))
    print(f"{'clips':>7} | {'in RAM: start s':>15} {'peak MiB':>9} | {'store: start s':>14} {'peak MiB':>9} "
          f"{'build s':>8} | start x / memory x")
    for n in args.clips:
        folder = work / f"tokens-{n}"
        if not (folder / "flat" / "sources.json").exists():
            write_shards(folder, n)
            t0 = time.perf_counter()
            TokenStore.open(folder)
            build = time.perf_counter() - t0
        else:
            build = float("nan")
        ram, store = probe(folder, "ram"), probe(folder, "store")
        print(f"{n:>7} | {ram['start_s']:>15.2f} {ram['peak_mib']:>9.0f} | {store['start_s']:>14.2f} "
              f"{store['peak_mib']:>9.0f} {build:>8.1f} | x{ram['start_s'] / store['start_s']:.1f} / "
              f"x{ram['peak_mib'] / store['peak_mib']:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
