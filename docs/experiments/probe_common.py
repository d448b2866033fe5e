"""What the probe scripts share: their common arguments, the training clips (the clips of
`vidlm data synth --seed 0`, rendered once and cached as OUT/clipsN.npy), the weights that
favour an object's pixels, and the held-out frames the image probes score."""
import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from vidlm.data.synthetic import clip_seed, render_clip
from vidlm.tokenizer.metrics import psnr_per_frame

from vidlm.evaluate import heldout_clips, observe


def parse(p: argparse.ArgumentParser, batch: int) -> argparse.Namespace:
    """Add --batch, --clips, --threads, --out; parse; one seed, `threads` threads, OUT made."""
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--clips", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("exp"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    a.out.mkdir(parents=True, exist_ok=True)
    return a


def training_clips(out: Path, num: int, mp4: bool = False) -> torch.Tensor:
    """(num, T, H, W, 3) uint8; mp4: through the shards' H.264 round trip."""
    cache = out / f"clips{num}{'_mp4' if mp4 else ''}.npy"
    if not cache.exists():
        vids = []
        for i in range(num):
            v, _, _ = render_clip(clip_seed(0, i))
            if mp4:
                import io

                import av
                from vidlm.data.encode import encode_mp4
                with av.open(io.BytesIO(encode_mp4(v, 8.0))) as c:
                    v = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
            vids.append(v)
        tmp = Path(f"{cache}.{os.getpid()}.tmp.npy")  # probes started together each write their own
        np.save(tmp, np.stack(vids))
        tmp.replace(cache)
    return torch.from_numpy(np.load(cache))


def report(row: dict, a: argparse.Namespace, file: str) -> None:
    """Print one result row (with the run's arguments) and append it to OUT/file as a JSON line."""
    row = {**row, "args": {k: str(v) for k, v in vars(a).items()}}
    print(json.dumps(row), flush=True)
    with open(a.out / file, "a") as f:
        f.write(json.dumps(row) + "\n")


def median_distance(x: torch.Tensor) -> torch.Tensor:
    """x (B,C,T,H,W) -> (B,1,T,H,W): each pixel's largest channel difference from the clip's
    median colour (its background, where one object is drawn on a plain one)."""
    return (x - x.flatten(2).median(-1).values[..., None, None, None]).abs().amax(1, keepdim=True)


def object_weights(x: torch.Tensor, obj: float, edge: float) -> torch.Tensor:
    """x (B,C,T,H,W) in [-1,1] -> per-pixel loss weights (B,1,T,H,W): 1, plus `obj` on pixels that
    differ from the clip's median colour (dilated by one pixel), plus `edge` on the object's
    boundary (dilated minus eroded)."""
    mask = (median_distance(x) > 0.05).float()
    grown = F.max_pool3d(mask, (1, 3, 3), 1, (0, 1, 1))
    return 1 + obj * grown + edge * (grown + F.max_pool3d(-mask, (1, 3, 3), 1, (0, 1, 1)))


def coarse_drawing(model, ids: torch.Tensor) -> torch.Tensor:
    """What the coarse codes of two-level ids (B,t,h+r,w) draw alone, fine codes left out:
    video (B,C,T,H,W), as the tokenizer's scorer sees it (docs/experiments.md, thirteenth round)."""
    q = model.quantizer
    coarse, _ = q._coarse_cells(ids.flatten(0, 1), model.last_layer.dtype)
    return model.decoder(q.coarse_latent(coarse, ids.shape[1]))


def scored_frames(clips: int = 48) -> tuple[torch.Tensor, list[dict]]:
    """Frames 0, 8 and 16 of `clips` held-out clips of `vidlm eval world` as one-frame videos
    (3 * clips, C, 1, H, W), and each frame's world."""
    held = heldout_clips(clips, 0)
    xs = torch.cat([v[None, :, k : k + 1] for v, _, _ in held for k in (0, 8, 16)])
    return xs, [w for _, _, w in held for _ in (0, 8, 16)]


def psnr_and_shape(recs: torch.Tensor, xs: torch.Tensor, worlds: list[dict]) -> tuple[float, float]:
    """Mean PSNR of recs against xs (the trainer's `psnr_per_frame`: an exact frame reads 100 dB)
    and the share of recs whose object the detector reads as its world's shape."""
    read = []
    for r, w in zip(recs.clamp(-1, 1), worlds):
        seen = observe(r, w["background"])[0]
        read.append(bool(seen) and seen["shape"] == w["objects"][0]["shape"])
    return float(psnr_per_frame(recs, xs).mean()), float(np.mean(read))
