"""The video-level API (vidlm.VideoGenerator) on `debug` models with random weights.

The README's video-level example (on the shipped weights) runs in tests/test_readme.py.
"""

import dataclasses
import math

import pytest
import torch
from conftest import two_level_config
from vidlm.lm.sample import ContextError

from vidlm.pipeline import VideoGenerator, seam_score

SIZE = (16, 16)


@pytest.fixture(scope="module", params=["debug", "two-level"])
def gen(request):
    torch.manual_seed(0)
    tok = request.param if request.param == "debug" else two_level_config()
    return VideoGenerator.random("debug", tokenizer=tok, next_query=request.param == "two-level")


def clip(frames, seed=0, size=SIZE):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, frames, size[1], size[0], generator=g) * 2 - 1


def check(out, frames, size=SIZE):
    video, codes = out
    assert video.shape == (3, frames, size[1], size[0])
    assert video.min() >= -1 and video.max() <= 1
    assert codes.dtype == torch.long and codes.min() >= 0
    return video, codes


def test_t2v_t2i_shapes_and_seed(gen):
    a = check(gen.t2v("a red circle", frames=5, size=SIZE, seed=1), 5)
    b = check(gen.t2v("a red circle", frames=5, size=SIZE, seed=1), 5)
    c = check(gen.t2v("a red circle", frames=5, size=SIZE, seed=2), 5)
    assert torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])
    check(gen.t2i("a blue square", size=SIZE, seed=0), 1)


def test_known_frames_come_back_unchanged(gen):
    head, tail = clip(5, 1), clip(5, 2)
    ch, ct = gen.encode(head), gen.encode(tail)
    _, codes = check(gen.i2v(head[:, 0], "moves", frames=9), 9)
    assert torch.equal(codes[:1], gen.encode(head[:, :1]))
    _, codes = check(gen.extend(head, "forward", frames=13, text="moves"), 13)
    assert torch.equal(codes[: len(ch)], ch)
    _, codes = check(gen.extend(tail, "backward", frames=13), 13)
    assert torch.equal(codes[-len(ct):], ct)
    _, codes = check(gen.connect(head, tail, frames=17, text="moves"), 17)
    assert torch.equal(codes[: len(ch)], ch) and torch.equal(codes[-len(ct):], ct)
    _, codes = check(gen.loop(head, frames=13), 13)
    assert torch.equal(codes[: len(ch)], ch)


def test_loop_and_edit_run(gen):
    check(gen.loop("a green triangle", frames=9, size=SIZE, cfg_text=2.0), 9)
    check(gen.edit(clip(9), "a yellow circle", cfg_text=2.0, cfg_visual=1.5, top_k=8), 9)


def test_long_slides_past_the_context_without_rereading(gen, monkeypatch):
    ctx = gen.lm.cfg.max_seq_len
    per = math.prod(gen.latent_size(SIZE))
    seconds = (ctx // per + 8) * gen.time_factor / 8.0  # more latent frames than the context holds
    fed = []  # tokens per pass: the prefill (forward), then the decode steps (step)
    hook = gen.lm.register_forward_hook(lambda m, args, kw, out: fed.append(args[0].shape[1]), with_kwargs=True)
    step = gen.lm.step
    monkeypatch.setattr(gen.lm, "step", lambda ids, *rest, **kw: fed.append(ids.shape[1]) or step(ids, *rest, **kw))
    try:
        video, codes = gen.long("a red circle", seconds=seconds, fps=8.0, size=SIZE, seed=0, speculative=0)
    finally:
        hook.remove()
    assert codes.shape[0] * per > ctx
    assert video.shape[1] == 1 + (codes.shape[0] - 1) * gen.time_factor
    # one prefill, then one token per step (plain decoding; speculative passes add drafts, and
    # tests/test_speculative.py checks that they slide the same way): nothing is re-read
    assert fed[0] < ctx and all(n == 1 for n in fed[1:]) and len(fed) == codes.numel()


def test_long_keeps_its_caption_and_its_known_frames_after_the_window_slides(gen, monkeypatch):
    from vidlm.lm.model import KVCache

    ctx = gen.lm.cfg.max_seq_len
    per = math.prod(gen.latent_size(SIZE))
    seconds = (ctx // per + 8) * gen.time_factor / 8.0
    # every slide keeps the whole prompt (caption included) as the cache's first entries, as it
    # was: a structural check, since random weights barely read the text
    widths, slides = [], []
    hook = gen.lm.register_forward_hook(lambda m, args, kw, out: widths.append(args[0].shape[1]), with_kwargs=True)
    keep_last = KVCache.keep_last

    def spy(cache, n, sink=0):
        before = cache.k[:, :, :sink].clone(), cache.doc[:, :sink].clone()
        keep_last(cache, n, sink)
        slides.append((sink, torch.equal(cache.k[:, :, :sink], before[0]) and torch.equal(cache.doc[:, :sink], before[1])))

    monkeypatch.setattr(KVCache, "keep_last", spy)
    try:
        codes = gen.long("a red circle", seconds=seconds, fps=8.0, size=SIZE, seed=0, cfg_text=3.0).codes
    finally:
        hook.remove()
    assert codes.shape[0] * per > ctx and slides
    assert all(sink == widths[0] and kept for sink, kept in slides), (widths[0], slides)
    head = clip(5)
    codes = gen.long(head, seconds=seconds, fps=8.0, text="a red circle", seed=0).codes
    assert codes.shape[0] * per > ctx and torch.equal(codes[: gen.encode(head).shape[0]], gen.encode(head))


def test_request_too_large_says_what_fits(gen):
    with pytest.raises(ContextError, match=r"at most \d+ frames fit"):
        gen.t2v("a red circle", frames=1 + 4 * 63, size=SIZE)  # 64 latent frames, the most a grid has
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        gen.t2v("a red circle", frames=6, size=SIZE)


def test_save_and_load_round_trip(gen, tmp_path):
    gen.save_pretrained(tmp_path)
    again = VideoGenerator.from_pretrained(tmp_path)
    a = gen.t2v("a red circle", frames=5, size=SIZE, seed=3).codes
    assert torch.equal(again.t2v("a red circle", frames=5, size=SIZE, seed=3).codes, a)
    with pytest.raises(FileNotFoundError, match="no weights named 'no-such-model'"):
        VideoGenerator.from_pretrained("no-such-model")


def test_codes_sit_where_the_lm_was_trained_to_see_them(gen):
    """An LM trained on two-level codes at their places samples them there; one trained on grid
    coordinates (LMConfig.code_places false) keeps grid coordinates with the same tokenizer; an LM
    that needs places with a one-level tokenizer is refused."""
    two_level = bool(gen.tokenizer.cfg.refine_rows)
    assert (gen.places is not None) == two_level
    grid = VideoGenerator(gen.tokenizer, gen.text_tokenizer, type(gen.lm)(
        dataclasses.replace(gen.lm.cfg, code_places=False)), gen.vocab)
    assert grid.places is None
    check(grid.t2v("a red circle", frames=5, size=SIZE), 5)
    if not two_level:
        with pytest.raises(ValueError, match="trained on two-level codes"):
            VideoGenerator(gen.tokenizer, gen.text_tokenizer, type(gen.lm)(
                dataclasses.replace(gen.lm.cfg, code_places=True)), gen.vocab)


def test_seam_score():
    ramp = torch.linspace(-1, 1, 9)[None, :, None, None].expand(3, 9, 4, 4)
    assert seam_score(ramp) == pytest.approx(8.0)  # the seam jumps 8 steps back
    up_down = torch.tensor([0.0, 1, 2, 3, 4, 3, 2, 1])[None, :, None, None].expand(3, 8, 4, 4) / 4
    assert seam_score(up_down) == pytest.approx(1.0)  # the seam is one more step of the same size


DECODE_MEMORY = """
import sys, torch
from vidlm.pipeline import VideoGenerator

def status(key):  # kB, from the kernel's own accounting of this process
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key + ":"))

torch.set_num_threads(1)
gen = VideoGenerator.random("debug", tokenizer="demo")
t, chunked = int(sys.argv[1]), sys.argv[2] == "chunked"
codes = torch.randint(0, gen.tokenizer.codebook_size, (t, 8, 8))
decode = gen.decode if chunked else (lambda c: gen.tokenizer.decode(c[None])[0])
decode(codes[:2])
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak resident set size (VmHWM) to the current one
before = status("VmRSS")
video = decode(codes)
print((status("VmHWM") - before) * 1024 - video.numel() * 4)
"""


def test_decoding_memory_stays_flat_in_the_video_length():
    # Peak memory beyond the decoded video itself (the kernel's peak RSS, reset before the
    # decode), in fresh processes with glibc's mmap threshold fixed so that freed blocks leave
    # the resident set: the generator's chunked decode (what `long` and every task use) stays
    # flat from 31 to 255 frames (64 MB on the development machine); a one-shot decode grows.
    import os
    import subprocess
    import sys

    # a clean environment: earlier tests (DeepSpeed's init) leave variables behind in this process
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"),
           "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "1", "OMP_NUM_THREADS": "1"}

    def extra(t, how):
        out = subprocess.run([sys.executable, "-c", DECODE_MEMORY, str(t), how], env=env, check=True,
                             capture_output=True, text=True).stdout
        return int(out.split()[-1]) / 2**20

    short, long = extra(16, "chunked"), extra(128, "chunked")
    assert long < short + 16, f"chunked decode: {short:.1f} MB beyond the video at 31 frames, {long:.1f} at 255"
    short, long = extra(16, "one-shot"), extra(64, "one-shot")
    assert long > short + 50, f"one-shot: {short:.1f} -> {long:.1f} MB: the measurement must see growth"
