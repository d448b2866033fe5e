"""Which of an object's pixels does a reconstruction lose? On the 32 held-out clips of `vidlm eval
world`, the detector's alpha (how far a pixel is from the background towards the object's colour)
of every frame, rendered and reconstructed. The object's pixels (alpha >= 0.5, what the detector
measures the fill of) on its boundary are grouped by how many of their 8 neighbours are in the
object too (3: a square's corner; 5: the middle of a straight edge; 1-2: a triangle's tips), and
for each group: how many there are, the share the reconstruction loses (alpha < 0.5), and the mean
alpha rendered and reconstructed. Inner pixels are one row. docs/experiments.md, twentieth round.

    python docs/experiments/edge_pixels.py --tokenizer RUN/model/tokenizer
    python docs/experiments/edge_pixels.py --h264       # the shards' H.264 4:4:4 round trip instead
"""
import argparse
from collections import defaultdict

import numpy as np
import torch
from vidlm.data.encode import encode_mp4
from vidlm.data.synthetic import BACKGROUNDS, COLOURS
from vidlm.data.video import read_clip
from vidlm.tokenizer.model import VideoTokenizer

from vidlm.evaluate import heldout_clips, to_uint8

p = argparse.ArgumentParser()
src = p.add_mutually_exclusive_group(required=True)
src.add_argument("--tokenizer", help="an exported tokenizer folder")
src.add_argument("--h264", action="store_true", help="encode as `vidlm data synth` does, decode as the loader does")
p.add_argument("--clips", type=int, default=32)
a = p.parse_args()
torch.set_num_threads(1)
model = VideoTokenizer.from_pretrained(a.tokenizer).eval() if a.tokenizer else None


def reconstruct(frames: np.ndarray, video: torch.Tensor) -> np.ndarray:
    """(T,H,W,3) uint8 of what the tokenizer, or the H.264 round trip, gives back."""
    if model is None:
        data = encode_mp4(frames, 8.0, chroma="444")
        return read_clip(data, len(frames), dtype="uint8", name="clip.mp4").permute(1, 2, 3, 0).numpy()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        return to_uint8(model.decode(model.encode(video[None]))[0].float())


def alpha(frame: np.ndarray, colour, background) -> np.ndarray:
    c = np.array(colour, float) - background
    return np.clip((frame.astype(float) - background) @ c / (c**2).sum(), 0.0, 1.0)


def shifted(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    # wraps at the frame's border: the far side is background there, as zero padding would be
    return np.roll(np.roll(mask, dy, 0), dx, 1)


groups = defaultdict(lambda: defaultdict(lambda: [0, 0, 0.0, 0.0]))  # shape -> group -> n, lost, sum alphas
for video, _, world in heldout_clips(a.clips, 0):
    obj, bg = world["objects"][0], np.array(BACKGROUNDS[world["background"]], float)
    frames = to_uint8(video)
    for f, r in zip(frames, reconstruct(frames, video)):
        at, ar = alpha(f, COLOURS[obj["colour"]], bg), alpha(r, COLOURS[obj["colour"]], bg)
        inside = at >= 0.5
        near = sum(shifted(inside, dy, dx).astype(int) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) - inside
        for n in range(9):
            sel = inside & (near == n)
            g = groups[obj["shape"]]["inner" if n == 8 else f"{n} of 8"]
            g[0] += int(sel.sum())
            g[1] += int((sel & (ar < 0.5)).sum())
            g[2] += float(at[sel].sum())
            g[3] += float(ar[sel].sum())
print("shape     pixels             count   lost   alpha rendered -> reconstructed")
for shape, gs in sorted(groups.items()):
    for name, (n, lost, st, sr) in sorted(gs.items()):
        if n:
            print(f"{shape:9} {name:18} {n:6d}  {lost / n:5.2f}   {st / n:.2f} -> {sr / n:.2f}")
