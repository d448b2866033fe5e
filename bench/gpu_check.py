"""The in-process parts of bench/gpu_check.sh: flash-attn against SDPA, the S preset's decode
tokens/s against the memory-bandwidth bound (eager, and through the compiled static step), its
training MFU, and the shipped weights through `VideoGenerator` on the GPU (plain and speculative
decoding, eager and compiled with CUDA graphs; at temperature 0 all four give the same codes).
One line per check,
"name: result"; a check that raises is a "name: FAILED: ..." line (its traceback on stderr), the
others still run, and the exit status is 1. --cpu: the same code on the CPU in fp32
with a small preset, skipping what needs CUDA (flash, bf16, MFU against a GPU's peak)."""

import argparse
import dataclasses
import time
import traceback

import torch
from vidlm.lm.attention import flash_available
from vidlm.lm.config import LMConfig
from vidlm.lm.model import VideoLM
from vidlm.lm.sample import generate
from vidlm.lm.train import PEAK_FLOPS

from vidlm.runtime import adamw


def seconds(fn, device, repeats: int = 3) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def flash_vs_sdpa(device) -> str:
    from vidlm.lm.attention import attention

    if not flash_available():
        raise RuntimeError("flash-attn is not installed here (pip install 'vidlm[gpu]')")
    g = torch.Generator(device).manual_seed(0)
    q = torch.randn(2, 256, 8, 64, device=device, dtype=torch.bfloat16, generator=g)
    k = torch.randn(2, 256, 4, 64, device=device, dtype=torch.bfloat16, generator=g)
    v = torch.randn(2, 256, 4, 64, device=device, dtype=torch.bfloat16, generator=g)
    doc = torch.cat([torch.zeros(2, 100), torch.ones(2, 156)], 1).long().to(device)  # two documents a row
    a = attention(q, k, v, doc, doc, backend="flash").float()
    b = attention(q, k, v, doc, doc, backend="sdpa").float()
    err = (a - b).abs().max().item()
    if not err < 2e-2:
        raise AssertionError(f"flash-attn and SDPA disagree: max |diff| {err:.3g}")
    return f"max |flash - SDPA| {err:.1e} (bf16, 2 documents a row)"


def bandwidth(device) -> float:
    """Device memory bandwidth in bytes/s: a 1 GiB copy (read + write)."""
    x = torch.empty(2**28, device=device)
    y = torch.empty_like(x)
    return 2 * x.numel() * 4 / seconds(lambda: y.copy_(x), device)


def line_prompt(new: int):
    """16 prompt tokens, then `new` positions along one row of latent frame 0."""
    from vidlm.lm.tasks import Prompt

    return Prompt(ids=torch.arange(16), coords=torch.zeros(16, 3, dtype=torch.long),
                  gen_coords=torch.stack([torch.zeros(new), torch.zeros(new), torch.arange(new)], 1).long())


def decode(model, device, new: int = 128) -> str:
    prompt = line_prompt(new)
    tps = new / seconds(lambda: generate(model, prompt, temperature=0), device, repeats=2)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    bound = bandwidth(device) / weights  # each token reads every weight once
    return f"{tps:.0f} tokens/s, {tps / bound:.0%} of the bandwidth bound ({bound:.0f} tokens/s)"


def replay(model, prompt, tokens: torch.Tensor) -> torch.Tensor:
    """Teacher-forced next-token logits (N, V) of `model.step` (eager or compiled) over the prompt
    and the N tokens (1, N): every position sees the same prefix in both runs, so one flipped
    near-tie does not change all the tokens after it."""
    from vidlm.lm.sample import allocate_cache, decode, prefill

    dev = next(model.parameters()).device
    ids = torch.cat([prompt.ids, tokens[0].cpu()]).to(dev)[None]
    coords = torch.cat([prompt.coords, prompt.gen_coords]).to(dev)[None]
    p = len(prompt.ids)
    cache = allocate_cache(model, 1, ids.shape[1])
    out = [prefill(model, ids[:, :p], coords[:, :p], cache)]
    for i in range(p, ids.shape[1] - 1):
        out.append(decode(model, ids[:, i : i + 1], coords[:, i : i + 1], cache, torch.tensor([i], device=dev))[:, -1])
    return torch.cat(out)


def decode_compiled(model, device, mode: str = "default") -> str:
    """Decode through the torch.compile'd static step (`VideoLM.compile_step`): its next-token
    logits against eager's on the same prefixes, and its speed."""
    new = 64
    prompt = line_prompt(new)
    with torch.no_grad():
        eager_ids = generate(model, prompt, temperature=0)
        eager = replay(model, prompt, eager_ids)
        model.compile_step(mode=mode)
        t0 = time.perf_counter()
        compiled = replay(model, prompt, eager_ids)
        first = time.perf_counter() - t0
    if not torch.equal(eager.argmax(-1), eager_ids[0].to(eager.device)):
        raise AssertionError("the eager replay does not reproduce eager greedy decoding")
    agree = float((eager.argmax(-1) == compiled.argmax(-1)).float().mean())
    diff = float((eager - compiled).abs().max() / eager.std())
    if agree < 0.95:  # a bf16 near-tie may flip; more is a broken step
        raise AssertionError(f"compiled next tokens differ from eager's on {1 - agree:.0%} of prefixes "
                             f"(max |logit diff| {diff:.2f} std)")
    tps = new / seconds(lambda: generate(model, prompt, temperature=0), device, repeats=2)
    return (f"{tps:.0f} tokens/s after a {first:.0f} s first call; next tokens as eager's on {agree:.0%} "
            f"of prefixes, max |logit diff| {diff:.3f} std")


def random_rows(cfg: LMConfig, batch: int, seq: int, device, doc_len: int | None = None, seed: int = 0):
    """(ids, coords, doc ids) of `batch` random rows of `seq` tokens; with doc_len, rows packed
    with documents of doc_len tokens (doc ids None without)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=g).to(device)
    coords = torch.arange(seq, device=device)[None, :, None].expand(batch, seq, 3).contiguous()
    doc = None if doc_len is None else (torch.arange(seq, device=device) // doc_len).expand(batch, seq)
    return ids, coords, doc


def train_tokens_per_s(model, device, dtype, batch: int, seq: int, doc_len: int | None = None) -> float:
    """Tokens/s of training steps as `vidlm lm train` runs them (the loss at target positions,
    fused AdamW) on random_rows."""
    ids, coords, doc = random_rows(model.cfg, batch, seq, device, doc_len)
    targets = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -1)], 1)
    opt = adamw(model.parameters(), lr=1e-5)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            model(ids, coords, doc_ids=doc, targets=targets).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return batch * seq / seconds(step, device)


def packed_rows(cfg: LMConfig, device, dtype, batch: int = 16, seq: int = 1280, doc_len: int = 600):
    """The training step on packed rows (documents of a t2v clip's length) with each attention
    backend: SDPA runs one call per document, flex one per layer, flash (if installed) its varlen
    kernel; on a CPU SDPA alone (no FlexAttention backward there). Their gradients must agree on
    the same weights."""
    torch.manual_seed(0)
    ref = VideoLM(cfg)
    ids, coords, doc = random_rows(cfg, 2, seq, device, doc_len, seed=1)
    base, grads = None, {}
    backends = ["sdpa"] if device.type == "cpu" else ["sdpa", "flex"] + ["flash"] * flash_available()
    for backend in backends:
        model = VideoLM(dataclasses.replace(cfg, attn_backend=backend))
        model.load_state_dict(ref.state_dict())
        model.to(device, dtype)  # as DeepSpeed's bf16 engine holds it (flash needs bf16 activations)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            model(ids, coords, doc_ids=doc).float().square().mean().backward()
        grads[backend] = torch.cat([p.grad.flatten() for p in model.parameters()])
        err = (grads[backend] - grads["sdpa"]).norm() / grads["sdpa"].norm()
        if not err < 5e-2:
            raise AssertionError(f"{backend}'s gradients differ from SDPA's: relative error {err:.3g}")
        model.zero_grad(set_to_none=True)
        tps = train_tokens_per_s(model, device, dtype, batch, seq, doc_len)
        base = base or tps
        result = f"{tps:.0f} tokens/s (x{tps / base:.2f} of SDPA per document), gradients within {err:.1e} of SDPA's"
        yield f"packed rows, {backend}", result


def mfu(model, device, dtype, batch: int = 4, seq: int = 2048) -> str:
    cfg = model.cfg
    seq = min(seq, cfg.max_seq_len)
    tps = train_tokens_per_s(model, device, dtype, batch, seq)
    flops = cfg.flops_per_token(seq) * tps  # forward + backward (6 N + attention)
    if device.type != "cuda":
        return f"{tps:.0f} tokens/s, {flops / 1e9:.1f} GFLOP/s (no GPU peak to compare with)"
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    if peak is None:
        return f"{tps:.0f} tokens/s, {flops / 1e12:.1f} TFLOP/s ({name}: peak unknown)"
    return f"{tps:.0f} tokens/s, MFU {flops / peak:.1%} of {name}'s {peak / 1e12:.0f} TFLOP/s bf16"


def clip(gen, device, seed: int, **options) -> tuple[float, torch.Tensor]:
    """Seconds and codes of one 17-frame 64x64 t2v clip (CFG 3), as `vidlm bench lm` times it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = gen.t2v("a red circle bouncing to the right on a black background", frames=17, size=(64, 64),
                  seed=seed, cfg_text=3.0, **options)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out.codes.cpu()


def pipeline(device, model: str = "shapes-demo", repeats: int = 2):
    """The shipped weights through `VideoGenerator`, eager and `compile=True` (CUDA graphs on CUDA):
    seconds per clip, plain against speculative, at temperature 0 and 1 (the median of `repeats`
    seeds after a warm-up that pays any compile). At temperature 0 the codes of all four must be
    the same; at temperature 1 plain and speculative must agree for the same seed (shared noise).
    Yields one (name, result) row per mode and temperature."""
    from vidlm.pipeline import SPECULATIVE, VideoGenerator

    greedy = {}
    for compiled in (False, True):
        gen = VideoGenerator.from_pretrained(model, device=device, compile=compiled)
        for temperature in (0.0, 1.0):
            seconds, codes = {}, {}
            for k in (0, SPECULATIVE):
                t0 = time.perf_counter()
                clip(gen, device, seed=0, temperature=temperature, speculative=k)  # warm-up
                first = time.perf_counter() - t0
                runs = [clip(gen, device, seed=1 + i, temperature=temperature, speculative=k) for i in range(repeats)]
                seconds[k] = sorted(t for t, _ in runs)[(repeats - 1) // 2]
                codes[k] = runs[0][1]
                if temperature == 0:
                    greedy[(compiled, k)] = codes[k]
            name = f"{model} t2v, {'compiled' if compiled else 'eager'}, T={temperature:g}"
            same = torch.equal(codes[0], codes[SPECULATIVE])
            yield name, (f"plain {seconds[0]:.2f} s, speculative {seconds[SPECULATIVE]:.2f} s "
                         f"(x{seconds[0] / seconds[SPECULATIVE]:.2f}; first speculative call {first:.0f} s); "
                         f"{'the same codes' if same else 'CODES DIFFER'}")
            if not same:
                raise AssertionError(f"{name}: speculative codes differ from plain decoding's")
    differ = [("compiled" if c else "eager", k) for (c, k), x in greedy.items() if not torch.equal(x, greedy[(False, 0)])]
    yield f"{model} t2v, T=0, compiled against eager", (f"codes differ: {differ}" if differ else "the same codes")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--preset", default=None, help="LM preset (default S on a GPU, debug on the CPU)")
    p.add_argument("--only", choices=["pipeline"], help="run only this check")
    args = p.parse_args(argv)
    device = torch.device("cpu" if args.cpu else "cuda")
    dtype = torch.float32 if args.cpu else torch.bfloat16
    preset = args.preset or ("debug" if args.cpu else "S")
    failed = []

    def check(name, fn):  # fn returns the result, or yields (row name, result) rows
        try:
            out = fn()
            for row, result in [(name, out)] if isinstance(out, str) else out:
                print(f"{row}: {result}", flush=True)
        except Exception as e:  # noqa: BLE001 - every check runs; each failure is its own row
            traceback.print_exc()
            print(f"{name}: FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", flush=True)
            failed.append(name)

    if args.only == "pipeline":
        check("pipeline", lambda: pipeline(device))
        return 1 if failed else 0
    if not args.cpu:
        check("flash vs SDPA", lambda: flash_vs_sdpa(device))

    def fresh():  # the same random weights each time
        torch.manual_seed(0)
        return VideoLM(LMConfig.from_name(preset)).to(device, dtype).eval()

    check(f"decode {preset} ({'fp32' if args.cpu else 'bf16 weights'})", lambda: decode(fresh(), device))
    check(f"decode {preset} compiled", lambda: decode_compiled(fresh(), device))
    if not args.cpu:  # CUDA graphs (gpt-fast's mode): one launch per token
        check(f"decode {preset} compiled, reduce-overhead", lambda: decode_compiled(fresh(), device, "reduce-overhead"))
    model = VideoLM(LMConfig.from_name(preset)).to(device).train()
    check(f"training step {preset} ({'fp32' if args.cpu else 'bf16 autocast'})", lambda: mfu(model, device, dtype))
    if args.cpu:  # the plumbing: the debug preset's context is 512
        check("packed rows", lambda: packed_rows(LMConfig.from_name(preset), device, dtype, 2, 512, 200))
    else:  # the demo LM's rows of 1280, 16 a step (what docs/experiments/train_loop.py timed)
        check("packed rows", lambda: packed_rows(LMConfig.from_name("demo"), device, dtype))
    if not args.cpu:  # on the CPU the shipped weights' speculative decoding is `vidlm bench lm`'s
        check("pipeline", lambda: pipeline(device))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
