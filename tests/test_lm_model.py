"""VideoLM invariants: KV cache, causality, relative 3D positions, 1D RoPE on the diagonal,
document masks and padding, and the attention backends."""

import pytest
import torch
from vidlm.lm.attention import attention, block_mask, flash_available, layer_plan
from vidlm.lm.config import PRESETS, LMConfig
from vidlm.lm.model import KVCache, VideoLM, apply_rope

torch.set_num_threads(1)
V = 97


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VideoLM(LMConfig.from_name("debug", vocab_size=V, n_layers=2)).eval()


def rand_seq(b, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (b, n), generator=g)
    coords = torch.randint(0, 12, (b, n, 3), generator=g)
    return ids, coords


def test_presets_build_and_count_params():
    for name, cfg in PRESETS.items():
        assert cfg.dim % cfg.n_heads == 0 and cfg.n_heads % cfg.kv_heads == 0, name
    m = VideoLM(LMConfig.from_name("debug"))
    assert sum(p.numel() for p in m.parameters()) == m.cfg.num_params()
    sizes = {n: PRESETS[n].num_params(embeddings=False) / 1e6 for n in ("S", "M", "L", "XL")}  # ~100M..3B
    assert 80 < sizes["S"] < 130 and 250 < sizes["M"] < 450 and 900 < sizes["L"] < 1400 and 2500 < sizes["XL"] < 4000
    with pytest.raises(ValueError, match="n_kv_heads"):
        LMConfig(dim=64, n_heads=4, n_kv_heads=3)


@torch.no_grad()
def test_cached_equals_uncached_with_sliding_window(model):
    ids, coords = rand_seq(2, 40)
    full = model(ids, coords)
    cache = KVCache.allocate(model.cfg, 2, 40)
    parts = [model(ids[:, :17], coords[:, :17], cache=cache)]
    parts += [model(ids[:, i : i + 1], coords[:, i : i + 1], cache=cache) for i in range(17, 30)]
    parts.append(model(ids[:, 30:], coords[:, 30:], cache=cache))
    assert cache.length == 40
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(ids, coords, last_only=True), full[:, -1:], atol=1e-5, rtol=1e-5)
    # keep_last: what follows only sees the kept tokens, at their original coordinates. With one
    # layer a kept token's key/value does not depend on the dropped past, so this is exact.
    torch.manual_seed(3)
    one = VideoLM(LMConfig.from_name("debug", vocab_size=V, n_layers=1)).eval()
    cache = KVCache.allocate(one.cfg, 2, 32)
    one(ids[:, :30], coords[:, :30], cache=cache)
    cache.keep_last(12)
    step = torch.cat([one(ids[:, i : i + 1], coords[:, i : i + 1], cache=cache) for i in range(30, 36)], 1)
    ref = one(ids[:, 18:36], coords[:, 18:36])[:, 12:]
    torch.testing.assert_close(step, ref, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_causal(model):
    ids, coords = rand_seq(1, 24)
    a = model(ids, coords)
    ids2, coords2 = ids.clone(), coords.clone()
    ids2[:, 15:] = (ids2[:, 15:] + 1) % V
    coords2[:, 15:] += 3
    b = model(ids2, coords2)
    torch.testing.assert_close(a[:, :15], b[:, :15], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(a[:, 15:], b[:, 15:])


@torch.no_grad()
def test_only_relative_positions_matter(model):
    ids, coords = rand_seq(2, 30)
    base = model(ids, coords)
    for axis, shift in ((0, 37), (1, 5), (2, 11)):
        moved = coords.clone()
        moved[..., axis] += shift
        torch.testing.assert_close(model(ids, moved), base, atol=2e-4, rtol=1e-4)
    swapped = coords.clone()
    swapped[:, 3:6, 0] += 1  # but moving some tokens does change things
    assert not torch.allclose(model(ids, swapped), base, atol=1e-3)


def rope_1d(x, pos, theta):
    """Reference 1D RoPE (rotate-half, Llama) at integer positions pos (L,)."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = pos[:, None].double() * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos().float(), torch.cat([ang, ang], -1).sin().float()
    x1, x2 = x.chunk(2, -1)
    return x * cos[None, :, None] + torch.cat([-x2, x1], -1) * sin[None, :, None]


def test_diagonal_is_1d_rope():
    from vidlm.lm.model import rope_angles

    x = torch.randn(1, 50, 3, 32)
    pos = torch.arange(100, 150)
    cos, sin = rope_angles(pos[None, :, None].expand(1, 50, 3), 32, 10000.0)
    torch.testing.assert_close(apply_rope(x, cos, sin), rope_1d(x, pos, 10000.0), atol=1e-5, rtol=1e-5)
    # off the diagonal the three axes differ
    cos2, _ = rope_angles(torch.stack([pos, pos * 0, pos * 0], -1)[None], 32, 10000.0)
    assert not torch.allclose(cos, cos2)


@torch.no_grad()
def test_doc_masking_equals_separate_passes(model):
    a_ids, a_co = rand_seq(1, 13, seed=1)
    b_ids, b_co = rand_seq(1, 9, seed=2)
    c_ids, c_co = rand_seq(1, 6, seed=3)
    ids = torch.cat([a_ids, b_ids, c_ids, torch.zeros(1, 4, dtype=torch.long)], 1)
    coords = torch.cat([a_co, b_co, c_co, torch.zeros(1, 4, 3, dtype=torch.long)], 1)
    doc = torch.tensor([[0] * 13 + [1] * 9 + [2] * 6 + [-1] * 4])
    packed = model(ids, coords, doc_ids=doc)
    torch.testing.assert_close(packed[:, :13], model(a_ids, a_co), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[:, 13:22], model(b_ids, b_co), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[:, 22:28], model(c_ids, c_co), atol=1e-5, rtol=1e-5)
    assert torch.isfinite(packed).all()


@torch.no_grad()
def test_left_padding_rows_equal_unpadded(model):
    ids, coords = rand_seq(1, 10, seed=4)
    pad = 5
    pids = torch.cat([torch.full((1, pad), 3), ids], 1)
    pco = torch.cat([torch.randint(0, 9, (1, pad, 3)), coords], 1)
    doc = torch.cat([torch.full((1, pad), -1), torch.zeros(1, 10, dtype=torch.long)], 1)
    ref = model(ids, coords)
    torch.testing.assert_close(model(pids, pco, doc_ids=doc)[:, pad:], ref, atol=1e-5, rtol=1e-5)
    # the same through a cache: prefill the padded prompt, then decode
    more, more_c = rand_seq(1, 4, seed=5)
    cache = KVCache.allocate(model.cfg, 1, 20)
    model(pids, pco, cache=cache, doc_ids=doc)
    steps = torch.cat([model(more[:, i : i + 1], more_c[:, i : i + 1], cache=cache) for i in range(4)], 1)
    full = model(torch.cat([ids, more], 1), torch.cat([coords, more_c], 1))[:, 10:]
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)


def test_checkpointing_gives_the_same_gradients():
    torch.manual_seed(1)
    cfg = LMConfig.from_name("debug", vocab_size=V)
    a = VideoLM(cfg)
    b = VideoLM(LMConfig.from_name("debug", vocab_size=V, checkpointing=True))
    b.load_state_dict(a.state_dict())
    ids, coords = rand_seq(2, 16)
    for m in (a, b):
        m(ids, coords).logsumexp(-1).mean().backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=n)


def manual_attention(q, k, v, q_doc, k_doc):
    """The rule of lm/attention.py written out: softmax over the keys block_mask allows."""
    mask = block_mask(q_doc, k_doc)[:, 0]  # (B,Lq,Lk)
    rep = q.shape[2] // k.shape[2]
    kk, vv = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
    att = torch.einsum("bqhd,bkhd->bhqk", q, kk) / q.shape[-1] ** 0.5
    att = att.masked_fill(~mask[:, None], float("-inf")).softmax(-1)
    return torch.einsum("bhqk,bkhd->bqhd", att, vv)


def test_sdpa_mask_matches_manual_attention():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 5, 4, 8, generator=g)
    k = torch.randn(2, 9, 2, 8, generator=g)
    v = torch.randn(2, 9, 2, 8, generator=g)
    k_doc = torch.tensor([[-1, -1, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1, 1, 1]])
    q_doc = k_doc[:, -5:]
    ref = manual_attention(q, k, v, q_doc, k_doc)
    for plan in (None, layer_plan(q_doc, k_doc)):  # built per call, or once for all layers
        torch.testing.assert_close(attention(q, k, v, q_doc, k_doc, backend="sdpa", plan=plan), ref, atol=1e-5, rtol=1e-5)


def test_full_rows_attend_per_document_as_the_mask_says():
    """Packed rows (the training path) run causal SDPA per document; outputs and gradients equal
    the masked attention's, padding queries (their own value) included."""
    g = torch.Generator().manual_seed(1)
    doc = torch.tensor([[0] * 5 + [1] * 3 + [2] + [-1] * 3, [-1] * 2 + [0] * 10, [0] * 12])
    q, k, v = (torch.randn(3, 12, h, 8, generator=g, requires_grad=True) for h in (4, 2, 2))
    runs = layer_plan(doc, doc)  # what a model finds once for all its layers
    assert runs.bounds == [0, 5, 8, 9, 12, 14, 24, 36] and runs.ids == [0, 1, 2, -1, -1, 0, 0] and runs.longest == 12
    ref = manual_attention(q, k, v, doc, doc)
    torch.testing.assert_close(attention(q, k, v, doc, doc, backend="sdpa", plan=runs), ref, atol=1e-5, rtol=1e-5)
    out = attention(q, k, v, doc, doc, backend="sdpa")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    w = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    for a, b in zip(grads, torch.autograd.grad((ref * w).sum(), (q, k, v))):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_flex_attends_as_the_mask_says():
    """FlexAttention (one call a layer on packed rows) gives the rule's outputs, padding and GQA
    included; and a whole model with attn_backend flex, SDPA's logits. Forward only here: PyTorch
    has no FlexAttention backward on a CPU (test_flex_gradients_on_gpu)."""
    g = torch.Generator().manual_seed(1)
    doc = torch.tensor([[0] * 5 + [1] * 3 + [2] + [-1] * 3, [-1] * 2 + [0] * 10, [0] * 12])
    q, k, v = (torch.randn(3, 12, h, 8, generator=g) for h in (4, 2, 2))
    ref = manual_attention(q, k, v, doc, doc)
    torch.testing.assert_close(attention(q, k, v, doc, doc, backend="flex", plan=layer_plan(doc, doc, "flex")), ref,
                               atol=1e-5, rtol=1e-5)
    ids, coords = rand_seq(2, 24)
    rows = torch.tensor([[0] * 10 + [1] * 14, [0] * 20 + [-1] * 4])
    cfg = LMConfig.from_name("debug", vocab_size=V)
    m, f = VideoLM(cfg).eval(), VideoLM(LMConfig.from_name("debug", vocab_size=V, attn_backend="flex")).eval()
    f.load_state_dict(m.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(f(ids, coords, doc_ids=rows), m(ids, coords, doc_ids=rows), atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (no FlexAttention backward on a CPU)")
def test_flex_gradients_on_gpu():
    g = torch.Generator().manual_seed(1)
    doc = torch.tensor([[0] * 50 + [1] * 30 + [2] + [-1] * 47, [-1] * 28 + [0] * 100]).cuda()
    q, k, v = (torch.randn(2, 128, h, 16, generator=g).cuda().requires_grad_() for h in (4, 2, 2))
    ref, out = manual_attention(q, k, v, doc, doc), attention(q, k, v, doc, doc, backend="flex")
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    w = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad((out * w).sum(), (q, k, v)), torch.autograd.grad((ref * w).sum(), (q, k, v))):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not flash_available(), reason="needs flash-attn and CUDA")
def test_flash_matches_sdpa():
    torch.manual_seed(0)
    dev, dt = "cuda", torch.bfloat16
    q = torch.randn(2, 64, 8, 64, device=dev, dtype=dt)
    k = torch.randn(2, 64, 2, 64, device=dev, dtype=dt)
    v = torch.randn(2, 64, 2, 64, device=dev, dtype=dt)
    doc = torch.tensor([[0] * 30 + [1] * 34, [0] * 64], device=dev)
    for qd, kd in ((None, None), (doc, doc)):
        a = attention(q, k, v, qd, kd, backend="flash").float()
        b = attention(q, k, v, qd, kd, backend="sdpa").float()
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)
    # a decode step and a block of queries over a one-document cache: no doc ids for flash (what
    # VideoLM passes there), the doc ids' mask for SDPA
    for lq in (1, 3):
        a = attention(q[:, -lq:], k, v, backend="flash")
        zeros = torch.zeros(2, 64, dtype=torch.long, device=dev)
        b = attention(q[:, -lq:], k, v, zeros[:, -lq:], zeros, backend="sdpa")
        torch.testing.assert_close(a.float(), b.float(), atol=2e-2, rtol=2e-2)
    # the whole model, bf16 on GPU: flash vs sdpa
    cfg = LMConfig.from_name("debug", vocab_size=V, attn_backend="flash")
    m = VideoLM(cfg).to(dev, dt)
    ids, coords = rand_seq(2, 64)
    ids, coords = ids.to(dev), coords.to(dev)
    lf = m(ids, coords, doc_ids=doc)
    m.cfg = m.cfg.__class__(**{**m.cfg.__dict__, "attn_backend": "sdpa"})
    for layer in m.layers:
        layer.attn.cfg = m.cfg
    torch.testing.assert_close(lf, m(ids, coords, doc_ids=doc), atol=5e-2, rtol=5e-2)


@torch.no_grad()
def test_flash_gets_doc_ids_only_where_the_cache_needs_them(model, monkeypatch):
    """Over a one-document cache every block of queries reaches flash with no doc ids (plain
    causal, no check of the cache in each layer); over a padded cache, none reaches it (SDPA
    under the block mask built once). A stand-in flash (SDPA, causal) must give SDPA's logits."""
    from vidlm.lm import attention as attn
    from vidlm.lm import model as lm_model

    got = []

    def fake_flash(q, k, v, q_doc, k_doc, plan=None):
        got.append(q_doc)
        return attn.sdpa(q, k, v, q_doc, k_doc, plan)

    ids, coords = rand_seq(2, 16, seed=8)
    padded = torch.zeros(2, 10, dtype=torch.long)
    padded[1, :2] = -1
    for doc, calls in ((None, model.cfg.n_layers), (padded, 0)):
        ref_cache, cache = KVCache.allocate(model.cfg, 2, 24), KVCache.allocate(model.cfg, 2, 24)
        model(ids[:, :10], coords[:, :10], cache=ref_cache, doc_ids=doc)
        ref = model(ids[:, 10:13], coords[:, 10:13], cache=ref_cache)  # a speculative-sized block
        with monkeypatch.context() as m:
            m.setattr(lm_model, "resolve_backend", lambda backend, x: "flash")
            m.setattr(attn, "flash", fake_flash)
            model(ids[:, :10], coords[:, :10], cache=cache, doc_ids=doc)
            got.clear()
            out = model(ids[:, 10:13], coords[:, 10:13], cache=cache)
        assert got == [None] * calls
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("mode", ["eager", "static", "compiled"])
def test_static_step_equals_cached_forward(model, mode, padded, monkeypatch):
    """VideoLM.step (fixed buffers, position tensor) gives the logits of the dynamic cached
    forward, over a left-padded prompt or an unpadded one (one query then needs no mask): eager
    over the filled slots, and with `static_shapes` over the whole buffer, where it traces as one
    graph (fullgraph compile with the aot_eager backend: a host sync or a Python-side length
    would break it)."""
    ids, coords = rand_seq(2, 16, seed=6)
    doc = torch.zeros(2, 10, dtype=torch.long)
    if padded:
        doc[1, :3] = -1  # row 1's prompt is left-padded
    ref_cache, cache = KVCache.allocate(model.cfg, 2, 24), KVCache.allocate(model.cfg, 2, 24)
    for c in (ref_cache, cache):
        model(ids[:, :10], coords[:, :10], cache=c, doc_ids=doc)
    monkeypatch.setattr(model, "static_shapes", mode != "eager", raising=False)
    step = torch.compile(model.step, backend="aot_eager", fullgraph=True, dynamic=False) if mode == "compiled" else model.step
    pos = torch.full((1,), 10)
    for i in range(10, 16):
        ref = model(ids[:, i : i + 1], coords[:, i : i + 1], cache=ref_cache)[:, -1]
        got = step(ids[:, i : i + 1], coords[:, i : i + 1], pos, cache)[:, -1]
        cache.length += 1
        pos += 1
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # a block of 3 (a speculative pass), after rolling back one
    ref_cache.truncate(15), cache.truncate(15)
    ref = model(ids[:, 13:16], coords[:, 13:16], cache=ref_cache)
    torch.testing.assert_close(step(ids[:, 13:16], coords[:, 13:16], torch.arange(15, 18), cache), ref,
                               atol=1e-5, rtol=1e-5)
    cache.length += 3
    torch.testing.assert_close(cache.k[:, :, :18], ref_cache.k[:, :, :18])
    assert torch.equal(cache.doc, ref_cache.doc)


def test_target_losses_equal_full_logits(monkeypatch):
    """The loss on target positions only (chunked, recomputed in backward) gives the losses and
    gradients of full-row logits + cross entropy at those positions."""
    import torch.nn.functional as F
    from vidlm.lm import model as lm_model

    monkeypatch.setattr(lm_model, "LOSS_CHUNK", 7)  # several chunks and a ragged last one
    torch.manual_seed(1)
    m = VideoLM(LMConfig.from_name("debug", vocab_size=V, n_layers=2))
    ids, coords = rand_seq(2, 20, seed=8)
    targets = torch.full_like(ids, -1)
    targets[:, 4:-1] = ids[:, 5:]
    targets[1, 10:12] = -1
    sel = targets >= 0
    ref = F.cross_entropy(m(ids, coords)[sel], targets[sel], reduction="none")
    ref.sum().backward()
    ref_grads = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    got = m(ids, coords, targets=targets)
    got.sum().backward()
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    for p, g in zip(m.parameters(), ref_grads):
        torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=1e-4)


def test_next_query_turns_queries_to_the_predicted_place():
    """next_query: queries take the coordinates of the token each position predicts (by default
    the next in the row); without it next_coords changes nothing."""
    torch.manual_seed(0)
    ids, coords = torch.randint(64, (1, 12)), torch.randint(-4, 8, (1, 12, 3))
    shifted = torch.cat([coords[:, 1:], coords[:, -1:]], 1)
    m = VideoLM(LMConfig.from_name("debug", vocab_size=64, next_query=True)).eval()
    torch.testing.assert_close(m(ids, coords), m(ids, coords, next_coords=shifted))
    assert not torch.allclose(m(ids, coords), m(ids, coords, next_coords=coords))
    plain = VideoLM(LMConfig.from_name("debug", vocab_size=64)).eval()
    torch.testing.assert_close(plain(ids, coords), plain(ids, coords, next_coords=coords))


@torch.no_grad()
def test_code_levels_read_codes_as_their_fsq_values():
    """code_levels: the values each code id stands for are FSQ's own, and a model given them
    computes what it did without them until training moves the new weights."""
    from vector_quantize_pytorch import FSQ
    from vidlm.lm.model import code_values

    cfg = LMConfig.from_name("debug", vocab_size=V, n_layers=2, code_levels=(4, 3, 5), code_start=30)
    table = code_values(cfg)
    torch.testing.assert_close(table[30:90, :3], FSQ(levels=[4, 3, 5]).indices_to_codes(torch.arange(60)))
    assert not table[:30].any() and not table[90:].any()
    torch.manual_seed(0)
    plain = VideoLM(LMConfig.from_name("debug", vocab_size=V, n_layers=2)).eval()
    m = VideoLM(cfg).eval()
    assert sum(p.numel() for p in m.parameters()) == cfg.num_params()
    m.load_state_dict(plain.state_dict(), strict=False)
    ids, coords = rand_seq(1, 14, seed=9)
    torch.testing.assert_close(m(ids, coords), plain(ids, coords))
    with pytest.raises(ValueError, match="code_levels"):
        LMConfig.from_name("debug", vocab_size=V, code_levels=(8, 8), code_start=40)
