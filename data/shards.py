"""Build webdataset shards from video files: {key}.{original extension} (the file's bytes,
untouched), {key}.txt (caption), {key}.json (fps, width, height, frames, duration, rotation,
codec, container, source). Every file is probed by decoding all its frames first (in parallel
with --workers); files that fail are skipped and reported with the reason. With --max-side N,
videos bigger than N are stored re-encoded at that size instead (mp4; the .json says the
original size), for training at small sizes without decoding big frames at every sample.
"""

from __future__ import annotations

import functools
import glob
import json
import re
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .encode import downscale
from .video import VideoDecodeError, is_video_name, probe


@dataclass
class ShardReport:
    written: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # file -> reason
    shards: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"wrote {self.written} clips to {len(self.shards)} shard(s); skipped {len(self.skipped)}"]
        for reason, n in Counter(r.split(":")[0] for r in self.skipped.values()).most_common():
            lines.append(f"  {n} x {reason}")
        lines += [f"  skipped {name}: {why}" for name, why in sorted(self.skipped.items())]
        return "\n".join(lines)


def find_videos(spec) -> list[Path]:
    """A directory (its video files, sorted), a glob, or a list of those."""
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    out: list[Path] = []
    for s in specs:
        p = Path(s)
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.is_file() and is_video_name(f.name))
        elif p.is_file():
            out.append(p)
        else:
            out += sorted(Path(f) for f in glob.glob(str(s)) if is_video_name(f))
    return out


def load_captions(path) -> dict[str, str]:
    """captions.jsonl: one {"file": NAME, "caption": TEXT} per line -> {NAME: TEXT}."""
    out = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out[str(row["file"])] = str(row["caption"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{n}: expected {{\"file\": ..., \"caption\": ...}}, got {line!r}") from e
    return out


def sample_key(path: Path, used: set[str]) -> str:
    """A webdataset-safe key (no dots) from the file name, unique within the run."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem) or "clip"
    key, n = base, 1
    while key in used:
        n += 1
        key = f"{base}_{n}"
    used.add(key)
    return key


def _probe_one(path: str, max_side: int | None = None):
    """(metadata, bytes to store or None for the file's own, error) of one video."""
    try:
        info = probe(path, decode=True)
        if max_side is None or max(info.width, info.height) <= max_side:
            return info.to_dict(), None, None
        data = downscale(path, max_side)
        small = probe(data, name=Path(path).stem + ".mp4").to_dict()  # our own mp4: its header is right
        original = {"width": info.width, "height": info.height, "file": Path(path).name}
        return dict(small, original=original), data, None
    except VideoDecodeError as e:
        return None, None, f"{e.reason}: {e.cause}"


def write_shards(videos, out_dir, *, captions: dict[str, str] | None = None, shard_size: int = 100,
                 workers: int = 1, prefix: str = "clips", progress: bool = True,
                 max_side: int | None = None) -> ShardReport:
    """Write shards out_dir/{prefix}-%06d.tar; returns what was written and skipped (with reasons).
    With `captions`, a video that has no caption there is skipped ("no caption"). Each sample
    holds the file's own bytes, or with `max_side` and a bigger video, an mp4 re-encoded to that
    longer side (`data.encode.downscale`; its .json keeps the original size under "original")."""
    import webdataset as wds

    from vidlm.logging import progress_bar

    files = find_videos(videos)
    if not files:
        raise FileNotFoundError(f"no video files found in {videos}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report, used = ShardReport(), set()
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    job = functools.partial(_probe_one, max_side=max_side)
    results = pool.map(job, map(str, files)) if pool else map(job, map(str, files))
    try:
        with wds.ShardWriter(str(out / f"{prefix}-%06d.tar"), maxcount=shard_size, verbose=0,
                             encoder=False, mtime=0) as sink:
            for path, (info, data, error) in progress_bar(zip(files, results), total=len(files), desc="shards",
                                            unit="video", disable=not progress):
                caption = (captions or {}).get(path.name)
                if error:
                    report.skipped[path.name] = error
                    continue
                if captions is not None and not caption:
                    report.skipped[path.name] = "no_caption: not in the captions file"
                    continue
                key = sample_key(path, used)
                meta = dict(info, source=path.name)
                suffix = "mp4" if data is not None else path.suffix.lower().lstrip(".")
                sink.write({"__key__": key, suffix: data if data is not None else path.read_bytes(),
                            "txt": (caption or "").encode(), "json": json.dumps(meta).encode()})
                report.written += 1
    finally:
        if pool:
            pool.shutdown()
    report.shards = sorted(out.glob(f"{prefix}-*.tar"))
    return report
