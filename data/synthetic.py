"""The shapes world: the embedded default data set and a world-simulation test bed.

Each clip: a solid background, 1 or 2 objects (circle, square, triangle) of distinct colours
moving with constant velocity and elastic wall bounces ("bouncing") or under gravity with a
bouncing floor ("falling"); with probability 0.2 a static gray bar occludes part of the path
(objects pass behind it). Rendering is anti-aliased (coverage from a signed distance).

Coordinates: x to the right, y down, in pixels; pixel (row i, column j) has its centre at
(x=j, y=i). Ground truth per clip (meta["world"]): background, bar, and per object shape,
colour, size, motion, direction, the centre (x, y) of every frame (the shape's centroid) and
the visible fraction of every frame (1.0 = not occluded).

`detect_objects(frame)` reads objects back from pixels (nearest-palette colour, coverage-weighted
centre, shape from the bounding-box fill ratio); the world evaluation uses it on generated clips.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

COLOURS = {
    "red": (255, 0, 0), "green": (0, 200, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
    "magenta": (255, 0, 255), "cyan": (0, 255, 255), "orange": (255, 140, 0),
}
BACKGROUNDS = {"black": (0, 0, 0), "white": (255, 255, 255), "gray": (150, 150, 150), "navy": (0, 0, 128)}
BAR = (80, 80, 80)
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("bouncing", "falling")
_SQ3 = math.sqrt(3.0)
_SUBSTEPS = 16


def _extents(shape: str, size: float) -> tuple[float, float, float, float]:
    """Distances from the centre to the left, right, top and bottom of the shape."""
    if shape == "triangle":  # equilateral, side `size`, pointing up; centre = centroid
        h = size * _SQ3 / 2
        return size / 2, size / 2, 2 * h / 3, h / 3
    return (size / 2,) * 4


def _sdf(shape: str, size: float, cx: float, cy: float, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    dx, dy = X - cx, Y - cy
    if shape == "circle":
        return np.hypot(dx, dy) - size / 2
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - size / 2
    inradius = size * _SQ3 / 6
    return np.maximum.reduce([dy, -_SQ3 / 2 * dx - dy / 2, _SQ3 / 2 * dx - dy / 2]) - inradius


def coverage(shape: str, size: float, cx: float, cy: float, width: int, height: int) -> np.ndarray:
    """(H, W) float in [0, 1]: anti-aliased coverage of the shape centred at (cx, cy)."""
    Y, X = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.clip(0.5 - _sdf(shape, size, cx, cy, X, Y), 0.0, 1.0)


def _direction(vx: float, vy: float) -> str:
    names = ["to the right", "to the lower right", "downward", "to the lower left",
             "to the left", "to the upper left", "upward", "to the upper right"]
    return names[round(math.atan2(vy, vx) / (math.pi / 4)) % 8]


def _simulate(rng, shape, size, motion, width, height, frames, fps) -> list[list[float]]:
    """Centres at t = k / fps, integrated with small steps; walls at -0.5 and W - 0.5."""
    left, right, top, bottom = _extents(shape, size)
    lo_x, hi_x, lo_y, hi_y = -0.5 + left, width - 0.5 - right, -0.5 + top, height - 0.5 - bottom
    x, y = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
    side = min(width, height)
    if motion == "bouncing":
        speed, angle = rng.uniform(0.3, 0.7) * side, rng.uniform(0, 2 * math.pi)
        vx, vy, g, restitution = speed * math.cos(angle), speed * math.sin(angle), 0.0, 1.0
    else:
        y = rng.uniform(lo_y, lo_y + 0.4 * (hi_y - lo_y))
        vx, vy = rng.uniform(-0.3, 0.3) * side, rng.uniform(-0.2, 0.1) * side
        g, restitution = rng.uniform(1.5, 3.0) * height, 0.85
    dt, out = 1.0 / (fps * _SUBSTEPS), []
    for k in range(frames):
        out.append([float(x), float(y)])
        for _ in range(_SUBSTEPS):
            vy += g * dt
            x, y = x + vx * dt, y + vy * dt
            if x < lo_x or x > hi_x:
                x, vx = (2 * lo_x - x if x < lo_x else 2 * hi_x - x), -vx
            if y < lo_y:
                y, vy = 2 * lo_y - y, -vy
            elif y > hi_y:
                y, vy = 2 * hi_y - y, -vy * restitution
    return out


def _phrase(obj: dict, alone: bool) -> str:
    what = f"a {obj['colour']} {obj['shape']}"
    if obj["motion"] == "bouncing":
        return f"{what} bouncing {obj['direction']}"
    return f"{what} falls and bounces" if alone else f"{what} falling and bouncing"


def render_clip(seed: int, *, width: int = 64, height: int = 64, frames: int = 17,
                fps: float = 8.0) -> tuple[np.ndarray, str, dict]:
    """One clip of the shapes world -> (frames (T, H, W, 3) uint8, caption, world ground truth)."""
    rng = np.random.default_rng(seed)
    bg_name = str(rng.choice(list(BACKGROUNDS)))
    n_obj = int(rng.integers(1, 3))
    colours = rng.choice(list(COLOURS), size=n_obj, replace=False)
    side = min(width, height)
    objects = []
    for colour in colours:
        shape, motion = str(rng.choice(SHAPES)), str(rng.choice(MOTIONS))
        size = float(rng.uniform(0.10, 0.20) * side)
        # one more centre than frames: the caption's direction reads the first move, which a
        # one-frame clip (an image) also has; the simulation draws nothing per step
        centres = _simulate(rng, shape, size, motion, width, height, frames + 1, fps)
        (x0, y0), (x1, y1) = centres[0], centres[1]
        centres = centres[:frames]
        objects.append({"shape": shape, "colour": str(colour), "size": size, "motion": motion,
                        "direction": _direction(x1 - x0, y1 - y0) if motion == "bouncing" else "down",
                        "centres": centres})
    bar = None
    if rng.random() < 0.2:
        vertical = bool(rng.random() < 0.5)
        length = width if vertical else height
        thick = max(2, round(0.15 * side))
        start = int(rng.integers(round(0.2 * length), round(0.8 * length) - thick + 1))
        bar = {"orientation": "vertical" if vertical else "horizontal", "start": start, "stop": start + thick}
    bar_mask = np.zeros((height, width))
    if bar is not None:
        if bar["orientation"] == "vertical":
            bar_mask[:, bar["start"]:bar["stop"]] = 1.0
        else:
            bar_mask[bar["start"]:bar["stop"], :] = 1.0

    video = np.empty((frames, height, width, 3), np.uint8)
    bg = np.array(BACKGROUNDS[bg_name], np.float64)
    for obj in objects:
        obj["visible"] = []
    for k in range(frames):
        img = np.broadcast_to(bg, (height, width, 3)).copy()
        covs = [coverage(o["shape"], o["size"], *o["centres"][k], width, height) for o in objects]
        for o, a in zip(objects, covs):
            img = img * (1 - a[..., None]) + np.array(COLOURS[o["colour"]], np.float64) * a[..., None]
        img = img * (1 - bar_mask[..., None]) + np.array(BAR, np.float64) * bar_mask[..., None]
        video[k] = np.clip(np.round(img), 0, 255).astype(np.uint8)
        for i, (o, a) in enumerate(zip(objects, covs)):
            shown = a * (1 - bar_mask)
            for later in covs[i + 1:]:
                shown = shown * (1 - later)
            o["visible"].append(round(float(shown.sum() / max(a.sum(), 1e-9)), 4))

    caption = " and ".join(_phrase(o, n_obj == 1) for o in objects) + f" on a {bg_name} background"
    if bar is not None:
        caption += ", partly hidden by a gray bar"
    world = {"seed": int(seed), "width": width, "height": height, "frames": frames, "fps": fps,
             "background": bg_name, "bar": bar, "objects": objects}
    return video, caption, world


# ----------------------------------------------------------------------------- detection
def detect_background(frame: np.ndarray) -> str:
    """Name of the background: the palette background nearest to the frame's border median."""
    border = np.concatenate([frame[0], frame[-1], frame[:, 0], frame[:, -1]]).astype(np.float64)
    med = np.median(border, axis=0)
    return min(BACKGROUNDS, key=lambda n: float(np.sum((np.array(BACKGROUNDS[n]) - med) ** 2)))


def classify_shape(fill_ratio: float) -> str:
    """Bounding-box fill ratio -> shape: square ~1.0, circle ~pi/4, triangle ~0.5."""
    if fill_ratio >= 0.88:
        return "square"
    return "circle" if fill_ratio >= 0.66 else "triangle"


def detect_objects(frame: np.ndarray, *, background: str | None = None, min_pixels: int = 3) -> list[dict]:
    """Objects in one frame (H, W, 3) uint8, by colour. Each pixel is explained as a blend
    alpha * colour + (1 - alpha) * background for the palette colour (objects and the bar) whose
    blend line passes nearest to it; per object colour: centre = alpha-weighted centroid, bbox
    and fill ratio of its pixels with alpha >= 0.5, shape from the fill ratio. Sorted by colour."""
    bg_name = background or detect_background(frame)
    bg = np.array(BACKGROUNDS[bg_name], np.float64)
    cols = np.array(list(COLOURS.values()) + [BAR], np.float64) - bg  # (K, 3)
    p = frame.reshape(-1, 3).astype(np.float64) - bg  # (N, 3)
    alpha = np.clip(p @ cols.T / np.maximum((cols**2).sum(1), 1e-9), 0.0, 1.0)  # (N, K)
    resid = ((p[:, None, :] - alpha[..., None] * cols[None]) ** 2).sum(-1)
    label = resid.argmin(1)
    label[np.take_along_axis(alpha, label[:, None], 1)[:, 0] < 0.3] = -1  # background
    w = frame.shape[1]
    out = []
    for ci, name in enumerate(COLOURS):
        sel = label == ci
        if sel.sum() < min_pixels:
            continue
        ys, xs = np.divmod(np.nonzero(sel)[0], w)
        a = alpha[sel, ci]
        core = a >= 0.5
        if core.sum() < 1:
            continue
        bw = xs[core].max() - xs[core].min() + 1
        bh = ys[core].max() - ys[core].min() + 1
        fill = core.sum() / float(bw * bh)
        out.append({"colour": name, "centre": (float((a * xs).sum() / a.sum()), float((a * ys).sum() / a.sum())),
                    "pixels": int(core.sum()), "bbox": (int(xs[core].min()), int(ys[core].min()), int(bw), int(bh)),
                    "fill": float(fill), "shape": classify_shape(fill)})
    return out


# ----------------------------------------------------------------------------- shards
def clip_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint32)[0])


def synth_sample(seed: int, index: int, **render_kwargs) -> dict:
    """One webdataset sample {__key__, mp4, txt, json} of the shapes world (written as a real
    mp4 through the project's one writer)."""
    from .encode import encode_mp4
    from .video import probe

    cs = clip_seed(seed, index)
    video, caption, world = render_clip(cs, **render_kwargs)
    data = encode_mp4(video, world["fps"], chroma="444")  # 4:2:0 would round the objects' corners
    info = probe(data, name="clip.mp4")
    meta = dict(info.to_dict(), source=f"shapes-world seed={seed} index={index}", world=world)
    return {"__key__": f"shapes-{index:07d}", "mp4": data, "txt": caption.encode(),
            "json": json.dumps(meta).encode()}


def synth_shards(out_dir, num: int, seed: int, *, shard_size: int = 500, progress: bool = False,
                 **render_kwargs) -> list[Path]:
    """Write `num` shapes-world clips as webdataset shards out_dir/shapes-%06d.tar."""
    import webdataset as wds

    from vidlm.logging import progress_bar

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(out / "shapes-%06d.tar"), maxcount=shard_size, verbose=0,
                         encoder=False, mtime=0) as sink:
        for i in progress_bar(range(num), desc="synth", unit="clip", disable=not progress):
            sink.write(synth_sample(seed, i, **render_kwargs))
    return sorted(out.glob("shapes-*.tar"))
