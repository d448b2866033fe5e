"""The video-level API (vidlm.VideoGenerator) on `debug` models with random weights.

The README's video-level example (on the shipped weights) runs in tests/test_readme.py.
"""

import pytest
import torch
from vidlm.lm.pipeline import VideoGenerator, seam_score
from vidlm.lm.sample import ContextError

SIZE = (16, 16)


@pytest.fixture(scope="module")
def gen():
    torch.manual_seed(0)
    return VideoGenerator.random("debug", tokenizer="debug")


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


def test_long_slides_past_the_context_without_rereading(gen):
    ctx = gen.lm.cfg.max_seq_len
    per = (SIZE[0] // gen.space_factor) * (SIZE[1] // gen.space_factor)
    seconds = (ctx // per + 8) * gen.time_factor / 8.0  # more latent frames than the context holds
    fed = []
    hook = gen.lm.register_forward_hook(lambda m, args, kw, out: fed.append(args[0].shape[1]), with_kwargs=True)
    try:
        video, codes = gen.long("a red circle", seconds=seconds, fps=8.0, size=SIZE, seed=0)
    finally:
        hook.remove()
    assert codes.shape[0] * per > ctx
    assert video.shape[1] == 1 + (codes.shape[0] - 1) * gen.time_factor
    # one prefill, then one token per step: nothing is re-read when the window slides
    assert fed[0] < ctx and all(n == 1 for n in fed[1:]) and len(fed) == codes.numel()


def test_long_keeps_its_caption_and_its_known_frames_after_the_window_slides(gen):
    ctx = gen.lm.cfg.max_seq_len
    per = (SIZE[0] // gen.space_factor) * (SIZE[1] // gen.space_factor)
    seconds = (ctx // per + 8) * gen.time_factor / 8.0
    # random weights barely read the text: strong text guidance makes the caption count
    a = gen.long("a red circle", seconds=seconds, fps=8.0, size=SIZE, seed=0, cfg_text=20.0).codes
    b = gen.long("a blue square", seconds=seconds, fps=8.0, size=SIZE, seed=0, cfg_text=20.0).codes
    slid = ctx // per  # latent frames from here on are generated after the window slid
    assert a.shape[0] > slid and not torch.equal(a[slid:], b[slid:])
    head = clip(5)
    codes = gen.long(head, seconds=seconds, fps=8.0, text="a red circle", seed=0).codes
    assert codes.shape[0] * per > ctx and torch.equal(codes[: gen.encode(head).shape[0]], gen.encode(head))


def test_request_too_large_says_what_fits(gen):
    with pytest.raises(ContextError, match=r"at most \d+ frames fit"):
        gen.t2v("a red circle", frames=1 + 4 * 60, size=SIZE)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        gen.t2v("a red circle", frames=6, size=SIZE)


def test_save_and_load_round_trip(gen, tmp_path):
    gen.save_pretrained(tmp_path)
    again = VideoGenerator.from_pretrained(tmp_path)
    a = gen.t2v("a red circle", frames=5, size=SIZE, seed=3).codes
    assert torch.equal(again.t2v("a red circle", frames=5, size=SIZE, seed=3).codes, a)
    with pytest.raises(FileNotFoundError, match="no weights named 'no-such-model'"):
        VideoGenerator.from_pretrained("no-such-model")


def test_seam_score():
    ramp = torch.linspace(-1, 1, 9)[None, :, None, None].expand(3, 9, 4, 4)
    assert seam_score(ramp) == pytest.approx(8.0)  # the seam jumps 8 steps back
    up_down = torch.tensor([0.0, 1, 2, 3, 4, 3, 2, 1])[None, :, None, None].expand(3, 8, 4, 4) / 4
    assert seam_score(up_down) == pytest.approx(1.0)  # the seam is one more step of the same size
