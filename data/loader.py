"""The training loader: webdataset shards -> bucketed batches of clips.

Pipeline (per rank and DataLoader worker):
  shard urls -> [finite: shuffled by (seed, epoch), split_by_node, split_by_worker |
                 resampled: shards drawn at random, rng from (seed, epoch, rank, worker)]
  -> tar samples -> shuffle buffer -> plan (cheap checks on metadata, bucket, clip start)
  -> bucket queues -> planned batches -> [skip on resume] -> decode (the one decode stage)
  -> resize/crop -> batch {"video": (B, C, T, H, W) float in [-1, 1], "caption", "key", "meta",
  "bucket"}; every batch holds one bucket.

Randomness: the shard order and shuffle buffer use rngs seeded by (seed, epoch, rank, worker);
each sample's clip start and crop use a torch.Generator seeded by hash(seed, epoch, key)
(meta["sample_seed"] is that seed, for later per-sample choices such as the task).

Bad samples never stop the loader and never sleep: a sample with no video, an empty video,
bad metadata, no caption (when required), too few frames (short="error") or a video that fails
to decode is dropped and counted by reason in `loader.counts`. A batch that loses samples at
decode time is topped up by repeating its good samples (meta["repeat"] = True), so batches
keep their size; a batch whose samples all fail is dropped.

Resume guarantee: `state_dict()` after n batches of epoch e, loaded into a loader built with the
same shards, config, world size and num_workers, makes the next batch exactly batch n of epoch
e of the uninterrupted run, and every later batch identical too (same keys, pixels, skip counts).
Skipping re-reads the tar bytes of the skipped batches but decodes none of them (batches are
planned from metadata before decoding). Changing num_workers or world size between save and
load is refused. With num_workers > 0 and no epoch_batches (one pass), the guarantee holds
until the first worker runs out of shards (the DataLoader's round robin then shifts); training
runs use epoch_batches.

Equal batches per rank: with `epoch_batches=N` every rank yields exactly N batches per epoch
(shards are resampled, so no rank runs dry), which keeps synchronous training from hanging.
Without it, each rank makes one pass over its split of the shards (world size 1 only).
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from dataclasses import dataclass, field

import torch

from vidlm.runtime import derive_seed

from .buckets import Bucket, make_buckets, nearest_bucket, resize_crop
from .video import VideoDecodeError, VideoInfo, is_video_name, max_start, read_clip


@dataclass(frozen=True, kw_only=True)
class LoaderConfig:
    batch_size: int = 8
    """Clips per batch (per rank)."""
    areas: tuple[int, ...] = (64 * 64,)
    """Pixel areas of the buckets."""
    frames: tuple[int, ...] = (17,)
    """Frame counts of the buckets (1 + time_factor*k); a clip gets the longest that fits."""
    factor: int = 8
    """Bucket sides are multiples of this (the tokenizer's spatial factor)."""
    time_factor: int = 4
    """The tokenizer's time factor: frame counts are 1 + time_factor*k."""
    fps: float | None = 8.0
    """Sampling rate of the clips (None: each source's own rate)."""
    seed: int = 0
    """Seed of all randomness."""
    shuffle_buffer: int = 256
    """Samples held in the shuffle buffer (1 = no shuffling)."""
    epoch_batches: int | None = None
    """Batches per rank per epoch (shards resampled); None = one pass over the shards."""
    num_workers: int = 0
    """DataLoader worker processes (0 = decode in the calling process)."""
    train: bool = True
    """Random clip start and crop (True) or start 0 and centre crop (False)."""
    require_caption: bool = True
    """Skip samples without a caption."""
    short: str = "pad"
    """Clips shorter than the smallest bucket: "pad" (repeat the last frame) or "error" (skip)."""
    backend: str | None = None
    """Force "decord" or "pyav" (None: chosen per file)."""


class SkipCounter:
    """Counts dropped samples by reason; as a webdataset handler it counts and continues."""

    def __init__(self):
        self.counts: Counter = Counter()

    def __call__(self, exn: Exception) -> bool:
        self.counts[getattr(exn, "reason", "bad_tar")] += 1
        return True


class _Skip(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Planned:
    key: str
    video: bytes
    name: str
    caption: str
    meta: dict
    info: VideoInfo
    bucket: Bucket
    start_s: float
    sample_seed: int


@dataclass
class _Stream(torch.utils.data.IterableDataset):
    """One epoch of one rank's planned-and-decoded batches (runs inside each worker)."""

    urls: list[str]
    cfg: LoaderConfig
    epoch: int
    rank: int
    world_size: int
    skip: list[int] = field(default_factory=list)  # planned batches to skip, per worker
    limit: list[int | None] = field(default_factory=list)  # batches still to yield, per worker
    rotate: int = 0  # DataLoader starts its round robin at worker 0: worker i plays role i+rotate

    def __post_init__(self):
        super().__init__()

    def _shards(self, worker: int, workers: int):
        import webdataset as wds

        cfg = self.cfg
        if cfg.epoch_batches is not None:  # resampled: an endless, deterministic stream of shards
            rng = random.Random(derive_seed(cfg.seed, self.epoch, self.rank, worker, "shards"))
            while True:
                yield {"url": rng.choice(self.urls)}
        urls = list(self.urls)
        random.Random(derive_seed(cfg.seed, self.epoch, "order")).shuffle(urls)
        src = ({"url": u} for u in urls)
        yield from wds.split_by_worker(wds.split_by_node(src))

    def _plan(self, sample: dict, buckets: list[Bucket]) -> _Planned:
        cfg = self.cfg
        key = sample["__key__"]
        names = [k for k in sample if not k.startswith("__") and is_video_name("x." + k)]
        if not names:
            raise _Skip("no_video")
        video = sample[names[0]]
        if not video:
            raise _Skip("empty")
        caption = sample.get("txt", b"").decode("utf-8", "replace").strip()
        if cfg.require_caption and not caption:
            raise _Skip("no_caption")
        try:
            meta = json.loads(sample["json"])
            info = VideoInfo.from_dict(meta)
        except (KeyError, ValueError, TypeError):
            raise _Skip("bad_meta") from None
        if info.frames <= 0:
            raise _Skip("no_frames")
        fps = cfg.fps or info.fps
        longest = int((info.frames - 1) / info.fps * fps) + 1
        bucket = nearest_bucket(info.width, info.height, buckets, max_frames=longest)
        room = max_start(info, bucket.frames, cfg.fps)
        if room < 0 and cfg.short == "error":
            raise _Skip("too_short")
        seed = derive_seed(cfg.seed, self.epoch, key)
        u = torch.rand(1, generator=torch.Generator().manual_seed(seed)).item() if cfg.train else 0.0
        return _Planned(key, video, f"{key}.{names[0]}", caption, meta, info, bucket,
                        max(room, 0.0) * u, seed)

    def _planned_batches(self, worker: int, workers: int, counter: SkipCounter):
        import webdataset as wds

        cfg = self.cfg
        buckets = make_buckets(cfg.areas, cfg.frames, cfg.factor, time_factor=cfg.time_factor)
        samples = wds.tarfile_to_samples(handler=counter)(self._shards(worker, workers))
        rng = random.Random(derive_seed(cfg.seed, self.epoch, self.rank, worker, "shuffle"))
        samples = wds.shuffle(cfg.shuffle_buffer, min(cfg.shuffle_buffer, 64), rng=rng)(samples)
        queues: dict[Bucket, list[_Planned]] = {}
        for sample in samples:
            try:
                item = self._plan(sample, buckets)
            except _Skip as e:
                counter.counts[e.reason] += 1
                continue
            queue = queues.setdefault(item.bucket, [])
            queue.append(item)
            if len(queue) == cfg.batch_size:
                yield queue[:]
                queue.clear()

    def _decode(self, item: _Planned) -> torch.Tensor:
        gen = torch.Generator().manual_seed(item.sample_seed + 1) if self.cfg.train else None
        clip = read_clip(item.video, item.bucket.frames, self.cfg.fps, item.start_s, short=self.cfg.short,
                         backend=self.cfg.backend, name=item.name, info=item.info)
        return resize_crop(clip, item.bucket, gen)  # (C, T, H, W)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        worker = (worker + self.rotate) % workers
        skip = self.skip[worker] if self.skip else 0
        limit = self.limit[worker] if self.limit else None
        counter, planned, yielded = SkipCounter(), 0, 0
        for batch in self._planned_batches(worker, workers, counter):
            if limit is not None and yielded >= limit:
                break
            planned += 1
            if planned <= skip:  # resume: planned, not decoded; its skips were counted before
                if planned == skip:
                    counter.counts.clear()
                continue
            good, videos = [], []
            for item in batch:
                try:
                    videos.append(self._decode(item))
                    good.append(item)
                except VideoDecodeError as e:
                    counter.counts[e.reason] += 1
            if not good:
                continue
            metas = [dict(it.meta, sample_seed=it.sample_seed, start_s=it.start_s) for it in good]
            n = len(good)
            for i in range(n, len(batch)):  # top up to the batch size with the good ones
                videos.append(videos[i % n])
                good.append(good[i % n])
                metas.append(dict(metas[i % n], repeat=True))
            yielded += 1
            yield {"video": torch.stack(videos), "caption": [it.caption for it in good],
                   "key": [it.key for it in good], "meta": metas, "bucket": batch[0].bucket,
                   "_pos": (worker, planned, dict(counter.counts))}
            counter.counts.clear()
        if counter.counts:
            yield {"_pos": (worker, planned, dict(counter.counts))}


def _identity(x):
    return x


class VideoLoader:
    """Iterable of bucketed batches over webdataset shards; one `iter()` is one epoch.

    loader = VideoLoader("shards/shapes-{000000..000003}.tar", LoaderConfig(batch_size=8))
    for batch in loader: ...   # batch["video"]: (B, C, T, H, W) float in [-1, 1]
    loader.counts              # skipped samples by reason, e.g. {"unreadable": 2}
    state = loader.state_dict(); ...; loader.load_state_dict(state)   # exact resume
    """

    def __init__(self, shards, cfg: LoaderConfig | None = None, *, rank: int | None = None,
                 world_size: int | None = None, **overrides):
        import webdataset as wds

        base = cfg or LoaderConfig()
        self.cfg = dataclasses.replace(base, **overrides)
        self.urls = self._expand(shards)
        r, ws, _, _ = wds.utils.pytorch_worker_info()
        self.rank, self.world_size = (r if rank is None else rank), (ws if world_size is None else world_size)
        if self.world_size > 1 and self.cfg.epoch_batches is None:
            raise ValueError("with more than one rank pass epoch_batches=N, so that every rank yields "
                             "the same number of batches (unequal shard splits hang synchronous training)")
        if self.cfg.short not in ("pad", "error"):
            raise ValueError(f"short must be 'pad' or 'error', got {self.cfg.short!r}")
        self.epoch, self.batches = 0, 0
        self._planned = [0] * max(1, self.cfg.num_workers)
        self.counts: Counter = Counter()

    @staticmethod
    def _expand(shards) -> list[str]:
        import glob
        from pathlib import Path

        import webdataset as wds

        specs = [shards] if isinstance(shards, (str, Path)) else list(shards)
        urls: list[str] = []
        for s in specs:
            s = str(s)
            if Path(s).is_dir():
                urls += sorted(str(p) for p in Path(s).glob("*.tar"))
            else:
                urls += [u for pattern in wds.shardlists.expand_urls(s) for u in
                         (sorted(glob.glob(pattern)) or [pattern])]
        bad = [u for u in urls if ":" in u.split("/")[0] and not u.startswith("file:")]
        if bad:
            raise ValueError(f"only local shard files are read (no pipe:/URLs): {bad[:3]}")
        missing = [u for u in urls if not Path(u).is_file()]
        if not urls or missing:
            raise FileNotFoundError(f"no shards at {shards!r}" + (f" (missing: {missing[:3]})" if missing else ""))
        return urls

    def __len__(self) -> int:
        if self.cfg.epoch_batches is None:
            raise TypeError("the number of batches of a one-pass loader is unknown; set epoch_batches")
        return self.cfg.epoch_batches

    def set_epoch(self, epoch: int):
        self.epoch, self.batches = epoch, 0
        self._planned = [0] * len(self._planned)

    def _limits(self) -> list[int | None]:
        n, w = self.cfg.epoch_batches, len(self._planned)
        if n is None:
            return []
        per = [n // w + (i < n % w) for i in range(w)]
        done = [self.batches // w + (i < self.batches % w) for i in range(w)]
        return [p - d for p, d in zip(per, done)]

    def __iter__(self):
        cfg, w = self.cfg, len(self._planned)
        stream = _Stream(self.urls, cfg, self.epoch, self.rank, self.world_size,
                         skip=list(self._planned), limit=self._limits(), rotate=self.batches % w)
        if cfg.num_workers > 0:
            it = iter(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=cfg.num_workers,
                                                  collate_fn=_identity))
        else:
            it = iter(stream)
        for batch in it:
            worker, planned, counts = batch.pop("_pos")
            self._planned[worker] = planned
            self.counts.update(counts)
            if "video" in batch:
                self.batches += 1
                yield batch
        self.epoch, self.batches, self._planned = self.epoch + 1, 0, [0] * w

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches": self.batches, "planned": list(self._planned),
                "num_workers": self.cfg.num_workers, "world_size": self.world_size,
                "counts": dict(self.counts)}

    def load_state_dict(self, state: dict):
        if (state["num_workers"], state["world_size"]) != (self.cfg.num_workers, self.world_size):
            raise ValueError(f"loader state was saved with num_workers={state['num_workers']}, world_size="
                             f"{state['world_size']}; this loader has {self.cfg.num_workers}, "
                             f"{self.world_size}: resume needs the same values")
        self.epoch, self.batches = int(state["epoch"]), int(state["batches"])
        self._planned = list(state["planned"])
        self.counts = Counter(state.get("counts", {}))
