"""Writing video: frames to uint8, H.264 mp4 bytes (PyAV, yuv420p; yuv444p for training data), files (mp4, or GIF/PNG by
suffix) and the downscaled copies `vidlm data shards --max-side` stores (decoding: vidlm.data.video).
"""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from .video import VideoDecodeError, _display, _name_of, _open_av, _stream_fps


def to_uint8(video) -> np.ndarray:
    """(C,T,H,W) float in [-1,1] / (T,H,W,C) uint8 (numpy or torch), or one frame
    ((C,H,W) float / (H,W,C) uint8) -> (T, H, W, 3) uint8."""
    if isinstance(video, torch.Tensor):
        t = video.detach().cpu()
        if t.dtype == torch.uint8:
            a = t.numpy()
        else:
            t = t.float()
            if t.ndim == 3:
                t = t[:, None]
            a = rearrange(((t.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8), "c t h w -> t h w c").numpy()
    else:
        a = np.asarray(video)
        if a.dtype != np.uint8:
            raise ValueError("numpy video must be uint8 (T, H, W, C); float videos are torch (C, T, H, W)")
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] not in (1, 3):
        raise ValueError(f"expected video (C,T,H,W) float or (T,H,W,C) uint8, got shape {tuple(a.shape)}")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.ascontiguousarray(a)


def rgb_to_yuv(frame: np.ndarray, chroma: str = "420") -> np.ndarray:
    """(H, W, 3) uint8 RGB -> planar uint8 YUV, BT.601 limited range (what decoders assume for
    untagged H.264): chroma "420" halves the chroma planes both ways ((H * 3 / 2, W), yuv420p),
    "444" keeps them whole ((3, H, W), yuv444p). Done here, not by swscale, whose first
    conversion in a process differs from later ones: this keeps the encoded bytes reproducible."""
    rgb = frame.astype(np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 16 + 0.256788 * r + 0.504129 * g + 0.097906 * b
    cb = 128 - 0.148223 * r - 0.290993 * g + 0.439216 * b
    cr = 128 + 0.439216 * r - 0.367788 * g - 0.071427 * b
    if chroma == "444":
        return np.clip(np.round(np.stack([y, cb, cr])), 0, 255).astype(np.uint8)
    pool = lambda c: rearrange(c, "(h i) (w j) -> h w (i j)", i=2, j=2).mean(-1)
    planes = [y.ravel(), pool(cb).ravel(), pool(cr).ravel()]
    out = np.clip(np.round(np.concatenate(planes)), 0, 255).astype(np.uint8)
    return out.reshape(frame.shape[0] * 3 // 2, frame.shape[1])


def encode_mp4(frames: np.ndarray, fps: float, *, crf: int = 18, chroma: str = "420") -> bytes:
    """(T, H, W, 3) uint8 -> H.264 mp4 bytes (width and height must be even). chroma "420"
    (yuv420p) plays everywhere and is what users get; "444" (yuv444p, High 4:4:4) keeps colour
    edges whole, for training data whose objects are a few pixels wide: 4:2:0 blurs a 6-pixel
    triangle's colour into a circle's (docs/experiments.md, eighteenth round)."""
    import av

    if chroma not in ("420", "444"):
        raise ValueError(f"chroma must be '420' or '444', got {chroma!r}")
    h, w = frames.shape[1:3]
    if h % 2 or w % 2:
        raise ValueError(f"mp4 (H.264) needs even width and height, got {w}x{h}: crop or pad "
                         "the video first, or write .gif/.webp/.png")
    rate = Fraction(fps).limit_denominator(1001)
    fmt = f"yuv{chroma}p"
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        # mbtree's lookahead made x264 output differ between identical calls (~1 in 15)
        stream = container.add_stream("libx264", rate=rate, options={"crf": str(crf), "x264-params": "no-mbtree=1"})
        stream.width, stream.height, stream.pix_fmt = w, h, fmt
        stream.thread_count = 1
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb_to_yuv(f, chroma), format=fmt)
            frame.pts, frame.time_base = i, 1 / rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def downscale(source, max_side: int, *, name: str | None = None, crf: int = 18) -> bytes:
    """The whole video (path or bytes) re-encoded as H.264 mp4 whose longer side is at most
    `max_side` (aspect kept, even sizes, rotation applied, every frame at the source's rate):
    training at 64-128 px then decodes small frames instead of 720p ones at every sample."""
    import av

    name = _name_of(source, name)
    container, stream = _open_av(source, name)
    frames = []
    try:
        fps = _stream_fps(stream, name)
        for frame in container.decode(stream):
            scale = min(1.0, max_side / max(frame.width, frame.height))
            w, h = (max(2, 2 * round(side * scale / 2)) for side in (frame.width, frame.height))
            small = frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA")
            frames.append(_display(small.to_ndarray(), int(frame.rotation or 0)))
    except av.FFmpegError as e:
        if not frames:
            raise VideoDecodeError(name, f"decoding failed ({e})", "corrupt") from e
    finally:
        container.close()
    if not frames:
        raise VideoDecodeError(name, "no video frames", "no_frames")
    return encode_mp4(np.stack(frames), fps, crf=crf)


def write_video(path, video, fps: float, *, crf: int = 18) -> Path:
    """The one writer. By suffix: .mp4 (H.264 yuv420p, even size), .gif, .webp (animated),
    .png (one frame, or a horizontal strip of all frames). video: (C,T,H,W) float in [-1,1] or
    (T,H,W,C) uint8."""
    path = Path(path)
    frames = to_uint8(video)
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".mp4":
        path.write_bytes(encode_mp4(frames, fps, crf=crf))
    elif suffix in (".gif", ".webp"):
        import imageio.v3 as iio

        extra = {"lossless": True} if suffix == ".webp" else {}
        iio.imwrite(path, frames, extension=suffix, duration=1000.0 / fps, loop=0, **extra)
    elif suffix == ".png":
        import imageio.v3 as iio

        iio.imwrite(path, rearrange(frames, "t h w c -> h (t w) c"), extension=".png")
    else:
        raise ValueError(f"can't write {path.name}: use .mp4, .gif, .webp or .png")
    return path
