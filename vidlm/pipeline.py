"""The video-level API: text / images / videos in, videos out, one method per task.

    from vidlm import VideoGenerator

    gen = VideoGenerator.from_pretrained("shapes-demo")        # or a folder: tokenizer/ text/ lm/
    video, codes = gen.t2v("a red circle moves right", frames=17, size=(64, 64), seed=0)
    # video (C,T,H,W) float in [-1,1], codes (t,h,w) int64

Every task is "some frames are known, generate the rest" (vidlm.lm.tasks): a method encodes the
known frames with the video tokenizer, renders the task's prompt (`vidlm.lm.tasks`), samples
the missing codes (`vidlm.lm.sample`, with text / visual guidance as stacked CFG rows), puts
known and generated codes into one (t,h,w) grid, and decodes it. Known codes come back
unchanged in the returned grid.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from vidlm.config import resolve_weights
from vidlm.data.refine import refine_shapes
from vidlm.lm.sample import CFG, ContextError, stream
from vidlm.lm.tasks import open_frames
from vidlm.logging import progress_bar

if TYPE_CHECKING:
    from vidlm.tokenizer.config import TokenizerConfig

SPECULATIVE = 16
"""Drafts per forward pass in every task's sampling (`vidlm.lm.sample.stream`'s `draft`): the
same distribution as plain sampling, fewer passes where the model is sure; 0 turns it off. The
most a pass may carry; the sampler adapts the length below it (docs/experiments.md, "Speculative
decoding": 16 was the fastest at temperature 0, and at 1 no slower than 8)."""


class Generated(NamedTuple):
    """What every task returns: `video, codes = gen.t2v(...)`."""

    video: Tensor
    """(C,T,H,W) float in [-1,1]."""
    codes: Tensor
    """(t,h,w) int64 tokenizer codes of the whole clip, known frames included."""


def seam_score(video: Tensor) -> float:
    """How visible a loop's seam is: mean |last frame - first frame| divided by the mean change
    between consecutive frames, for video (C,T,H,W). 1.0 = the seam looks like any other step."""
    if video.shape[1] < 3:
        raise ValueError(f"a seam score needs at least 3 frames, got {video.shape[1]}")
    video = video.float()
    steps = (video[:, 1:] - video[:, :-1]).abs().mean()
    seam = (video[:, 0] - video[:, -1]).abs().mean()
    return float(seam / steps.clamp_min(1e-8))


class VideoGenerator:
    """Video tokenizer + text tokenizer + VideoLM + Vocab, with one method per task.

    Every method takes `seed`, sampling options (`temperature`, `top_k`, `top_p`), guidance
    scales (`cfg_text`, `cfg_visual`; 1 = plain conditional sampling, see `vidlm.lm.sample.CFG`),
    `speculative` (drafts per forward pass, default SPECULATIVE; 0 = plain decoding; `jacobi`
    says where the model's own guesses serve as drafts, see `stream`), `prior_weight` (the weight
    of the frame prior, `vidlm.lm.prior`, where the LM folder has one: default its own, 0 = off)
    and `progress` (True: a tqdm bar with tokens/s; or a function (done, total) called after
    every sampled code, which may raise to stop sampling), and returns `Generated(video, codes)`.
    """

    def __init__(self, tokenizer, text_tokenizer, lm, vocab, *, device: str | torch.device | None = None,
                 refine=None, compile: bool = False, prior=None):
        """`refine`: None (prompts as given), True (`vidlm.data.refine.refine_shapes`: free prompts
        into the shapes world's caption grammar) or any function (prompt, seed) -> Refined.
        `self.refined` is the last refinement made (the caption a task actually used).
        `compile`: torch.compile the LM's decode step (`VideoLM.compile_step`; for GPUs).
        `prior`: a `vidlm.lm.prior.FramePrior` for the LM's codes (None: the LM alone)."""
        self.refine = refine_shapes if refine is True else (refine or None)
        self.refined = None
        self.stats: dict = {}
        self.device = torch.device(device) if device is not None else next(lm.parameters()).device
        self.tokenizer = tokenizer.to(self.device).eval()
        self.text_tokenizer = text_tokenizer
        self.lm = lm.to(self.device).eval()
        if prior is not None and prior.cfg.n_codes != vocab.code_size:
            raise ValueError(f"the frame prior predicts {prior.cfg.n_codes} codes, the LM's vocab has {vocab.code_size}")
        self.prior = prior.to(self.device).eval() if prior is not None else None
        if compile:
            self.lm.compile_step()
        self.vocab = vocab
        self.time_factor, self.space_factor = tokenizer.factors
        # two-level codes: fine codes sit where the coarse ones place them (vidlm.lm.tasks), if the
        # LM was trained so; else every code at its grid coordinate, as it was trained
        if lm.cfg.code_places and not tokenizer.cfg.refine_rows:
            raise ValueError("this LM was trained on two-level codes at their places (code_places) and the video "
                             "tokenizer given has one level; load the tokenizer its token data was made with")
        self.places = self.tokenizer.code_places if lm.cfg.code_places else None

    # ------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | Path | None = "shapes-demo", *, tokenizer=None, text=None,
                        lm=None, device: str = "cpu", refine=None, compile: bool = False) -> VideoGenerator:
        """Load `path`/tokenizer, `path`/text and `path`/lm; `tokenizer=`, `text=`, `lm=` override
        one part with another folder. `path` may be a shipped name such as "shapes-demo"."""
        from vidlm.data.text import TextTokenizer
        from vidlm.lm.model import VideoLM
        from vidlm.lm.prior import FramePrior
        from vidlm.lm.vocab import Vocab
        from vidlm.tokenizer.model import VideoTokenizer

        root = resolve_weights(path) if path is not None else None
        part = lambda given, name: Path(given) if given else (root / name if root else None)
        dirs = {"tokenizer": part(tokenizer, "tokenizer"), "text": part(text, "text"), "lm": part(lm, "lm")}
        for name, d in dirs.items():
            if d is None or not d.is_dir():
                raise FileNotFoundError(f"{name} folder {d} not found: pass a model folder holding "
                                        f"tokenizer/, text/ and lm/, or --{name} DIR")
        video_tok = VideoTokenizer.from_pretrained(dirs["tokenizer"])
        text_tok = TextTokenizer.from_dir(dirs["text"])
        model = VideoLM.from_pretrained(dirs["lm"])
        vocab = Vocab.from_pretrained(dirs["lm"])
        return cls(video_tok, text_tok, model, vocab, device=device, refine=refine, compile=compile,
                   prior=FramePrior.from_pretrained(dirs["lm"]))

    @classmethod
    def random(cls, lm: str = "debug", *, tokenizer: str | TokenizerConfig = "debug", captions=None, seed: int = 0,
               device: str = "cpu", refine=None, **lm_overrides) -> VideoGenerator:
        """Random weights at the given presets (tests, benchmarks): speed and shapes are real,
        the videos are noise. The text model is trained in memory on `captions`."""
        from vidlm.data.text import train_text_tokenizer
        from vidlm.lm.config import LMConfig
        from vidlm.lm.model import VideoLM
        from vidlm.lm.vocab import Vocab
        from vidlm.tokenizer.config import TokenizerConfig
        from vidlm.tokenizer.model import VideoTokenizer

        captions = captions or [f"a {c} {s} moves {d}" for c in ("red", "green", "blue", "yellow")
                                for s in ("circle", "square", "triangle") for d in ("left", "right", "up", "down")]
        torch.manual_seed(seed)
        video_tok = VideoTokenizer(tokenizer if isinstance(tokenizer, TokenizerConfig) else
                                   TokenizerConfig.from_name(tokenizer))
        text_tok = train_text_tokenizer(captions, 64)
        vocab = Vocab.build(video_tok.cfg, text_tok)
        lm_overrides.setdefault("code_places", bool(video_tok.cfg.refine_rows))
        model = VideoLM(LMConfig.from_name(lm, vocab_size=vocab.size, **lm_overrides))
        return cls(video_tok, text_tok, model, vocab, device=device, refine=refine)

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Write out_dir/tokenizer, out_dir/text and out_dir/lm (what from_pretrained reads)."""
        out = Path(out_dir)
        self.tokenizer.save_pretrained(out / "tokenizer")
        self.text_tokenizer.save(out / "text")
        self.lm.save_pretrained(out / "lm")
        self.vocab.save(out / "lm")
        if self.prior is not None:
            self.prior.save_pretrained(out / "lm")
        return out

    # ------------------------------------------------------------------------------ shapes
    def latent_frames(self, frames: int) -> int:
        """Frames (1 + f*k) -> latent frames (1 + k); a clear error for other counts."""
        f = self.time_factor
        if frames < 1 or (frames - 1) % f:
            ok = ", ".join(str(1 + f * k) for k in range(5))
            raise ValueError(f"frames must be 1 + {f}k ({ok}, ...), got {frames}")
        return 1 + (frames - 1) // f

    def frames_of(self, t: int) -> int:
        return 1 + (t - 1) * self.time_factor

    def latent_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(W, H) pixels -> (h, w) latent grid (the tokenizer's latent_shape: a clear error for
        sizes it cannot code)."""
        w, h = size
        return self.tokenizer.latent_shape(1, h, w)[1:]

    @torch.inference_mode()
    def encode(self, video: Tensor) -> Tensor:
        """(C,T,H,W) or an image (C,H,W) in [-1,1] -> codes (t,h,w) of the stand-alone clip."""
        if video.dim() == 3:
            video = video[:, None]
        self.latent_frames(video.shape[1])
        self.latent_size((video.shape[3], video.shape[2]))
        return self.tokenizer.encode_chunked(video[None].to(self.device).float())[0]

    @torch.inference_mode()
    def decode(self, codes: Tensor) -> Tensor:
        """codes (t,h,w) -> video (C,T,H,W) in [-1,1]. Both directions run in chunks of a few
        latent frames with the causal cache: peak memory does not grow with the video's length
        (beyond the video itself), which is what lets `long` run for minutes of video."""
        return self.tokenizer.decode_chunked(codes[None].to(self.device))[0].clamp_(-1, 1)

    # ------------------------------------------------------------------------------ core
    def _prompts(self, task: str, grid, text: str | None, known: list):
        """(conditional, no-text, bare) prompts for guidance; identical objects where a variant
        drops nothing (no text -> no_text is the prompt itself)."""
        from vidlm.lm.tasks import render_prompt

        text_ids = self.text_tokenizer.encode(text) if text else None
        render = lambda **drop: render_prompt(task, self.vocab, grid=grid, text=text_ids, known=known,
                                              places=self.places, **drop)
        cond = render()
        no_text = render(drop_text=True) if text_ids else cond
        bare = render(drop_text=True, drop_known=True) if known else no_text
        return cond, no_text, bare

    def _check_fits(self, task, grid, text, known, what):
        """ContextError naming the largest number of frames that fit at this size."""
        from vidlm.lm.sample import context_length

        self._prompts(task, grid, text, known)  # the task's own errors (grid limits) first
        need = self._need(task, grid, text, known)
        ctx = context_length(self.lm)
        if need <= ctx:
            return
        t, h, w = grid
        fit = [k for k in range(1, t) if self._need(task, (k, h, w), text, known) <= ctx]
        frames = f"at most {self.frames_of(max(fit))} frames fit" if fit else "not even one frame fits"
        height, width = self.tokenizer.frame_size(h, w)
        raise ContextError(f"{what} ({self.frames_of(t)} frames at {width}x{height}) needs {need} tokens, but the model's context "
                           f"holds {ctx}: at this size {frames}; use fewer frames or a smaller size")

    def _need(self, task, grid, text, known) -> int:
        try:
            cond = self._prompts(task, grid, text, known)[0]
        except ValueError:
            return 1 << 60
        return len(cond.ids) + len(cond.gen_coords)

    def _sample(self, task: str, grid, text, known, *, seed=0, temperature=1.0, top_k=None,
                top_p=None, cfg_text=1.0, cfg_visual=1.0, progress=False, window=None, keep=None,
                period=1, prompt=None, speculative=SPECULATIVE, jacobi="first", prior_weight=None) -> Tensor:
        """Sample the codes a task leaves open: codes (N,), frame by frame in the order the task
        generates them (`open_frames`), each in raster order. The sampling statistics (forward
        passes, drafts proposed / accepted per kind) go to `self.stats`."""
        cond, no_text, bare = self._prompts(task, grid, text, known)
        if prompt is not None:  # a caller-built prompt (long: gen_coords past the window)
            cond = prompt
        cfg = CFG(text=cfg_text, visual=cfg_visual, no_text=no_text, uncond=bare)
        generator = torch.Generator(self.device).manual_seed(seed)
        self.stats = {"tokens": len(cond.gen_coords)}
        tokens = stream(self.lm, cond, cfg=cfg, generator=generator, temperature=temperature,
                        top_k=top_k, top_p=top_p, legal=self.vocab.code_range, window=window, keep=keep,
                        period=period, draft=speculative, jacobi=jacobi, stats=self.stats,
                        prior=self.prior, prior_weight=prior_weight)
        out, total = [], len(cond.gen_coords)
        report = progress if callable(progress) else None
        with progress_bar(total=total, unit="tok", desc=task, disable=progress is not True) as bar:
            for token in tokens:
                out.append(token)
                bar.update(1)
                if report is not None:
                    report(len(out), total)
        return self.vocab.ids_to_codes(torch.cat(out))

    def _run(self, task: str, frames: int, size, text, known: list[tuple[int, Tensor]],
             what: str, **opts) -> Generated:
        """known: [(latent start time, codes (tk,h,w))] placed into the output grid as they are."""
        text = self._refined(text, opts.get("seed", 0))
        t = self.latent_frames(frames)
        h, w = self.latent_size(size)
        self._check_fits(task, (t, h, w), text, known, what)
        new = self._sample(task, (t, h, w), text, known, **opts)
        grid = torch.full((t, h, w), -1, dtype=torch.long, device=self.device)
        for start, codes in known:
            if start is not None:  # None: a conditioning signal that is not part of the clip (edit)
                grid[start : start + codes.shape[0]] = codes.to(self.device)
        grid[open_frames(task, (t, h, w), known)] = new.view(-1, h, w).to(self.device)
        if (grid < 0).any():
            raise RuntimeError(f"{task}: {int((grid < 0).sum())} codes neither known nor generated")
        return Generated(self.decode(grid), grid)

    def _refined(self, text: str | None, seed: int) -> str | None:
        if self.refine is None or not text or (self.refined and text == self.refined.caption):
            return text
        self.refined = self.refine(text, seed)
        return self.refined.caption

    # ------------------------------------------------------------------------------ inputs
    def _clip(self, video: Tensor, size, what: str) -> Tensor:
        """A known video (C,T,H,W) (or an image (C,H,W)) at `size`, cut to 1 + f*k frames."""
        if video.dim() == 3:
            video = video[:, None]
        if video.dim() != 4 or video.shape[0] != 3:
            raise ValueError(f"{what}: expected a video (3,T,H,W) or an image (3,H,W) in [-1,1], "
                             f"got shape {tuple(video.shape)}")
        usable = 1 + (video.shape[1] - 1) // self.time_factor * self.time_factor
        video = video[:, :usable]
        if size is not None and (video.shape[3], video.shape[2]) != tuple(size):
            from vidlm.data.buckets import Bucket, resize_crop

            video = resize_crop(video, Bucket(width=size[0], height=size[1], frames=video.shape[1]), None)
        return video

    @staticmethod
    def _size_of(video: Tensor) -> tuple[int, int]:
        return int(video.shape[-1]), int(video.shape[-2])

    # ------------------------------------------------------------------------------ tasks
    def t2v(self, text: str, frames: int = 17, size: tuple[int, int] = (64, 64), **opts) -> Generated:
        """Text to video: `frames` (1 + time_factor*k) frames at size (W, H)."""
        return self._run("t2v", frames, size, text, [], "t2v", **opts)

    def t2i(self, text: str, size: tuple[int, int] = (64, 64), **opts) -> Generated:
        """Text to image: a one-frame video (C,1,H,W)."""
        return self._run("t2i", 1, size, text, [], "t2i", **opts)

    def i2v(self, image: Tensor, text: str | None = None, frames: int = 17, **opts) -> Generated:
        """Image (C,H,W) in [-1,1] -> a video that starts with it."""
        image = self._clip(image, None, "i2v image")[:, :1]
        known = [(0, self.encode(image))]
        return self._run("i2v", frames, self._size_of(image), text, known, "i2v", **opts)

    def extend(self, video: Tensor, direction: str = "forward", frames: int = 17,
               text: str | None = None, **opts) -> Generated:
        """Continue a clip forward, or generate its past (direction="backward"); `frames` is the
        length of the whole output, the input's frames included."""
        if direction not in ("forward", "backward"):
            raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
        video = self._clip(video, None, "extend input")
        codes = self.encode(video)
        t = self.latent_frames(frames)
        if codes.shape[0] >= t:
            raise ValueError(f"extend: the input has {video.shape[1]} frames, so frames={frames} leaves "
                             f"nothing to generate; ask for at least {self.frames_of(codes.shape[0] + 1)}")
        start = 0 if direction == "forward" else t - codes.shape[0]
        return self._run(f"extend-{direction}", frames, self._size_of(video), text, [(start, codes)],
                         f"extend {direction}", **opts)

    def connect(self, a: Tensor, b: Tensor, frames: int = 17, text: str | None = None, **opts) -> Generated:
        """Generate the frames between clip `a` (head) and clip `b` (tail); `frames` in total."""
        a = self._clip(a, None, "connect head")
        b = self._clip(b, self._size_of(a), "connect tail")
        head, tail = self.encode(a), self.encode(b)
        t = self.latent_frames(frames)
        if head.shape[0] + tail.shape[0] >= t:
            least = self.frames_of(head.shape[0] + tail.shape[0] + 1)
            raise ValueError(f"connect: {a.shape[1]} + {b.shape[1]} known frames leave nothing to "
                             f"generate in {frames} frames; ask for at least {least}")
        known = [(0, head), (t - tail.shape[0], tail)]
        return self._run("connect", frames, self._size_of(a), text, known, "connect", **opts)

    def loop(self, video_or_text: Tensor | str, frames: int = 17, size: tuple[int, int] = (64, 64),
             text: str | None = None, **opts) -> Generated:
        """A clip whose last frame flows into its first, starting with a given clip (its head), or
        from a caption (the head is first made with t2i). The model sees the head again right
        after the end, so the frames it generates lead back into it."""
        if isinstance(video_or_text, str):
            text = video_or_text
            head = self.t2i(text, size=size, **{**opts, "progress": False}).codes
        else:
            video = self._clip(video_or_text, None, "loop input")
            size, head = self._size_of(video), self.encode(video)
        return self._run("loop", frames, size, text, [(0, head)], "loop", **opts)

    def edit(self, video: Tensor, text: str, **opts) -> Generated:
        """Re-generate a clip under a new caption; motion and layout follow the source."""
        from vidlm.lm.tasks import structure_view

        video = self._clip(video, None, "edit input")
        signal = self.encode(structure_view(video))
        return self._run("edit", video.shape[1], self._size_of(video), text, [(None, signal)],
                         "edit", **opts)

    def long(self, text_or_video: str | Tensor, seconds: float, *, fps: float = 8.0,
             size: tuple[int, int] = (64, 64), text: str | None = None, keep_frames: int | None = None,
             **opts) -> Generated:
        """A clip of `seconds` at `fps`, longer than the context: forward extension in a sliding
        window that keeps the KV cache between chunks (the oldest generated frames leave the
        cache, the last `keep_frames` latent frames stay, and so does the prompt with its caption
        and known frames; nothing is re-read)."""
        import math

        from vidlm.lm.sample import context_length

        f = self.time_factor
        frames = 1 + f * max(1, math.ceil((seconds * fps - 1) / f))
        t_total = self.latent_frames(frames)
        if isinstance(text_or_video, str):
            task, text, known = "t2v", text_or_video, []
        else:
            video = self._clip(text_or_video, None, "long input")
            size = self._size_of(video)
            task, known = "extend-forward", [(0, self.encode(video))]
        text = self._refined(text, opts.get("seed", 0))
        h, w = self.latent_size(size)
        ctx = context_length(self.lm)
        fits = [k for k in range(1, t_total + 1) if self._need(task, (k, h, w), text, known) <= ctx]
        known_t = sum(c.shape[0] for _, c in known)
        if not fits or max(fits) <= known_t + 1:
            raise ContextError(f"long: at {size[0]}x{size[1]} the model's context of {ctx} tokens "
                               f"does not hold two new latent frames after the prompt; use a smaller size")
        t_win = max(fits)
        if t_win >= t_total:
            return self._run(task, frames, size, text, known, "long", **opts)
        cond, _, _ = self._prompts(task, (t_win, h, w), text, known)
        per = h * w
        gen = torch.as_tensor(cond.gen_coords)
        block = gen[:per]
        new_t = t_total - known_t
        steps = torch.arange(new_t).repeat_interleave(per)
        coords = block.repeat(new_t, 1)
        coords[:, 0] += steps
        keep_frames = keep_frames or max(1, (t_win - known_t) // 2)
        long_prompt = dataclasses.replace(cond, gen_coords=coords)  # the place hook carries on frame by frame
        window = len(cond.ids) + len(gen)
        new = self._sample(task, (t_win, h, w), text, known, window=window, keep=keep_frames * per,
                                   period=per, prompt=long_prompt, **opts)
        grid = torch.cat([c for _, c in known] + [new.view(new_t, h, w).to(self.device)], 0)
        return Generated(self.decode(grid), grid)
