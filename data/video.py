"""Decoding video: decord by default, PyAV as the fallback, one function chooses (writing:
vidlm.data.encode).

Facts this module is built on (checked on real phone and camera clips):
- decord 0.6 can't open raw H.264 elementary streams, Theora (.ogv) or AV1, and mis-decodes
  videos rotated by 90 degrees (4-channel frames, then a crash); PyAV reads all of them.
- Some streams (imageio_cockatoo.mp4, H.264 4:4:4) decode garbage when the first decoded frame
  comes from a seek. PyAV therefore decodes sequentially from the first frame, and decord
  always decodes frame 0 first (which primes the decoder) before jumping ahead.
- Raw streams and AVI files with B-frames carry no usable timestamps, so both backends map
  time to frames the same way: frame i is shown at i / fps (fps = the stream's average rate).
  Variable-frame-rate sources are therefore read as if they had constant rate.
- Rotation metadata: the displayed frame is np.rot90(decoded, k=rotation / 90), where rotation
  is the display matrix's counter-clockwise angle (what ffmpeg's autorotate applies). PyAV frames
  are rotated here; rotated videos are always routed to PyAV.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from vidlm.errors import UserError

# Containers without timestamps (elementary streams), and codecs decord 0.6 can't decode.
RAW_FORMATS = {"h264", "hevc", "m4v", "mpegvideo", "rawvideo"}
PYAV_CODECS = {"av1", "libdav1d", "theora"}
# Containers whose index makes decord's seeks exact. In AVI with packed B-frames decord 0.6
# returned a wrong last frame after sparse seeks (mecavideo_constant_force.avi), so AVI, MPEG-PS
# and everything else go to PyAV's sequential decoding.
DECORD_CONTAINERS = {"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"}
VIDEO_SUFFIXES = {
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ogv", ".ogg", ".mpg", ".mpeg", ".ts",
    ".264", ".h264", ".265", ".hevc", ".flv", ".3gp", ".wmv",
}
_SUFFIX_FORMAT = {".264": "h264", ".h264": "h264", ".265": "hevc", ".hevc": "hevc"}


class VideoDecodeError(RuntimeError, UserError):
    """A video that can't be read. `reason` is a short tag used to count skipped samples:
    "empty", "unreadable", "no_frames", "corrupt", "too_short", "backend"."""

    def __init__(self, name: str, cause: str, reason: str = "unreadable"):
        super().__init__(f"{name}: {cause}")
        self.name, self.cause, self.reason = name, cause, reason


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    """Average frame rate; frame i is shown at i / fps."""
    width: int
    """Displayed width (after rotation)."""
    height: int
    """Displayed height (after rotation)."""
    frames: int
    """Number of frames (counted packets or decoded frames when the container doesn't say)."""
    duration: float
    """frames / fps, in seconds."""
    rotation: int = 0
    """Counter-clockwise display rotation in degrees (0, 90, 180, 270)."""
    codec: str = ""
    container: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> VideoInfo:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in names})


def _name_of(source, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, (str, Path)):
        return str(source)
    return "<bytes>"


def _input(source):
    """A fresh readable input for a backend: a path string or a new BytesIO."""
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source))
    raise TypeError(f"video source must be a path or bytes, got {type(source).__name__}")


def _check_nonempty(source, name: str):
    if isinstance(source, (bytes, bytearray, memoryview)):
        size = len(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise VideoDecodeError(name, "no such file", "unreadable")
        size = path.stat().st_size
    if size == 0:
        raise VideoDecodeError(name, "the file is empty (0 bytes)", "empty")


def _open_av(source, name: str):
    import av

    _check_nonempty(source, name)
    fmt = _SUFFIX_FORMAT.get(Path(name).suffix.lower())
    try:
        container = av.open(_input(source), format=fmt)
    except (av.FFmpegError, OSError, ValueError) as e:
        raise VideoDecodeError(name, f"not a readable video ({e})", "unreadable") from e
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(name, "no video frames (no video stream)", "no_frames")
    stream = container.streams.video[0]
    stream.thread_count = 1
    return container, stream


def _stream_fps(stream, name: str) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and 0 < float(rate) < 10_000:
            return float(rate)
    raise VideoDecodeError(name, "the stream has no frame rate", "unreadable")


def _display(frame_hwc: np.ndarray, rotation: int) -> np.ndarray:
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(frame_hwc, k)) if k else frame_hwc


def probe(source, *, name: str | None = None, decode: bool = False) -> VideoInfo:
    """Header facts of a video (path or bytes). Decodes the first frame (rotation, and proof that
    the stream decodes at all); with `decode=True` decodes every frame and counts them, which
    also validates the whole file (what `vidlm data shards` does)."""
    import av

    name = _name_of(source, name)
    container, stream = _open_av(source, name)
    try:
        fps = _stream_fps(stream, name)
        codec, fmt = stream.codec_context.name, container.format.name
        try:
            frames_iter = container.decode(stream)
            first = next(frames_iter, None)
            if first is None:
                raise VideoDecodeError(name, "no video frames", "no_frames")
            rotation = round((first.rotation or 0) / 90.0) * 90 % 360
            w, h = first.width, first.height
            if decode:
                frames = 1 + sum(1 for _ in frames_iter)
            else:
                frames = stream.frames
                if frames <= 0:  # raw streams, ogg, mpeg-ps: count packets (demux only)
                    container.close()
                    container, stream = _open_av(source, name)
                    frames = sum(1 for p in container.demux(stream) if p.size > 0)
        except av.FFmpegError as e:
            raise VideoDecodeError(name, f"decoding failed ({e})", "corrupt") from e
    finally:
        container.close()
    if frames <= 0:
        raise VideoDecodeError(name, "no video frames", "no_frames")
    if rotation in (90, 270):
        w, h = h, w
    return VideoInfo(fps=fps, width=w, height=h, frames=frames, duration=frames / fps,
                     rotation=rotation, codec=codec, container=fmt)


def choose_backend(info: VideoInfo, requested: str | None = None) -> str:
    """The one place that picks the decoder: "decord" for mp4/mov/mkv/webm, else PyAV: raw
    elementary streams, AVI, MPEG-PS, Ogg/Theora, AV1, any rotation, or no decord installed;
    `requested` forces a backend ("decord" on a 90-degree rotated video is refused)."""
    if requested not in (None, "decord", "pyav"):
        raise ValueError(f"backend must be None, 'decord' or 'pyav', got {requested!r}")
    if requested == "decord" and info.rotation in (90, 270):
        raise VideoDecodeError("decord", "decord 0.6 mis-decodes 90-degree rotated videos; "
                               "use backend='pyav' or leave backend=None", "backend")
    if requested:
        return requested
    if info.container not in DECORD_CONTAINERS or info.codec in PYAV_CODECS or info.rotation:
        return "pyav"
    try:
        import decord  # noqa: F401
    except ImportError:
        return "pyav"
    return "decord"


def frame_indices(num_frames: int, src_fps: float, fps: float | None, start_s: float) -> np.ndarray:
    """Source frame shown at each sampled time start_s + k / fps (frame i spans [i, i+1) / src_fps)."""
    fps = src_fps if fps is None else fps
    times = start_s + np.arange(num_frames) / fps
    return np.floor(times * src_fps + 1e-6).astype(np.int64)


def _decode_decord(source, name: str, wanted: list[int]) -> tuple[dict[int, np.ndarray], int]:
    import decord

    try:
        vr = decord.VideoReader(_input(source), num_threads=1)
        total = len(vr)
        keep = [i for i in wanted if i < total]
        if keep and len(keep) < len(wanted) and keep[-1] != total - 1:
            keep.append(total - 1)  # short clip: the last frame pads
        if not keep:
            return {}, total
        fetch = keep if keep[0] == 0 else [0] + keep  # frame 0 first: no decoder start at a seek
        batch = vr.get_batch(fetch).asnumpy()  # (N, H, W, 3) uint8
    except (decord.DECORDError, RuntimeError) as e:  # it raises RuntimeError when it can't open
        raise VideoDecodeError(name, f"decord failed ({str(e).splitlines()[0][:200]})", "backend") from e
    if batch.shape[-1] != 3:
        raise VideoDecodeError(name, f"decord returned {batch.shape[-1]} channels", "backend")
    return dict(zip(fetch, batch)), total


def _decode_pyav(source, name: str, wanted: list[int]) -> tuple[dict[int, np.ndarray], int]:
    import av

    container, stream = _open_av(source, name)
    need, last, out, count, prev = set(wanted), max(wanted), {}, 0, None
    try:
        for i, frame in enumerate(container.decode(stream)):  # sequential: never seek
            count, prev = i + 1, frame
            if i in need:
                out[i] = _display(frame.to_ndarray(format="rgb24"), int(frame.rotation or 0))
            if i >= last:
                break
    except av.FFmpegError as e:
        if not out:
            raise VideoDecodeError(name, f"decoding failed ({e})", "corrupt") from e
    finally:
        container.close()
    if out and prev is not None and count - 1 not in out:  # short clip: the last frame pads
        out[count - 1] = _display(prev.to_ndarray(format="rgb24"), int(prev.rotation or 0))
    return out, count


def read_clip(source, num_frames: int, fps: float | None = None, start_s: float = 0.0, *,
              short: str = "pad", dtype: str = "float", backend: str | None = None,
              name: str | None = None, info: VideoInfo | None = None) -> torch.Tensor:
    """Frames sampled by *time*: frame k is what the source shows at start_s + k / fps.

    source: a path or the file's bytes (`name` names it in errors and gives the container by
    suffix, e.g. "clip.264"). fps: target rate (None: the source's). short: what to do when the
    source ends before the last sampled time: "pad" repeats the last frame, "error" raises
    VideoDecodeError(reason="too_short"). info: known facts (from shard metadata) skip a probe.
    Returns (C, T, H, W): float32 in [-1, 1], or uint8 with dtype="uint8".
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if short not in ("pad", "error") or dtype not in ("float", "uint8"):
        raise ValueError(f"short must be 'pad'|'error' and dtype 'float'|'uint8', got {short!r}, {dtype!r}")
    name = _name_of(source, name)
    if info is None:
        info = probe(source, name=name)
    idx = frame_indices(num_frames, info.fps, fps, start_s)
    if idx[-1] >= info.frames and short == "error":
        raise VideoDecodeError(
            name, f"too short: {info.frames} frames ({info.duration:.2f} s at {info.fps:g} fps), asked "
            f"for {num_frames} frames at {fps or info.fps:g} fps from {start_s:g} s (up to frame "
            f"{idx[-1]}); ask for fewer frames, a lower fps, or pass short='pad'", "too_short")
    wanted = sorted({int(i) for i in idx})
    chosen = choose_backend(info, backend)
    if chosen == "decord":
        try:
            frames, total = _decode_decord(source, name, wanted)
        except VideoDecodeError:
            if backend == "decord":
                raise
            frames, total = _decode_pyav(source, name, wanted)  # decord failure -> PyAV
    else:
        frames, total = _decode_pyav(source, name, wanted)
    if not frames:
        if total == 0:
            raise VideoDecodeError(name, "no video frames", "no_frames")
        raise VideoDecodeError(name, f"start {start_s:g} s is past the end ({total} frames)", "too_short")
    have = max(frames)
    if idx[-1] > have and short == "error":
        raise VideoDecodeError(name, f"too short: decoded {have + 1} frames, needed frame {idx[-1]}; "
                               "pass short='pad' to repeat the last frame", "too_short")
    clip = np.stack([frames.get(int(i), frames[have]) for i in idx])  # (T, H, W, 3) uint8
    out = rearrange(torch.from_numpy(clip), "t h w c -> c t h w").contiguous()
    return out if dtype == "uint8" else out.float().div_(127.5).sub_(1.0)


def is_video_name(name: str) -> bool:
    return Path(name).suffix.lower() in VIDEO_SUFFIXES


def max_start(info: VideoInfo, num_frames: int, fps: float | None) -> float:
    """Latest start (s) at which `num_frames` at `fps` still fit in the video without padding;
    negative when they never fit."""
    fps = info.fps if fps is None else fps
    return (info.frames - 1) / info.fps - (num_frames - 1) / fps
