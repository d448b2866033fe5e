"""Token-level sampling (vidlm.lm.sample) on a tiny hand-made model and on a `debug` VideoLM.

The README's token-level example runs in tests/test_readme.py.
"""

from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from vidlm.lm.sample import CFG, ContextError, cfg_groups, generate, sample_logits, stream


# ---------------------------------------------------------------- a tiny model with the interface
class TinyCache:
    """The KVCache interface in miniature: k, v, doc ids, length, keep_last."""

    def __init__(self, batch, max_len, dim):
        self.k = torch.zeros(batch, max_len, dim)
        self.v = torch.zeros(batch, max_len, dim)
        self.doc = torch.full((batch, max_len), -1, dtype=torch.long)
        self.length = 0

    def keep_last(self, n, sink=0):
        for t in (self.k, self.v, self.doc):
            t[:, sink : sink + n] = t[:, self.length - n : self.length].clone()
        self.length = sink + n


class TinyLM(nn.Module):
    """One attention layer; coordinates enter as a learned linear map (no RoPE needed here)."""

    def __init__(self, vocab=40, dim=16, max_seq_len=64, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.cfg = SimpleNamespace(max_seq_len=max_seq_len, vocab_size=vocab)
        self.emb = nn.Embedding(vocab, dim)
        self.pos = nn.Linear(3, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.head = nn.Linear(dim, vocab)

    def new_cache(self, batch, max_len):
        return TinyCache(batch, max_len, self.emb.embedding_dim)

    def forward(self, ids, coords, *, cache=None, doc_ids=None, last_only=False):
        _b, n = ids.shape
        doc_ids = torch.zeros_like(ids) if doc_ids is None else doc_ids
        x = self.emb(ids) + self.pos(coords.float() / 8)
        q, k, v = self.qkv(x).chunk(3, -1)
        if cache is not None:
            s = cache.length
            cache.k[:, s : s + n], cache.v[:, s : s + n], cache.doc[:, s : s + n] = k, v, doc_ids
            cache.length += n
            k, v, kdoc = cache.k[:, : s + n], cache.v[:, : s + n], cache.doc[:, : s + n]
        else:
            s, kdoc = 0, doc_ids
        qi = torch.arange(s, s + n)[:, None]
        kj = torch.arange(k.shape[1])[None]
        mask = (kj <= qi)[None] & (kdoc[:, None, :] == doc_ids[:, :, None]) & (kdoc[:, None, :] >= 0)
        att = (q @ k.transpose(1, 2) / 4).masked_fill(~mask, float("-inf")).softmax(-1)
        logits = self.head(x + (att.nan_to_num() @ v))
        return logits[:, -1:] if last_only else logits


@dataclass
class P:
    """A prompt: ids (L,), coords (L,3), gen_coords (N,3) (the shape of vidlm.lm.tasks.Prompt)."""

    ids: torch.Tensor
    coords: torch.Tensor
    gen_coords: torch.Tensor


def make_prompt(n_prompt, n_gen, seed=0, vocab=10):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n_prompt,), generator=g)
    coords = torch.arange(n_prompt)[:, None].repeat(1, 3)
    gen = torch.stack([torch.arange(n_gen) // 4, (torch.arange(n_gen) // 2) % 2, torch.arange(n_gen) % 2], 1)
    return P(ids, coords, gen + n_prompt)


LEGAL = (20, 40)  # "codes"


def run(model, prompt, seed=0, **kw):
    kw.setdefault("legal", LEGAL)
    if isinstance(model, TinyLM) and kw.get("use_cache", True) and "cache" not in kw:
        rows = sum(len(v) for _, v in cfg_groups(prompt, kw.get("cfg")))
        kw["cache"] = model.new_cache(rows, 64)
    return generate(model, prompt, generator=torch.Generator().manual_seed(seed), **kw)


# ---------------------------------------------------------------------------------------- tests
def test_cached_equals_uncached_tiny():
    model = TinyLM()
    prompts = [make_prompt(5, 12, seed=1), make_prompt(9, 12, seed=2)]
    cfg = CFG(text=2.0, visual=1.5, no_text=[make_prompt(3, 12, 3)] * 2, uncond=[make_prompt(2, 12, 4)] * 2)
    for kw in ({}, {"cfg": cfg}, {"top_k": 5, "top_p": 0.9, "temperature": 0.7}):
        a = run(model, prompts, seed=7, **kw)
        b = run(model, prompts, seed=7, use_cache=False, **kw)
        assert a.shape == (2, 12)
        assert torch.equal(a, b), kw


def test_top_k_1_is_greedy_and_top_p_tiny_is_greedy():
    model = TinyLM()
    prompt = make_prompt(6, 10)
    greedy = run(model, prompt, temperature=0)
    assert torch.equal(run(model, prompt, top_k=1, seed=3), greedy)
    assert torch.equal(run(model, prompt, top_p=1e-6, seed=4), greedy)
    logits = torch.randn(5, 30)
    assert torch.equal(sample_logits(logits, top_k=1, generator=torch.Generator().manual_seed(0)), logits.argmax(-1))


def test_guidance_zero_is_unconditional_and_one_is_conditional():
    model = TinyLM()
    cond, no_text, bare = make_prompt(8, 10, 1), make_prompt(5, 10, 2), make_prompt(3, 10, 3)
    cfg = {"no_text": no_text, "uncond": bare}
    assert torch.equal(run(model, cond, cfg=CFG(text=0, visual=0, **cfg)), run(model, bare))
    assert torch.equal(run(model, cond, cfg=CFG(text=1, visual=1, **cfg)), run(model, cond))
    assert torch.equal(run(model, cond, cfg=CFG(text=0, visual=1, **cfg)), run(model, no_text))
    # A real mixture differs from both and equals the formula applied by hand (greedy).
    mixed = run(model, cond, cfg=CFG(text=3.0, visual=2.0, **cfg), temperature=0, max_new_tokens=1)
    last = lambda p: model(p.ids[None], p.coords[None])[0, -1, 20:40]
    c, v, u = last(cond), last(no_text), last(bare)
    assert mixed.item() == 20 + (u + 2.0 * (v - u) + 3.0 * (c - v)).argmax().item()


def test_guidance_needs_the_variants_it_weighs():
    with pytest.raises(ValueError, match="uncond"):
        run(TinyLM(), make_prompt(4, 4), cfg=CFG(text=2.0, visual=2.0))


def test_left_padded_batch_equals_single_prompts():
    model = TinyLM()
    a, b = make_prompt(3, 8, 1), make_prompt(11, 8, 2)
    both = run(model, [a, b], temperature=0)
    assert torch.equal(both[0], run(model, a, temperature=0)[0])
    assert torch.equal(both[1], run(model, b, temperature=0)[0])


def test_never_samples_an_illegal_id():
    model = TinyLM()
    with torch.no_grad():
        model.head.bias[:20] += 50.0  # the model loves the illegal ids
    out = run(model, [make_prompt(4, 30, s) for s in range(4)], temperature=2.0, seed=1)
    assert out.min() >= LEGAL[0] and out.max() < LEGAL[1]


def test_request_too_long_says_what_fits():
    model = TinyLM(max_seq_len=20)
    with pytest.raises(ContextError, match=r"holds 20; at most 12 tokens"):
        run(model, make_prompt(8, 13))


def test_stream_yields_the_same_tokens_as_generate():
    model = TinyLM()
    prompt = make_prompt(5, 9)
    kw = {"legal": LEGAL, "temperature": 0.8, "generator": torch.Generator().manual_seed(5)}
    got = list(stream(model, prompt, cache=model.new_cache(1, 64), **kw))
    assert len(got) == 9 and all(t.shape == (1,) for t in got)
    assert torch.equal(torch.stack(got, 1), run(model, prompt, seed=5, temperature=0.8))


def test_sliding_window_generates_past_the_context():
    model = TinyLM(max_seq_len=16)
    prompt = make_prompt(4, 40)
    out = run(model, prompt, window=16, keep=8, cache=model.new_cache(1, 16), temperature=0)
    assert out.shape == (1, 40)
    # While the window is not full, it is the same as plain generation.
    assert torch.equal(out[:, :12], run(model, make_prompt(4, 12), temperature=0))


def test_sliding_window_keeps_the_prompt_as_a_sink():
    # TinyLM's keys and values depend on each token alone, so a windowed step must equal a fresh
    # greedy step over exactly what the window keeps: the whole prompt and the last kept tokens.
    model, window, keep = TinyLM(max_seq_len=16), 16, 5
    prompt = make_prompt(6, 30)
    cache = model.new_cache(1, window)
    out = run(model, prompt, window=window, keep=keep, cache=cache, temperature=0)[0]
    # after many slides the cache still starts with the prompt's own keys
    with torch.no_grad():
        fresh = model.new_cache(1, window)
        model(prompt.ids[None], prompt.coords[None], cache=fresh)
    n = len(prompt.ids)
    assert torch.equal(cache.k[:, :n], fresh.k[:, :n]) and torch.equal(cache.doc[:, :n], fresh.doc[:, :n])
    cached, replayed = 0, 0  # generated tokens in the cache; steps checked after a slide
    for i in range(1, len(out)):  # token i is sampled after token i-1 is fed
        if len(prompt.ids) + cached >= window:
            cached = keep
        cached += 1
        if cached < i:  # the window has slid: tokens before i - cached are gone, the prompt is not
            kept = slice(i - cached, i)
            ids = torch.cat([prompt.ids, out[kept]])[None]
            coords = torch.cat([prompt.coords, prompt.gen_coords[kept]])[None]
            logits = model(ids, coords)[0, -1, LEGAL[0]:LEGAL[1]]
            assert int(logits.argmax()) + LEGAL[0] == int(out[i]), i
            replayed += 1
    assert replayed > 10
    # and the prompt matters after the slide: another first prompt token changes late tokens
    other = make_prompt(6, 30)
    other.ids[0] = (other.ids[0] + 1) % 10
    late = run(model, other, window=window, keep=keep, cache=model.new_cache(1, window), temperature=0)[0]
    assert not torch.equal(late[-8:], out[-8:])


# ------------------------------------------------------------------- the real model, debug preset
@pytest.fixture(scope="module")
def debug_lm():
    from vidlm.lm.config import LMConfig
    from vidlm.lm.model import VideoLM

    torch.manual_seed(0)
    return VideoLM(LMConfig.from_name("debug", vocab_size=64)).eval()


def test_debug_videolm_cached_equals_uncached_with_cfg_and_padding(debug_lm):
    prompts = [make_prompt(7, 24, seed=1), make_prompt(12, 24, seed=2)]
    cfg = CFG(text=2.5, visual=1.5, no_text=[make_prompt(5, 24, 3)] * 2, uncond=[make_prompt(3, 24, 4)] * 2)
    kw = {"legal": (32, 64), "temperature": 1.0, "top_k": 16, "cfg": cfg}
    a = generate(debug_lm, prompts, generator=torch.Generator().manual_seed(0), **kw)
    b = generate(debug_lm, prompts, generator=torch.Generator().manual_seed(0), use_cache=False, **kw)
    assert torch.equal(a, b)
    assert a.min() >= 32 and a.max() < 64


def test_debug_videolm_context_error(debug_lm):
    with pytest.raises(ContextError, match="holds 512"):
        generate(debug_lm, make_prompt(500, 13), legal=(32, 64))



def test_placed_codes_sample_where_training_puts_them():
    """Two-level codes and next_query: fine codes sit where their frame's coarse codes place them
    (the prompt's place hook), so greedy sampling picks exactly what a training forward of the
    sampled codes predicts, token by token, cached or not."""
    from conftest import two_level_config
    from vidlm.lm.config import LMConfig
    from vidlm.lm.model import VideoLM
    from vidlm.lm.tasks import render_prompt, render_train
    from vidlm.lm.vocab import Vocab
    from vidlm.tokenizer.model import VideoTokenizer

    torch.manual_seed(0)
    tok = VideoTokenizer(two_level_config()).eval()
    vocab = Vocab(text_size=8, code_size=tok.codebook_size)
    lm = VideoLM(LMConfig.from_name("debug", vocab_size=vocab.size, next_query=True)).eval()
    head = torch.randint(tok.codebook_size, (1, 6, 4))  # 32x32: 4x4 coarse codes + 2 rows of fine codes
    prompt = render_prompt("extend-forward", vocab, grid=(3, 6, 4), known=[(0, head)], places=tok.code_places)
    new = generate(lm, prompt, legal=vocab.code_range, temperature=0)
    assert torch.equal(new, generate(lm, prompt, legal=vocab.code_range, temperature=0, use_cache=False))
    codes = torch.cat([head, vocab.ids_to_codes(new[0]).view(2, 6, 4)])
    seq = render_train("extend-forward", vocab, codes=codes, known=[(0, head)], places=tok.code_places)
    gen = seq.coords[seq.loss_mask]
    assert torch.equal(gen[:16, 1:], prompt.gen_coords[:16, 1:])  # coarse codes: known places
    assert torch.equal(gen[16:24], torch.cat([torch.full((8, 1), 1), tok.code_places(codes[1])[4:].reshape(8, 2)], 1))
    logits = lm(seq.ids[None], seq.coords[None])[0]
    lo, hi = vocab.code_range
    before = torch.nonzero(seq.loss_mask)[:, 0] - 1  # position i - 1 predicts token i
    assert torch.equal(logits[before, lo:hi].argmax(-1) + lo, new[0])
