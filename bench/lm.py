"""Benchmark: our VideoLM + sampler against Hugging Face `LlamaForCausalLM`, same dims, same weights.

    .venv/bin/python bench/lm.py [--preset demo] [--repeats 3] [--threads 1] [--no-clip]

Copies our weights into a `LlamaForCausalLM` of identical dimensions (on the diagonal, our 3D
RoPE is 1D RoPE, so the two models compute the same function), checks that the logits match,
then measures in one process, one warm-up and `--repeats` interleaved pairs each:

- training step tokens/s (forward + backward + AdamW step, fp32), on rows of one sequence
  each, and on rows packed as `vidlm lm train` packs them (--packed-seq tokens, documents of
  --doc-len; HF gets the documents as a 4D mask and per-document position ids),
- prefill tokens/s (a prompt into a KV cache),
- decode tokens/s with a KV cache (our `sample.generate`, greedy, vs HF `generate`), and ours
  through its static step (`VideoLM.step`) against the cached forward (and with --compile, the
  compiled step against the eager one, and a training step with compiled blocks against eager),
- an AdamW step over the model's parameters, fused against torch's default,
- peak memory of each phase (peak RSS above the RSS before it, /proc VmHWM),

and prints medians and ratios (ours / HF; > 1 is faster, < 1 is less memory for memory).
Finally it times a 17-frame 64x64 text-to-video clip with the `demo` presets (random weights:
the speed does not depend on what the weights learned).

With --model (trained weights, e.g. shapes-demo) it also measures speculative decoding, where
speed does depend on the weights: seconds per 17-frame 64x64 t2v clip with text CFG, plain
decode vs speculative (the default draft order, the model's own guesses first, and the other:
coordinate drafts first, the model's guesses where none), at temperature 0 and 1; the
same number of codes decoded by HF `generate` with the same weights and rows (greedy; HF has
no CFG, so its two rows decode the same prompt); and the share of drafts kept per task and per draft kind. --out writes the
ratios as JSON (decode_vs_hf, train_vs_hf, speculative_vs_plain, speculative_vs_hf, acceptance,
draft_order).
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

import torch


def rss_kib(field: str = "VmRSS") -> int:
    return int(re.search(rf"{field}:\s+(\d+)", open("/proc/self/status").read()).group(1))


def measure(fn) -> tuple[float, float]:
    """(seconds, peak MiB above the RSS at the start) of one call of fn."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back, so the peak is this call's
    except OSError:
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    except OSError:
        pass
    before = rss_kib()
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    return seconds, (rss_kib("VmHWM") - before) / 1024


# ------------------------------------------------------------------------------------ the models
def to_hf(model):
    """A LlamaForCausalLM with our model's dims and weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = model.cfg
    hf_cfg = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=model.layers[0].mlp.hidden_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads or cfg.n_heads, head_dim=cfg.dim // cfg.n_heads,
        max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
        pad_token_id=0, bos_token_id=None, eos_token_id=None,
    )
    hf_cfg._attn_implementation = "sdpa"
    hf = LlamaForCausalLM(hf_cfg).eval()
    hf.load_state_dict(hf_state_dict(model), strict=True)
    return hf


def hf_state_dict(model) -> dict:
    """Our parameter names -> HF Llama names (see lm/model.py for ours)."""
    sd = {"model.embed_tokens.weight": model.tok_emb.weight, "model.norm.weight": model.norm.weight,
          "lm_head.weight": model.head.weight}
    for i, layer in enumerate(model.layers):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = layer.attn_norm.weight
        sd[p + "post_attention_layernorm.weight"] = layer.mlp_norm.weight
        cfg, hd = model.cfg, model.cfg.head_dim
        q, k, v = layer.attn.wqkv.weight.split([cfg.n_heads * hd, cfg.kv_heads * hd, cfg.kv_heads * hd])
        sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.k_proj.weight"] = q, k
        sd[p + "self_attn.v_proj.weight"] = v
        sd[p + "self_attn.o_proj.weight"] = layer.attn.wo.weight
        sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"] = layer.mlp.w13.weight.chunk(2)
        sd[p + "mlp.down_proj.weight"] = layer.mlp.w2.weight
    return {k: v.detach().clone() for k, v in sd.items()}


def diagonal(batch: int, start: int, length: int) -> torch.Tensor:
    """Coordinates (B,L,3) with t = y = x = position: where 3D RoPE equals 1D RoPE."""
    return torch.arange(start, start + length)[None, :, None].expand(batch, length, 3).contiguous()


class DiagonalPrompt:
    """A prompt on the diagonal, continuing on it for `new` tokens."""

    def __init__(self, ids: torch.Tensor, new: int):
        self.ids = ids
        self.coords = diagonal(1, 0, len(ids))[0]
        self.gen_coords = diagonal(1, len(ids), new)[0]


# ------------------------------------------------------------------------------------ the phases
def step_pair(model, hf, ours_loss, hf_loss, tokens: int):
    """Two training-step closures for `interleaved`: forward (`*_loss()`), backward and an
    optimizer step; ours with fused AdamW as `vidlm lm train` runs it, HF's with torch's AdamW
    as its Trainer does by default."""
    from vidlm.runtime import adamw

    def step(loss, opt):
        def run():
            loss().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return run

    return (step(ours_loss, adamw(model.parameters(), lr=1e-5)),
            step(hf_loss, torch.optim.AdamW(hf.parameters(), lr=1e-5)), tokens)


def train_steps(model, hf, batch, seq, vocab):
    """The training step on every position's next token: ours with the loss through
    `VideoLM.target_losses`, HF's with `labels=` (full logits)."""
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    coords = diagonal(batch, 0, seq)
    targets = torch.cat([ids[:, 1:], torch.full((batch, 1), -1)], 1)
    return step_pair(model, hf, lambda: model(ids, coords, targets=targets).mean(),
                     lambda: hf(input_ids=ids, labels=ids).loss, batch * seq)


def packed_rows(batch: int, seq: int, vocab: int, doc_len: int) -> dict:
    """Rows as `vidlm lm train` packs them: documents of `doc_len` tokens back to back (the
    demo's t2v sequences are ~600), the rest padding; each document on the diagonal from 0."""
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(1))
    pos = torch.arange(seq)
    doc = torch.where(pos < seq // doc_len * doc_len, pos // doc_len, -1)[None].expand(batch, seq).contiguous()
    start = torch.where(doc >= 0, pos % doc_len, 0)  # position inside the document
    same_next = torch.cat([(doc[:, 1:] == doc[:, :-1]) & (doc[:, 1:] >= 0), torch.zeros(batch, 1, dtype=torch.bool)], 1)
    targets = torch.where(same_next, torch.roll(ids, -1, 1), -1)  # the next token of the same document
    labels = torch.where(torch.roll(same_next, 1, 1), ids, -100)  # HF shifts: labels[t + 1] is t's target
    return {"ids": ids, "doc": doc, "coords": start[..., None].expand(batch, seq, 3).contiguous(), "targets": targets,
            "position_ids": start, "labels": labels}


def train_packed_steps(model, hf, batch, seq, vocab, doc_len):
    """The training step on packed rows (`packed_rows`): ours with doc ids (attention per
    document), HF with the same documents as a 4D mask (block_mask's rule) and position ids
    restarting per document."""
    from vidlm.lm.attention import block_mask

    r = packed_rows(batch, seq, vocab, doc_len)
    mask = block_mask(r["doc"], r["doc"])  # (B,1,L,L), True = attend
    return step_pair(model, hf, lambda: model(r["ids"], r["coords"], doc_ids=r["doc"], targets=r["targets"]).mean(),
                     lambda: hf(input_ids=r["ids"], attention_mask=mask, position_ids=r["position_ids"],
                                labels=r["labels"]).loss, batch * seq)


def optimizer_steps(model, repeats: int) -> dict:
    """Milliseconds per AdamW step over the model's parameters: fused (what training uses) and
    torch's default multi-tensor one."""
    from vidlm.runtime import adamw

    grads = [torch.randn_like(p) for p in model.parameters()]
    ms = {}
    for name, make in (("default", lambda ps: torch.optim.AdamW(ps, lr=1e-5)), ("fused", lambda ps: adamw(ps, lr=1e-5))):
        params = [p.detach().clone().requires_grad_() for p in model.parameters()]
        for p, g in zip(params, grads):
            p.grad = g
        opt = make(params)
        opt.step()
        times = []
        for _ in range(max(repeats, 3) * 3):
            t0 = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - t0)
        ms[name] = 1000 * statistics.median(times)
    print(f"{'AdamW step':<14} fused {ms['fused']:.1f} ms, default {ms['default']:.1f} ms: x{ms['default'] / ms['fused']:.1f}")
    return {"fused_adamw_vs_default": round(ms["default"] / ms["fused"], 2)}


def prefill_steps(model, hf, batch, seq, vocab):
    from vidlm.lm.sample import allocate_cache, prefill

    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(1))
    coords = diagonal(batch, 0, seq)

    @torch.inference_mode()
    def ours():
        prefill(model, ids, coords, allocate_cache(model, batch, seq))

    @torch.inference_mode()
    def theirs():
        hf(input_ids=ids, use_cache=True, logits_to_keep=1)

    return ours, theirs, batch * seq


def decode_steps(model, hf, prompt_len, new, vocab):
    from vidlm.lm.sample import generate

    ids = torch.randint(0, vocab, (prompt_len,), generator=torch.Generator().manual_seed(2))
    prompt = DiagonalPrompt(ids, new)
    out = {}

    def ours():
        out["ours"] = generate(model, prompt, temperature=0)

    @torch.inference_mode()
    def theirs():
        out["hf"] = hf.generate(ids[None], max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                use_cache=True, pad_token_id=0)[:, prompt_len:]

    return ours, theirs, new, out


class CachedForward(torch.nn.Module):
    """The model without its static `step`: sampling appends through the cached forward, whose
    attention reads only the filled part of the cache (a Python-side length per token)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.cfg = model, model.cfg

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)


def decode_paths(model, prompt_len: int, new: int, repeats: int, compile: bool) -> dict:
    """Decode tokens/s (greedy, one row) of the static step against the cached forward, and with
    `compile` of the compiled step (inductor) against the eager one; the tokens must agree."""
    from vidlm.lm.sample import generate

    ids = torch.randint(0, model.cfg.vocab_size, (prompt_len,), generator=torch.Generator().manual_seed(4))
    prompt = DiagonalPrompt(ids, new)
    paths = {"cached forward": CachedForward(model), "static step": model}
    if compile:
        import copy

        t0 = time.perf_counter()
        paths["compiled step"] = copy.deepcopy(model).compile_step()
        with torch.no_grad():
            generate(paths["compiled step"], prompt, temperature=0, max_new_tokens=4)
        print(f"{'':<14} compile_step: first call {time.perf_counter() - t0:.1f} s")
    out, tps = {}, {}
    with torch.no_grad():
        for name, m in paths.items():
            generate(m, prompt, temperature=0, max_new_tokens=8)  # warm-up
            secs = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                out[name] = generate(m, prompt, temperature=0)
                secs.append(time.perf_counter() - t0)
            tps[name] = new / statistics.median(secs)
    same = all(torch.equal(o, out["static step"]) for o in out.values())
    print("decode paths   " + ", ".join(f"{k} {v:.1f} tok/s" for k, v in tps.items()) +
          f"; tokens identical: {same}")
    if not same:
        raise SystemExit("the decode paths disagree: the static step is not the cached forward")
    report = {"static_vs_cached_forward": round(tps["static step"] / tps["cached forward"], 2)}
    if compile:
        report["compiled_vs_eager"] = round(tps["compiled step"] / tps["static step"], 2)
    return report


def interleaved(name, ours, theirs, tokens, repeats, labels=("ours", "HF")):
    ours(), theirs()  # warm-up
    rows = {"ours": [], "hf": []}
    for r in range(repeats):
        pair = [("ours", ours), ("hf", theirs)]
        for key, fn in pair if r % 2 == 0 else pair[::-1]:
            rows[key].append(measure(fn))
    tps = {k: statistics.median(tokens / s for s, _ in v) for k, v in rows.items()}
    mem = {k: statistics.median(m for _, m in v) for k, v in rows.items()}
    a, b = labels
    print(f"{name:<14} {a} {tps['ours']:>10.1f} tok/s  {b} {tps['hf']:>10.1f} tok/s  "
          f"speed x{tps['ours'] / tps['hf']:.2f}   peak MiB {a} {mem['ours']:>7.1f}  {b} {mem['hf']:>7.1f}")
    return tps["ours"] / tps["hf"]


def compiled_train(model, hf, args, vocab) -> dict:
    """Training step with every block torch.compile'd (`compile: true` in a recipe) against eager."""
    import copy

    compiled = copy.deepcopy(model)
    for layer in compiled.layers:
        layer.compile()
    t0 = time.perf_counter()
    fast, _, tokens = train_steps(compiled, hf, args.batch, args.seq, vocab)
    fast()
    print(f"{'':<14} compiling the blocks: {time.perf_counter() - t0:.1f} s")
    eager, _, _ = train_steps(model, hf, args.batch, args.seq, vocab)
    ratio = interleaved("train compiled", fast, eager, tokens, args.repeats, labels=("compiled", "eager"))
    return {"compiled_train_vs_eager": round(ratio, 2)}


def check_logits(model, hf, vocab, seq=64):
    ids = torch.randint(0, vocab, (2, seq), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a = model(ids, diagonal(2, 0, seq))
        b = hf(input_ids=ids).logits
    err = (a - b).abs().max().item()
    print(f"logits check: max |ours - HF| = {err:.2e} over {tuple(a.shape)}")
    if err > 1e-3:
        raise SystemExit("the logits differ: the weight mapping or the RoPE layout is not the same model")


def clip_seconds(gen, repeats: int, caption: str = "a red circle moves right", **options) -> float:
    """Seconds to generate a 17-frame 64x64 t2v clip with `gen` (VideoGenerator) and sampling
    `options`: the median of `repeats` seeds after one warm-up."""
    times = []
    for seed in range(1 + repeats):
        t0 = time.perf_counter()
        gen.t2v(caption, frames=17, size=(64, 64), seed=seed, **options)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


TASK_CALLS = {  # task -> call on a VideoGenerator, from a held-out shapes-world clip and its caption
    "t2v": lambda g, v, c, **o: g.t2v(c, frames=17, size=(64, 64), **o),
    "t2i": lambda g, v, c, **o: g.t2i(c, size=(64, 64), **o),
    "i2v": lambda g, v, c, **o: g.i2v(v[:, 0], c, frames=17, **o),
    "extend-forward": lambda g, v, c, **o: g.extend(v[:, :5], "forward", frames=17, **o),
    "extend-backward": lambda g, v, c, **o: g.extend(v[:, -5:], "backward", frames=17, **o),
    "connect": lambda g, v, c, **o: g.connect(v[:, :5], v[:, -5:], frames=17, **o),
    "loop": lambda g, v, c, **o: g.loop(v[:, :5], frames=17, **o),
    "edit": lambda g, v, c, **o: g.edit(v, c, **o),
}


def kept_drafts(stats: dict) -> dict:
    """VideoGenerator.stats -> the share of drafts kept, codes per pass, kept/proposed per kind."""
    proposed = sum(stats["proposed"].values())
    return {"kept": round(sum(stats["accepted"].values()) / max(proposed, 1), 3),
            "codes_per_pass": round(stats["tokens"] / (stats["forwards"] + 1), 2),
            **{kind: f"{stats['accepted'][kind]}/{n}" for kind, n in stats["proposed"].items()}}


def speculative(model_name: str, repeats: int, cfg_text: float = 3.0) -> dict:
    """Clip seconds plain vs speculative (temperature 0 and 1), HF generate on the same rows and
    codes, and the drafts kept per task (temperature 1)."""
    from vidlm.evaluate import heldout_clips
    from vidlm.pipeline import SPECULATIVE, VideoGenerator

    gen = VideoGenerator.from_pretrained(model_name)
    caption = "a red circle bouncing to the right on a black background"
    out = {"clip_seconds": {}, "draft_order": {}}
    variants = {"plain": (0, "off"), "speculative": (SPECULATIVE, "first"),  # the default order
                "coordinates first": (SPECULATIVE, "fallback")}
    for temperature in (0.0, 1.0):
        for name, (draft, jacobi) in variants.items():
            key = f"{name} T={temperature:g}"
            out["clip_seconds"][key] = clip_seconds(gen, repeats, caption, temperature=temperature,
                                                    cfg_text=cfg_text, speculative=draft, jacobi=jacobi)
            if draft:
                out["draft_order"][key] = kept_drafts(gen.stats)
            print(f"t2v 17x64x64, CFG {cfg_text:g}, {key:<22} {out['clip_seconds'][key]:6.2f} s per clip")
    codes = gen.stats["tokens"]
    hf = to_hf(gen.lm)
    ids = torch.randint(*gen.vocab.code_range, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        hf.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            hf.generate(ids, max_new_tokens=codes, min_new_tokens=codes, do_sample=False, use_cache=True,
                        pad_token_id=0)
            times.append(time.perf_counter() - t0)
    out["hf_seconds"] = statistics.median(times)
    print(f"HF generate, the same weights, 2 rows x {codes} codes, greedy: {out['hf_seconds']:6.2f} s")
    acceptance = {}
    video, clip_caption, _ = heldout_clips(1, 0)[0]
    for task, call in TASK_CALLS.items():
        call(gen, video, clip_caption, cfg_text=cfg_text, seed=0)
        acceptance[task] = kept_drafts(gen.stats)
        print(f"  {task:<16} drafts kept {acceptance[task]['kept']:.0%}, "
              f"{acceptance[task]['codes_per_pass']:.2f} codes per pass (T=1, CFG {cfg_text:g})")
    c = out["clip_seconds"]
    out.update(acceptance=acceptance,
               speculative_vs_plain={t: round(c[f"plain T={t}"] / c[f"speculative T={t}"], 2) for t in ("0", "1")},
               speculative_vs_hf={t: round(out["hf_seconds"] / c[f"speculative T={t}"], 2) for t in ("0", "1")})
    print(f"speculative vs plain: x{out['speculative_vs_plain']['0']:.2f} (T=0), "
          f"x{out['speculative_vs_plain']['1']:.2f} (T=1); vs HF: x{out['speculative_vs_hf']['0']:.2f} (T=0), "
          f"x{out['speculative_vs_hf']['1']:.2f} (T=1)  (targets >= 2.0 and >= 2.5)")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench/lm.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="demo", help="LMConfig preset (dims of both models)")
    p.add_argument("--vocab", type=int, default=None, help="vocab size (default: the preset's)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256, help="tokens per row for training and prefill")
    p.add_argument("--packed-seq", type=int, default=1280, help="packed training rows (the demo LM recipe's seq_len)")
    p.add_argument("--doc-len", type=int, default=600, help="documents in a packed row (the demo's t2v: ~600 tokens)")
    p.add_argument("--prompt", type=int, default=32, help="prompt tokens before decoding")
    p.add_argument("--new", type=int, default=128, help="tokens to decode")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-clip", action="store_true", help="skip the 17-frame demo clip timing")
    p.add_argument("--model", help="trained weights (e.g. shapes-demo): also measure speculative decoding")
    p.add_argument("--out", help="write the ratios to this JSON file")
    p.add_argument("--compile", action="store_true",
                   help="also time the torch.compile'd decode step and training step (minutes of compiling)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from vidlm.lm.config import LMConfig
    from vidlm.lm.model import VideoLM

    overrides = {"vocab_size": args.vocab} if args.vocab else {}
    cfg = LMConfig.from_name(args.preset, **overrides)
    model = VideoLM(cfg).eval()
    hf = to_hf(model)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"preset {args.preset}: {n_params / 1e6:.1f}M params, dim {cfg.dim}, layers {cfg.n_layers}, "
          f"heads {cfg.n_heads}/{cfg.n_kv_heads}, vocab {cfg.vocab_size}; threads {args.threads}, "
          f"torch {torch.__version__}")
    check_logits(model, hf, cfg.vocab_size)

    ours, theirs, _, out = decode_steps(model, hf, args.prompt, args.new, cfg.vocab_size)
    decode = interleaved("decode", ours, theirs, args.new, args.repeats)
    same = (out["ours"] == out["hf"]).float().mean().item()
    print(f"{'':<14} greedy tokens identical to HF's: {same:.1%}")
    paths = decode_paths(model, args.prompt, args.new, args.repeats, args.compile)
    prefill = interleaved("prefill", *prefill_steps(model, hf, args.batch, args.seq, cfg.vocab_size),
                          args.repeats)
    model.train(), hf.train()
    paths.update(optimizer_steps(model, args.repeats))
    train = interleaved("train step", *train_steps(model, hf, args.batch, args.seq, cfg.vocab_size),
                        args.repeats)
    packed = interleaved("train packed", *train_packed_steps(model, hf, 1, args.packed_seq, cfg.vocab_size,
                                                             args.doc_len), args.repeats)
    if args.compile:
        paths.update(compiled_train(model, hf, args, cfg.vocab_size))
    print(f"ratios (ours / HF): decode x{decode:.2f} (target >= 2.0), prefill x{prefill:.2f}, "
          f"train step x{train:.2f}, on packed rows x{packed:.2f} (target >= 1.3)")
    if not args.no_clip:
        from vidlm.pipeline import VideoGenerator

        seconds = clip_seconds(VideoGenerator.random("demo", tokenizer="demo"), args.repeats)  # random weights
        print(f"17-frame 64x64 t2v clip, demo presets: {seconds:.2f} s "
              f"(median of {args.repeats}, after one warm-up)")
    report = {"decode_vs_hf": round(decode, 2), "prefill_vs_hf": round(prefill, 2), "train_vs_hf": round(train, 2),
              "train_packed_vs_hf": round(packed, 2), **paths}
    if args.model:
        report.update(speculative(args.model, args.repeats))
    if args.out:
        import json

        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
