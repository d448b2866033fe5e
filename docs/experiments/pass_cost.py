"""What a speculative pass costs against a plain decode step, on the shipped weights, one thread:
1. `decode` of a block of n positions (two CFG rows, 600 cached tokens), the median of 60, for
   n = 1 .. 17;
2. one 17-frame t2v clip (CFG 3, temperature 1, seed 1) plain and speculative, every `decode`
   call timed: calls, positions a call, seconds in `decode` and in all.
"""
import time

import torch
from vidlm.lm import sample

from vidlm.pipeline import VideoGenerator

torch.set_num_threads(1)
gen = VideoGenerator.from_pretrained("shapes-demo")
lm = gen.lm
cache = sample.allocate_cache(lm, 2, 700)
with torch.inference_mode():
    lm(torch.randint(0, 1000, (2, 600)), torch.zeros(2, 600, 3, dtype=torch.long), cache=cache)
    for n in (1, 2, 3, 4, 6, 8, 12, 17):
        times = []
        for _ in range(60):
            start = cache.length
            t0 = time.perf_counter()
            sample.decode(lm, torch.randint(0, 1000, (2, n)), torch.zeros(2, n, 3, dtype=torch.long), cache,
                          torch.arange(start, start + n))
            times.append(time.perf_counter() - t0)
            cache.truncate(start)
        print(f"block of {n:2d}: {1000 * sorted(times)[30]:.2f} ms")

calls, plain_decode = [], sample.decode


def timed(model, ids, coords, cache, pos):
    t0 = time.perf_counter()
    out = plain_decode(model, ids, coords, cache, pos)
    calls.append((ids.shape[1], time.perf_counter() - t0))
    return out


sample.decode = timed
caption = "a red circle bouncing to the right on a black background"
for speculative in (0, 16, 0, 16):
    calls.clear()
    t0 = time.perf_counter()
    gen.t2v(caption, temperature=1.0, cfg_text=3.0, seed=1, speculative=speculative)
    total = time.perf_counter() - t0
    positions = sum(n for n, _ in calls) / len(calls)
    print(f"speculative={speculative}: {total:.2f} s, {len(calls)} decode calls of {positions:.1f} positions, "
          f"{sum(t for _, t in calls):.2f} s in decode")
