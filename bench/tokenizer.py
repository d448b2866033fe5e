"""Tokenizer speed: encode / decode frames/s, peak memory and achieved GFLOP/s as a fraction of a
matmul peak measured in the same run, for the demo and base presets at 64x64 and 128x128.

    python bench/tokenizer.py                       # demo and base, 64x64 and 128x128, 9 frames
    python bench/tokenizer.py --presets demo --sizes 64 --frames 17 --threads 2

Each (preset, size) runs in a fresh process, so its peak memory (max RSS on CPU, max allocated on
CUDA) is its own; weights are random (speed does not depend on them). FLOPs are counted with
torch.utils.flop_counter on the warm-up call. The figures are noisy on a shared CPU: compare the
ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def matmul_gflops(device: str, n: int = 1024, repeats: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(repeats + 1):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(preset: str, size: int, frames: int, batch: int, repeats: int, device: str) -> dict:
    """One configuration (run inside its own process)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from vidlm.tokenizer.config import TokenizerConfig
    from vidlm.tokenizer.model import VideoTokenizer

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.manual_seed(0)
    model = VideoTokenizer(TokenizerConfig.from_name(preset)).to(device).eval()
    x = torch.rand(batch, 3, frames, size, size, device=device) * 2 - 1
    out = {"preset": preset, "size": f"{size}x{size}", "frames": frames, "batch": batch,
           "params_M": sum(p.numel() for p in model.parameters()) / 1e6}
    with torch.inference_mode():
        with FlopCounterMode(display=False) as enc_flops:
            ids = model.encode(x)
        with FlopCounterMode(display=False) as dec_flops:
            model.decode(ids)
        for name, fn, arg, flops in (("encode", model.encode, x, enc_flops), ("decode", model.decode, ids, dec_flops)):
            best = float("inf")
            for _ in range(repeats):
                _sync(device)
                t = time.perf_counter()
                fn(arg)
                _sync(device)
                best = min(best, time.perf_counter() - t)
            out[f"{name}_frames_per_s"] = batch * frames / best
            out[f"{name}_gflops"] = flops.get_total_flops() / best / 1e9
    out["grid"] = list(ids.shape[1:])
    if device.startswith("cuda"):
        out["peak_mem_MB"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        out["peak_mem_MB"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["demo", "base"])
    p.add_argument("--sizes", nargs="+", type=int, default=[64, 128])
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: PRESET:SIZE, run in this process
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    if args.one:
        preset, size = args.one.split(":")
        print(json.dumps(measure(preset, int(size), args.frames, args.batch, args.repeats, args.device)))
        return 0
    peak = matmul_gflops(args.device)
    print(f"device {args.device}, {args.threads} thread(s); matmul peak {peak:.1f} GFLOP/s (fp32 1024^3)")
    print(f"{'preset':<7}{'size':>9}{'grid':>12}{'enc fr/s':>10}{'dec fr/s':>10}{'enc GF/s':>10}"
          f"{'dec GF/s':>10}{'enc %pk':>8}{'dec %pk':>8}{'peak MB':>9}")
    for preset in args.presets:
        for size in args.sizes:
            cmd = [sys.executable, __file__, "--one", f"{preset}:{size}", "--frames", str(args.frames),
                   "--batch", str(args.batch), "--repeats", str(args.repeats), "--threads", str(args.threads),
                   "--device", args.device]
            r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
            grid = "x".join(map(str, r["grid"]))
            print(f"{preset:<7}{r['size']:>9}{grid:>12}{r['encode_frames_per_s']:>10.1f}{r['decode_frames_per_s']:>10.1f}"
                  f"{r['encode_gflops']:>10.1f}{r['decode_gflops']:>10.1f}{100 * r['encode_gflops'] / peak:>7.0f}%"
                  f"{100 * r['decode_gflops'] / peak:>7.0f}%{r['peak_mem_MB']:>9.0f}")
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
