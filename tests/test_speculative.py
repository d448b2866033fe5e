"""Speculative decoding (`stream(..., draft=k)`) samples what plain decoding samples: the same
tokens for the same seed for every task, at temperature 0 and when sampling (so the same
distribution too), the same cache."""

import pytest
import torch
from conftest import two_level_config
from vidlm.lm.config import LMConfig
from vidlm.lm.model import VideoLM
from vidlm.lm.sample import CFG, allocate_cache, draft_sources, generate, stream
from vidlm.lm.tasks import Prompt

from vidlm.pipeline import VideoGenerator

TASKS = {  # task -> call on a VideoGenerator with the debug presets (time factor 4, 4-pixel cells)
    "t2v": lambda g, v, **o: g.t2v("a red circle moves right", frames=9, size=(32, 32), **o),
    "t2i": lambda g, v, **o: g.t2i("a blue square", size=(32, 32), **o),
    "i2v": lambda g, v, **o: g.i2v(v[:, 0], "moves down", frames=9, **o),
    "extend-forward": lambda g, v, **o: g.extend(v, "forward", frames=13, **o),
    "extend-backward": lambda g, v, **o: g.extend(v, "backward", frames=13, **o),
    "connect": lambda g, v, **o: g.connect(v, v.flip(1), frames=17, **o),
    "loop": lambda g, v, **o: g.loop(v, frames=13, **o),
    "edit": lambda g, v, **o: g.edit(v, "a yellow circle", **o),
    "long": lambda g, v, **o: g.long("a red circle moves right", seconds=6.0, size=(32, 32), keep_frames=2, **o),
}


@pytest.fixture(scope="module")
def debug_gen():
    return VideoGenerator.random("debug", tokenizer="debug", seed=0)


@pytest.mark.parametrize(("temperature", "jacobi"), [(0.0, "fallback"), (0.0, "first"), (1.0, "first")])
@pytest.mark.parametrize("task", list(TASKS))
def test_tokens_are_plain_tokens_for_every_task(debug_gen, task, temperature, jacobi):
    """Not only the same distribution: for the same seed, the same tokens, sampling included."""
    video = torch.rand(3, 5, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    opts = {"temperature": temperature, "top_k": 24, "cfg_text": 2.0, "seed": 0}
    plain = TASKS[task](debug_gen, video, speculative=0, **opts).codes
    fast = TASKS[task](debug_gen, video, speculative=8, jacobi=jacobi, **opts).codes
    assert torch.equal(plain, fast), task
    stats = debug_gen.stats
    assert sum(stats["proposed"].values()) > 0, task  # drafts were tried
    if jacobi == "first":
        assert stats["proposed"]["jacobi"] > 0, task
    assert sum(stats["accepted"].values()) < sum(stats["proposed"].values()), task  # and some rejected


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("task", ["t2v", "long"])
def test_two_level_codes_keep_plain_tokens(task, temperature):
    """Two-level codes learn their places as they come (Prompt.place): draft blocks stop at the
    row ends where the places may move, and the tokens stay plain decoding's."""
    gen = VideoGenerator.random("debug", tokenizer=two_level_config(), seed=0, next_query=True)
    video = torch.rand(3, 5, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    opts = {"temperature": temperature, "top_k": 24, "cfg_text": 2.0, "seed": 0}
    plain = TASKS[task](gen, video, speculative=0, **opts).codes
    fast = TASKS[task](gen, video, speculative=8, **opts).codes
    assert torch.equal(plain, fast), task
    assert sum(gen.stats["proposed"].values()) > 0, task


@pytest.mark.parametrize("task", ["t2v", "extend-backward", "long"])
def test_passes_padded_to_one_length_keep_plain_tokens(debug_gen, task, monkeypatch):
    """Under CUDA graphs (`compile_step`'s "reduce-overhead") every pass is padded to draft + 1
    tokens, so one graph serves them all: the tokens stay plain decoding's, and every pass but
    those too near the end of the clip (or of `long`'s window) has that one length."""
    video = torch.rand(3, 5, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    opts = {"temperature": 1.0, "top_k": 24, "cfg_text": 2.0, "seed": 0}
    plain = TASKS[task](debug_gen, video, speculative=0, **opts).codes
    lm, widths = debug_gen.lm, []
    step = lm.step
    monkeypatch.setattr(lm, "step", lambda ids, *rest: widths.append(ids.shape[1]) or step(ids, *rest), raising=False)
    monkeypatch.setattr(lm, "pads_passes", True, raising=False)
    fast = TASKS[task](debug_gen, video, speculative=8, **opts).codes
    assert torch.equal(plain, fast), task
    assert widths.count(9) > 0.8 * len(widths) and set(widths) <= set(range(1, 10)), widths


def test_trained_model_keeps_most_drafts_and_needs_fewer_passes():
    gen = VideoGenerator.from_pretrained("shapes-demo")
    caption = "a red circle bouncing to the right on a black background"
    plain = gen.t2v(caption, temperature=0.0, cfg_text=3.0, speculative=0).codes
    fast = gen.t2v(caption, temperature=0.0, cfg_text=3.0).codes
    assert torch.equal(plain, fast)
    stats = gen.stats
    assert stats["forwards"] + 1 < stats["tokens"] / 2, stats  # > 2 codes per forward pass
    kept = sum(stats["accepted"].values()) / sum(stats["proposed"].values())
    assert kept > 0.5, stats


def tiny_setup():
    """The debug LM on 40 ids; 8 legal "codes" (20..27). Known codes at (0, 0, x), x < 6, so
    every position to generate, (1, 0, x), has a previous-frame draft."""
    torch.manual_seed(0)
    model = VideoLM(LMConfig.from_name("debug", vocab_size=40)).eval()
    known = torch.tensor([20, 21, 22, 23, 24, 25])
    ids = torch.cat([torch.tensor([1, 2, 3]), known])
    coords = torch.cat([torch.zeros(3, 3, dtype=torch.long),
                        torch.stack([torch.zeros(6), torch.zeros(6), torch.arange(6)], 1).long()])
    gen = torch.stack([torch.ones(6), torch.zeros(6), torch.arange(6)], 1).long()
    cond = Prompt(ids=ids, coords=coords, gen_coords=gen)
    no_text = Prompt(ids=ids[3:], coords=coords[3:], gen_coords=gen)
    return model, cond, CFG(text=2.0, visual=2.0, no_text=no_text, uncond=no_text)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_drafts_stop_where_a_place_hook_moves_coordinates(temperature):
    """A prompt whose place hook moves every later position after each row of 3 (as two-level
    codes' places follow the sampled coarse codes): the queries turn with those places
    (next_query), and speculative decoding still samples plain decoding's tokens."""
    torch.manual_seed(0)
    model = VideoLM(LMConfig.from_name("debug", vocab_size=40, next_query=True)).eval()
    n = 12

    def place(i, ids):  # after a row: the rest lands somewhere the row's codes choose
        if (i + 1) % 3:
            return None
        rest = torch.arange(i + 1, n)
        return torch.stack([torch.ones_like(rest), rest // 3, (rest + 5 * int(ids.sum())) % 11], 1)

    gen = torch.stack([torch.ones(n), torch.arange(n) // 3, torch.arange(n) % 3], 1).long()
    prompt = Prompt(ids=torch.tensor([1, 2, 3]), coords=torch.zeros(3, 3, dtype=torch.long), gen_coords=gen,
                    place=place, place_every=3)
    opts = {"temperature": temperature, "legal": (20, 28)}
    for seed in range(4):
        stats = {}
        plain = generate(model, prompt, generator=torch.Generator().manual_seed(seed), **opts)
        fast = generate(model, prompt, generator=torch.Generator().manual_seed(seed), draft=4, stats=stats, **opts)
        assert torch.equal(plain, fast), seed
        assert sum(stats["accepted"].values()) > 0


def test_draft_sources_follow_coordinates():
    _, prompt, _ = tiny_setup()
    source, kind, known = draft_sources(prompt, (20, 28))
    assert known.tolist() == [20, 21, 22, 23, 24, 25]
    assert source.tolist() == list(range(6)) and kind.tolist() == [0] * 6  # (0, 0, x): one frame back
    left = Prompt(ids=torch.tensor([1]), coords=torch.zeros(1, 3, dtype=torch.long), gen_coords=prompt.gen_coords)
    source, kind, known = draft_sources(left, (20, 28))
    assert source.tolist() == [-1, 0, 1, 2, 3, 4] and kind[1:].tolist() == [1] * 5  # the code to the left
    spaced = prompt.gen_coords * torch.tensor([1, 4, 4]) + torch.tensor([0, 2, 2])  # where two-level codes sit
    left = Prompt(ids=left.ids, coords=left.coords, gen_coords=spaced)
    assert draft_sources(left, (20, 28))[0].tolist() == [-1, 0, 1, 2, 3, 4]  # the nearest one to the left


@pytest.mark.parametrize("jacobi", ["fallback", "first"])
def test_sampled_distribution_matches_plain_sampling(jacobi):
    """Chi-square test of homogeneity, per generated position, between 1500 plain samples and
    1500 speculative ones (8 categories, df = 7; 24.3 is the 0.1 % critical value). Every
    position has a previous-frame draft; with jacobi="first" (the default) the model's guesses
    go first, with "fallback" only where no coordinate gives one."""
    model, prompt, cfg = tiny_setup()
    n, opts = 1500, {"temperature": 0.7, "top_k": 6, "legal": (20, 28)}
    many = CFG(text=cfg.text, visual=cfg.visual, no_text=[cfg.no_text] * n, uncond=[cfg.uncond] * n)
    plain = generate(model, [prompt] * n, cfg=many, generator=torch.Generator().manual_seed(0), **opts)
    stats, spec = {}, []
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        spec.append(generate(model, prompt, cfg=cfg, generator=g, draft=4, jacobi=jacobi, stats=stats, **opts)[0])
    spec = torch.stack(spec)
    proposed, kept = sum(stats["proposed"].values()), sum(stats["accepted"].values())
    assert 0 < kept < proposed  # both branches ran: kept drafts and rejections
    assert (stats["proposed"]["jacobi"] > 0) == (jacobi == "first")
    for pos in range(6):
        a = torch.bincount(plain[:, pos] - 20, minlength=8).double()
        b = torch.bincount(spec[:, pos] - 20, minlength=8).double()
        expected = (a + b) / 2
        seen = expected > 0
        chi2 = (((a - expected) ** 2 + (b - expected) ** 2)[seen] / expected[seen]).sum()
        assert chi2 < 24.3, (pos, a.tolist(), b.tolist())


@pytest.mark.parametrize("pads", [False, True])
def test_cache_after_rejections_is_the_plain_cache(pads):
    model, prompt, cfg = tiny_setup()
    model.pads_passes = pads  # padded passes (CUDA graphs) write past the kept tokens too
    caches, tokens = [], []
    for draft in (0, 4):
        cache = allocate_cache(model, 2, 32)
        stats = {}
        tokens.append(torch.cat(list(stream(model, prompt, cfg=cfg, temperature=0, legal=(20, 28), cache=cache,
                                            draft=draft, stats=stats))))
        caches.append(cache)
    assert torch.equal(*tokens)
    assert sum(stats["proposed"].values()) > sum(stats["accepted"].values())  # some drafts were rolled back
    plain, fast = caches
    assert fast.length == plain.length
    assert torch.equal(fast.doc, plain.doc)  # -1 after the filled part: rejected drafts are gone
    n = plain.length
    torch.testing.assert_close(fast.k[:, :, :n], plain.k[:, :, :n], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.v[:, :, :n], plain.v[:, :, :n], atol=1e-5, rtol=1e-5)
