"""The causal 3D VQGAN tokenizer: causality, image == first frame, shapes, chunked == one-shot,
quantizer options, two-level codes, and safetensors save/load."""

import json

import pytest
import torch
from einops import rearrange
from vidlm.tokenizer.config import PRESETS, TokenizerConfig
from vidlm.tokenizer.losses import pixel_errors
from vidlm.tokenizer.model import VideoTokenizer


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make(name="debug", seed=0, **kw):
    torch.manual_seed(seed)
    return VideoTokenizer(TokenizerConfig.from_name(name, **kw)).eval()


def video(b=2, t=9, h=32, w=32, seed=1):
    return torch.rand(b, 3, t, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# A small 8x-spatial model, so both factors are covered without the demo preset's cost.
SMALL8 = {"channels": 8, "channel_mult": (1, 2, 2), "patch": 2, "spatial_factor": 8, "levels": (5, 5, 5),
          "latent_dim": 4, "norm_groups": 4}
# Two-level codes on the same cells: 4x4 pixels underneath, a code per 8x8 cell, 2 rows of fine codes.
TWO = SMALL8 | {"channel_mult": (1, 2, 2), "latent_dim": 8, "refine_rows": 2}
# The same with every frame its own code, coded alone.
KT1 = TWO | {"channel_mult": (1, 2), "time_factor": 1, "temporal_kernel": 1}
# The same drawing each pixel as a mixture of 3 colours.
MIX = KT1 | {"out_mixture": 3}


@pytest.mark.parametrize("kw", [{}, SMALL8, TWO], ids=["s4", "s8", "two-level"])
def test_causality_changing_frame_j_never_changes_earlier_latents(kw):
    m = make(**kw)
    x = video(t=17)
    ids = m.encode(x)
    for j in (0, 1, 4, 5, 8, 13, 16):
        y = x.clone()
        y[:, :, j] = torch.rand_like(y[:, :, j]) * 2 - 1
        k = 0 if j == 0 else (j - 1) // 4 + 1  # the latent frame holding frame j
        got = m.encode(y)
        assert torch.equal(got[:, :k], ids[:, :k]), f"frame {j} changed latent frames before {k}"
        assert not torch.equal(got[:, k], ids[:, k]), f"frame {j} did not reach latent frame {k}"
    # decoder: changing latent frame k never changes frames before its span
    rec = m.decode(ids)
    ids2 = ids.clone()
    ids2[:, 3] = (ids2[:, 3] + 7) % m.codebook_size
    rec2 = m.decode(ids2)
    assert torch.equal(rec2[:, :, :9], rec[:, :, :9]) and not torch.equal(rec2[:, :, 9:13], rec[:, :, 9:13])


@pytest.mark.parametrize("kw", [{}, SMALL8, TWO], ids=["s4", "s8", "two-level"])
def test_image_codes_equal_first_frame_codes(kw):
    m = make(**kw)
    x = video(t=13)
    img = m.encode(x[:, :, :1])
    assert img.shape[1] == 1
    assert torch.equal(img[:, 0], m.encode(x)[:, 0])
    assert torch.equal(m.decode(img)[:, :, 0], m.decode(m.encode(x))[:, :, 0])  # and decodes the same


@pytest.mark.parametrize(("t", "h", "w"), [(1, 32, 32), (5, 16, 48), (9, 40, 24), (21, 8, 16)])
def test_shapes_across_sizes_aspects_and_durations(t, h, w):
    m = make()
    ids = m.encode(video(b=1, t=t, h=h, w=w))
    assert ids.dtype == torch.int64 and ids.shape == (1, 1 + (t - 1) // 4, h // 4, w // 4)
    assert 0 <= ids.min() and ids.max() < m.codebook_size == 125
    assert m.decode(ids).shape == (1, 3, t, h, w)
    assert m.factors == (4, 4)


def test_bad_shapes_get_clear_errors():
    m = make()
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        m.encode(video(t=8))
    with pytest.raises(ValueError, match="multiples of 4"):
        m.encode(video(h=30))
    with pytest.raises(ValueError, match="ids must be in"):
        m.decode(torch.full((1, 1, 2, 2), 125))


def test_temporal_kernel_1_codes_every_frame_as_an_image():
    m = make(**KT1)
    x = video(t=5)
    ids = m.encode(x)
    assert ids.shape[1] == 5
    for k in range(5):
        assert torch.equal(m.encode(x[:, :, k : k + 1])[:, 0], ids[:, k])
        torch.testing.assert_close(m.decode(ids[:, k : k + 1])[:, :, 0], m.decode(ids)[:, :, k], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="temporal_kernel"):
        TokenizerConfig.from_name("debug", temporal_kernel=1)  # time factor 4 needs a kernel that strides


@pytest.mark.parametrize("kw", [{}, SMALL8, TWO, KT1, MIX],
                         ids=["s4", "s8", "two-level", "kt1", "mixture"])
def test_chunked_equals_one_shot(kw):
    m = make(**kw)
    x = video(b=1, t=29, h=32, w=32)
    ids = m.encode(x)
    rec = m.decode(ids)
    for chunk in (1, 2, 3):
        assert torch.equal(m.encode_chunked(x, chunk), ids)
        torch.testing.assert_close(m.decode_chunked(ids, chunk), rec, rtol=0, atol=1e-6)


@pytest.mark.parametrize("quantizer", ["lfq", "vq"])
def test_other_quantizers(quantizer):
    m = make(quantizer=quantizer, codebook_size=64).train()
    x = video(b=1, t=5, h=16, w=16)
    rec, ids, aux, _ = m(x)
    assert rec.shape == x.shape and ids.shape == (1, 2, 4, 4) and aux.dim() == 0
    (rec.abs().mean() + aux).backward()
    m.eval()
    ids = m.encode(x)
    assert m.codebook_size == 64 and ids.max() < 64
    assert m.decode(ids).shape == x.shape
    assert torch.equal(m.encode_chunked(x, 1), ids)


def test_two_level_codes():
    m = make(**TWO)
    assert m.factors == (4, 8) and m.latent_shape(9, 32, 48) == (3, 4 + 2, 6)
    x = video(b=2, t=9, h=32, w=32)
    ids = m.encode(x)  # 4x4 coarse codes, then 2 rows of 4: the 2x2 fine codes of 2 chosen cells
    assert ids.shape == (2, 3, 6, 4) and 0 <= ids.min() and ids.max() < m.codebook_size
    # the decoder reads exactly what encode computed: the chosen cells follow from the coarse codes
    zq = m.quantizer(m.encoder(x))[0]
    torch.testing.assert_close(m.decode(ids), m.decoder(zq), rtol=0, atol=1e-5)
    # a fine code changes only the pixels of its own cell (4x4 pixels of one 8x8 cell)
    cells = m.quantizer._cells(m.quantizer.coarse_q.embed(ids[:1, :1, :4], torch.float32)[:, :, 0])[0][0]
    changed = ids.clone()
    changed[0, 0, 4, 0] = (changed[0, 0, 4, 0] + 1) % m.codebook_size  # the first chosen cell's top-left code
    diff = (m.decode(changed) - m.decode(ids))[0, :, 0].abs().amax(0)  # frame 0 (H, W)
    y, x0 = divmod(int(cells[0]), 4)
    assert diff[8 * y: 8 * y + 8, 8 * x0: 8 * x0 + 8].sum() > 0
    # training: the scorer learns each cell's error when the coarse codes are drawn alone
    m.train()
    rec, ids_t, aux, _ = m(x)
    assert rec.shape == x.shape and ids_t.shape == ids.shape and aux > 0
    (aux + m(x[:, :, :1])[2]).backward()  # and on images (one frame)
    assert m.quantizer.scorer[0].weight.grad.abs().sum() > 0
    # where each code draws (the LM's coordinates): coarse codes at their cells' centres, fine
    # codes at the half cells of the cells the coarse codes choose, in quarter cells
    places = m.code_places(ids[0])
    assert places.shape == (3, 6, 4, 2)
    assert places[0, :4, :, 0].tolist() == [[2] * 4, [6] * 4, [10] * 4, [14] * 4]
    assert places[0, :4, 1, 1].tolist() == [6] * 4
    for f in range(3):
        cell = m.quantizer._cells(m.quantizer.coarse_q.embed(ids[:1, f : f + 1, :4], torch.float32)[:, :, 0])[0][0]
        y, x1 = divmod(int(cell[1]), 4)  # the second cell fills the second fine row's last 2 codes...
        assert places[f, 5, 0].tolist() == [4 * y + 1, 4 * x1 + 1] and places[f, 5, 3].tolist() == [4 * y + 3, 4 * x1 + 3]
    assert torch.equal(make().code_places(torch.zeros(2, 3, 4, dtype=torch.long))[1, 2, 3], torch.tensor([2, 3]))
    with pytest.raises(ValueError, match="multiple of 16 pixels"):
        m.latent_shape(1, 32, 8)  # one coarse column: rows of 1 code cannot hold cells of 4
    with pytest.raises(ValueError, match="whole cells"):
        m.decode(torch.zeros(1, 1, 3, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="fsq"):
        TokenizerConfig.from_name("debug", quantizer="vq", refine_rows=1)


def test_coarse_weight_trains_the_coarse_codes_to_draw_alone():
    """coarse_weight adds to the aux loss the pixel loss of what the coarse codes draw without
    the fine codes, and its gradient reaches the coarse path (and only through it the decoder's coarse use);
    at 0 that drawing is the scorer's target only, and no gradient flows through it."""
    torch.manual_seed(0)
    plain = make(**TWO).train()
    weighted = make(**TWO, coarse_weight=0.5).train()
    weighted.load_state_dict(plain.state_dict())
    x = video(b=2, t=5, h=32, w=32)
    q = weighted.quantizer
    z = weighted.encoder(x)
    aux0 = plain.quantizer(z.detach(), x, plain.decoder)[2]
    aux1 = q(z.detach(), x, weighted.decoder)[2]
    coarse = q.coarse_q(q.coarse_in(rearrange(z.detach(), "b d t h w -> (b t) d h w"))[:, :, None])[0][:, :, 0]
    drawn = weighted.decoder(rearrange(q.coarse_out(coarse), "(b t) d h w -> b d t h w", t=z.shape[2]))
    alone = sum(pixel_errors(drawn - x, 0.05))  # L1, L2 and the worst 5 % of pixels' L1
    torch.testing.assert_close(aux1, aux0 + 0.5 * alone, rtol=1e-4, atol=1e-5)
    aux1.backward()
    assert q.coarse_out[0].weight.grad.abs().sum() > 0 and q.fine_out.weight.grad is None
    plain.quantizer(z.detach(), x, plain.decoder)[2].backward()
    assert plain.quantizer.coarse_out[0].weight.grad is None  # the scorer's target takes no gradient
    with pytest.raises(ValueError, match="coarse_weight"):
        TokenizerConfig.from_name("debug", coarse_weight=0.5)  # one-level codes have no coarse codes alone


@pytest.mark.parametrize("kw", [{"latent_dim": 3}, {"latent_dim": 4}, TWO, MIX],
                         ids=["no-projection", "projection", "two-level", "mixture"])
def test_bf16_model_codes_and_decodes_in_bf16(kw):
    # FSQ with latent_dim == len(levels) has no projection weights to take the dtype from
    m = make(**kw).to(torch.bfloat16)
    x = video(b=1, t=5, h=16, w=16).to(torch.bfloat16)
    rec = m.decode(m.encode(x))
    assert rec.dtype == torch.bfloat16 and rec.shape == x.shape and m(x)[0].dtype == torch.bfloat16


def test_mixture_head_draws_each_pixel_between_its_colours():
    m = make(**MIX)
    assert m.decoder.conv_out.conv.out_channels == 3 * (3 + 1) * 2 * 2  # K x (RGB + logit) x patch^2
    feats = m.decoder.features(m.encoder(video(b=1, t=2)))  # the unquantized latent is enough here
    raw = rearrange(m.decoder.conv_out(feats), "b (k c p q) t h w -> b k c t (h p) (w q)", k=3, c=4, p=2, q=2)
    rec = m.decoder.head(feats)
    lo, hi = raw[:, :, :3].min(1).values, raw[:, :, :3].max(1).values
    assert rec.shape == (1, 3, 2, 32, 32) and bool(((rec >= lo - 1e-6) & (rec <= hi + 1e-6)).all())
    # one logit far above the others: that component's colour alone
    raw[:, 1, 3] += 100
    flat = rearrange(raw, "b k c t (h p) (w q) -> b (k c p q) t h w", p=2, q=2)
    m.decoder.conv_out.forward = lambda *_a, **_k: flat
    torch.testing.assert_close(m.decoder.head(feats), raw[:, 1, :3])
    for bad in (1, -1):
        with pytest.raises(ValueError, match="out_mixture"):
            TokenizerConfig.from_name("debug", out_mixture=bad)


def test_presets_build_and_document_their_grid():
    for name in ("debug", "demo", "real-cpu"):
        cfg = PRESETS[name]
        assert cfg.name == name and cfg.time_factor in (2, 4) and cfg.spatial_factor in (4, 8)
    assert PRESETS["demo"].vocab_size == 1000 and (PRESETS["demo"].time_factor, PRESETS["demo"].spatial_factor) == (2, 8)
    with pytest.raises(ValueError, match="unknown tokenizer preset"):
        TokenizerConfig.from_name("nope")
    with pytest.raises(ValueError, match="channel_mult needs"):
        TokenizerConfig(channel_mult=(1, 2), spatial_factor=8)


def test_save_load_bitwise(tmp_path):
    from vidlm import TokenizerConfig as TC
    from vidlm import VideoTokenizer as VT

    assert VT is VideoTokenizer and TC is TokenizerConfig
    m = make(quantizer="vq", codebook_size=32)
    m.save_pretrained(tmp_path / "tok")
    two = make(**TWO)
    two.save_pretrained(tmp_path / "two")
    x = video(b=1, t=5)
    assert torch.equal(VideoTokenizer.from_pretrained(tmp_path / "two").encode(x), two.encode(x))
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["config.json", "model.safetensors"]
    back = VideoTokenizer.from_pretrained(tmp_path / "tok")
    assert back.cfg == m.cfg
    a, b = m.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(back.encode(x), m.encode(x))


def test_load_refuses_files_that_are_not_what_they_claim(tmp_path):
    d = tmp_path / "tok"
    make().save_pretrained(d)
    with pytest.raises(FileNotFoundError, match="config.json"):
        VideoTokenizer.from_pretrained(tmp_path)
    weights = (d / "model.safetensors").read_bytes()
    # a pickle (or anything else) named model.safetensors is refused, never unpickled
    import pickle

    (d / "model.safetensors").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        VideoTokenizer.from_pretrained(d)
    (d / "model.safetensors").write_bytes(weights)
    (d / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        VideoTokenizer.from_pretrained(d)
    (d / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a vidlm video tokenizer"):
        VideoTokenizer.from_pretrained(d)
    other = tmp_path / "other"
    make(channels=16, norm_groups=4).save_pretrained(other)
    (d / "config.json").write_text((other / "config.json").read_text())
    with pytest.raises(ValueError, match="does not match"):
        VideoTokenizer.from_pretrained(d)


def test_metrics():
    from vidlm.tokenizer.metrics import code_stats, psnr, ssim

    x = video(b=1, t=5)
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-5) and float(psnr(x, x)) == pytest.approx(100.0)
    y = (x + 0.1).clamp(-1, 1)
    assert 20 < float(psnr(y, x)) < 30 and float(ssim(y, x)) < 1
    assert code_stats(torch.tensor([5, 5, 0, 0])) == {"usage": 0.5, "perplexity": pytest.approx(2.0)}
