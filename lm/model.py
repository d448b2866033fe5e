"""The video LM: a decoder-only transformer over one id space (specials | text | codes).

    model = VideoLM(LMConfig.from_name("demo", vocab_size=vocab.size))
    logits = model(ids, coords)                     # ids (B,L), coords (B,L,3) (t,y,x) -> (B,L,V) fp32
    logits = model(ids, coords, doc_ids=doc)        # packed rows: doc ids 0,1,2,...; -1 = padding
    cache = KVCache.allocate(model.cfg, B, max_len)
    logits = model(prompt, prompt_coords, cache=cache, last_only=True)  # prefill, then token by token

Llama-style blocks: RMSNorm -> grouped-query attention -> RMSNorm -> SwiGLU, untied embedding
and head. Positions are 3D: every token carries its true spacetime coordinate (t, y, x) and
attention rotates queries and keys by 3D RoPE (M-RoPE):

- The head dimension holds head_dim/2 rotation frequencies theta^(-2i/head_dim), exactly those
  of 1D RoPE (rotate-half layout, as Llama / Hugging Face). Frequency i turns with coordinate
  axis i % 3 (t, y, x, t, y, x, ...): the axes take interleaved sections of the spectrum, so each
  gets fast and slow frequencies (contiguous sections would leave x with only the slowest ones,
  nearly constant across a small grid).
- A token on the diagonal (t = y = x = p) therefore rotates exactly as 1D RoPE at position p:
  text and specials sit on the diagonal and behave as in a plain LLM (bench/lm.py checks the
  logits against Hugging Face's LlamaForCausalLM with the same weights).
- Only coordinate differences matter: shifting every t (or y, or x) by a constant leaves the
  logits unchanged.

The KV cache stores keys already rotated, with the doc id of every cached token, so a sliding
window (`keep_last`) drops old tokens without recomputing anything.
This module never imports the video tokenizer (docs/ARCHITECTURE.md: lm/ knows only codes).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from vidlm.lm.attention import attention, layer_plan, resolve_backend
from vidlm.lm.config import LMConfig

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


# ----------------------------------------------------------------------------- KV cache
@dataclass
class KVCache:
    """Static cache of every layer's rotated keys and values, and the doc ids of cached tokens.

    k, v: (n_layers, B, max_len, n_kv_heads, head_dim) (flash-attn's layout); doc: (B, max_len)
    (-1 where empty); length: tokens filled. The model appends at `length` and advances it.
    """

    k: Tensor
    v: Tensor
    doc: Tensor
    length: int = 0
    uniform: bool = True
    """Every cached token is in document 0 of its row (no padding): a one-token step then needs
    no mask, and knowing it on the host spares a device sync per token."""

    @classmethod
    def allocate(cls, cfg: LMConfig, batch_size: int, max_len: int, device=None, dtype=None) -> KVCache:
        if max_len > cfg.max_seq_len:
            raise ValueError(f"a KV cache of {max_len} tokens exceeds the model's context of {cfg.max_seq_len}")
        shape = (cfg.n_layers, batch_size, max_len, cfg.kv_heads, cfg.head_dim)
        dtype = dtype or torch.float32
        cache = cls(k=torch.zeros(shape, device=device, dtype=dtype), v=torch.zeros(shape, device=device, dtype=dtype),
                    doc=torch.full((batch_size, max_len), -1, dtype=torch.long, device=device))
        for t in (cache.k, cache.v, cache.doc):
            # the compiled step writes into these buffers: static addresses let CUDA graphs
            # ("reduce-overhead") capture it, as gpt-fast's module-buffer caches do; unguarded, so a
            # new cache re-records the graph rather than recompiling the step
            torch._dynamo.mark_static_address(t, guard=False)
        return cache

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def truncate(self, length: int) -> None:
        """Forget the cached tokens from `length` on (speculative decoding's rejected drafts)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"truncate({length}) with {self.length} cached tokens")
        self.doc[:, length : self.length] = -1
        self.length = length

    def keep_last(self, n: int, sink: int = 0) -> None:
        """Sliding window: keep the first `sink` cached tokens (the prompt) and the last n (moved
        to follow them); the ones between are dropped."""
        if not (0 <= n and 0 <= sink and sink + n <= self.length):
            raise ValueError(f"keep_last({n}, sink={sink}) with {self.length} cached tokens")
        s, end = self.length - n, sink + n
        self.k[:, :, sink:end] = self.k[:, :, s : self.length].clone()
        self.v[:, :, sink:end] = self.v[:, :, s : self.length].clone()
        self.doc[:, sink:end] = self.doc[:, s : self.length].clone()
        self.doc[:, end:] = -1
        self.length = end


LOSS_CHUNK = 4096
"""Positions per chunk of the training loss (`VideoLM.target_losses`)."""


# ----------------------------------------------------------------------------- 3D RoPE
@functools.lru_cache(maxsize=8)
def _rope_table(head_dim: int, theta: float, device: torch.device) -> tuple[Tensor, Tensor]:
    """(axis, inv_freq), each (head_dim/2,): frequency i is theta^(-2i/head_dim) (fp64), turning
    with coordinate axis i % 3. Cached: a decode step would otherwise rebuild it every token."""
    idx = torch.arange(head_dim // 2, device=device)
    return idx % 3, theta ** (-2.0 * idx.double() / head_dim)


def rope_angles(coords: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """coords (B,L,3) int -> cos, sin (B,L,1,head_dim) fp32 for the rotate-half layout."""
    table = _rope_table.__wrapped__ if torch.compiler.is_compiling() else _rope_table  # a trace inlines it
    axis, inv_freq = table(head_dim, theta, coords.device)
    ang = (coords[..., axis].double() * inv_freq).float()  # (B,L,half), computed in fp64
    ang = torch.cat([ang, ang], dim=-1)[:, :, None, :]  # (B,L,1,head_dim)
    return ang.cos(), ang.sin()


def code_values(cfg: LMConfig) -> Tensor:
    """(vocab, n+1) fp32: each code id's FSQ values (vector-quantize-pytorch's, as the tokenizer
    codes them), then -|v|^2 / 2; zero rows for other ids."""
    from vector_quantize_pytorch import FSQ

    v = FSQ(levels=list(cfg.code_levels)).indices_to_codes(torch.arange(math.prod(cfg.code_levels))).float()
    table = torch.zeros(cfg.vocab_size, v.shape[1] + 1)
    table[cfg.code_start : cfg.code_start + len(v)] = torch.cat([v, -0.5 * v.square().sum(1, keepdim=True)], 1)
    return table


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B,L,H,D) rotated by the angles (B,L,1,D), computed in fp32."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return torch.addcmul(xf * cos, rotated, sin).to(x.dtype)


# ----------------------------------------------------------------------------- layers
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class Attention(nn.Module):
    """Grouped-query attention with one fused projection: wqkv = [wq; wk; wv] (gpt-fast's layout:
    one matmul instead of three, and q and k are rotated in one call)."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        hd = cfg.head_dim
        self.wqkv = nn.Linear(cfg.dim, (cfg.n_heads + 2 * cfg.kv_heads) * hd, bias=False)
        self.wo = nn.Linear(cfg.n_heads * hd, cfg.dim, bias=False)

    def forward(self, x: Tensor, rope: tuple, docs: tuple, cache: KVCache | None, layer: int,
                pos: Tensor | None = None, keys: int | None = None) -> Tensor:
        # rope: (cos, sin) of every token's coordinates, then the queries' own (cos, sin) if they differ
        b, n, _ = x.shape  # (B,L,dim)
        hq, hkv = self.cfg.n_heads, self.cfg.kv_heads
        qkv = self.wqkv(x).view(b, n, hq + 2 * hkv, self.cfg.head_dim)
        v = qkv[:, :, hq + hkv :]
        if len(rope) == 2:
            qk = apply_rope(qkv[:, :, : hq + hkv], *rope)
            q, k = qk[:, :, :hq], qk[:, :, hq:]  # (B,L,Hq,D), (B,L,Hkv,D)
        else:
            q, k = apply_rope(qkv[:, :, :hq], *rope[2:]), apply_rope(qkv[:, :, hq : hq + hkv], *rope[:2])
        if pos is not None:  # static step: write at the positions `pos`, attend over the first `keys` slots
            cache.k[layer].index_copy_(1, pos, k.to(cache.k.dtype))
            cache.v[layer].index_copy_(1, pos, v.to(cache.v.dtype))
            k, v = cache.k[layer, :, :keys], cache.v[layer, :, :keys]  # (B,keys,Hkv,D)
        elif cache is not None:  # append the rotated keys at cache.length, attend over all filled
            s = cache.length
            cache.k[layer, :, s : s + n] = k
            cache.v[layer, :, s : s + n] = v
            k, v = cache.k[layer, :, : s + n], cache.v[layer, :, : s + n]  # (B,S,Hkv,D)
        q_doc, k_doc, plan, backend = docs
        out = attention(q, k.to(q.dtype), v.to(q.dtype), q_doc, k_doc, backend=backend, plan=plan)
        return self.wo(out.reshape(b, n, -1))  # (B,L,dim)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(x W1) * x W3), with W1 and W3 fused into one matmul (w13 = [w1; w3])."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.hidden_dim = cfg.ffn_dim
        self.w13 = nn.Linear(cfg.dim, 2 * self.hidden_dim, bias=False)
        self.w2 = nn.Linear(self.hidden_dim, cfg.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = FeedForward(cfg)

    def forward(self, x, rope, docs, cache, layer, pos=None, keys=None):
        x = x + self.attn(self.attn_norm(x), rope, docs, cache, layer, pos, keys)
        return x + self.mlp(self.mlp_norm(x))


# ----------------------------------------------------------------------------- the model
class VideoLM(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.digit_in = self.digit_out = None
        if cfg.code_levels:  # see LMConfig.code_levels
            n = len(cfg.code_levels)
            self.register_buffer("code_values", code_values(cfg), persistent=False)  # (V, n+1)
            self.digit_in = nn.Sequential(nn.Linear(n, cfg.dim, bias=False), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim, bias=False))
            self.digit_out = nn.Linear(cfg.dim, n + 1, bias=False)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        from vidlm.runtime import gathered

        # built under deepspeed.zero.Init, the layers are partitioned by now: gather to initialise
        std = self.cfg.init_std
        with gathered(self.parameters()):
            for name, p in self.named_parameters():
                if p.dim() == 2 or getattr(p, "ds_shape", None) is not None and len(p.ds_shape) == 2:
                    scale = 1 / math.sqrt(2 * self.cfg.n_layers) if name.endswith(("wo.weight", "w2.weight")) else 1.0
                    nn.init.normal_(p, mean=0.0, std=std * scale)
            if self.digit_in is not None:  # zero: a model grown with them computes what it did without
                nn.init.zeros_(self.digit_in[2].weight)
                nn.init.zeros_(self.digit_out.weight)

    def embed(self, ids: Tensor, coords: Tensor, next_coords: Tensor | None) -> tuple[Tensor, tuple]:
        """The input of the first block, and the (cos, sin) of coords (B,L,3); with cfg.next_query,
        then the queries' (cos, sin) at the coordinates of the tokens they predict: next_coords
        (B,L,3), by default the next token's in the row (the last one keeps its own), which is what
        a training row holds. cfg.code_levels adds each code's FSQ values to the input."""
        if next_coords is None:
            next_coords = torch.cat([coords[:, 1:], coords[:, -1:]], 1)
        x = self.tok_emb(ids)  # (B,L,dim)
        if self.digit_in is not None:
            x = x + self.digit_in(self.code_values[ids, :-1].to(x.dtype))
        rope = rope_angles(coords, self.cfg.head_dim, self.cfg.rope_theta)  # (B,L,1,D) each
        if self.cfg.next_query:
            rope = rope + rope_angles(next_coords, self.cfg.head_dim, self.cfg.rope_theta)
        return x, rope

    def forward(self, ids: Tensor, coords: Tensor, *, cache: KVCache | None = None,
                doc_ids: Tensor | None = None, last_only: bool = False, targets: Tensor | None = None,
                next_coords: Tensor | None = None) -> Tensor:
        # ids (B,L), coords (B,L,3), doc_ids (B,L) or None -> logits (B,L,V), or (B,1,V) last_only;
        # targets (B,L) (the next id where a position carries a loss, else -1) -> losses (N,) of those;
        # next_coords (B,L,3): where each position's prediction goes (cfg.next_query; see `rope`)
        b, n = ids.shape
        if coords.shape != (b, n, 3):
            raise ValueError(f"coords must be (B,L,3) = {(b, n, 3)} for ids {tuple(ids.shape)}, got {tuple(coords.shape)}")
        q_doc = k_doc = doc_ids
        x, rope = self.embed(ids, coords, next_coords)
        backend = resolve_backend(self.cfg.attn_backend, x)
        if cache is not None:
            s = cache.length
            if s + n > cache.max_len:
                raise ValueError(f"KV cache full: {s} cached + {n} new tokens > its {cache.max_len}")
            cache.doc[:, s : s + n] = torch.zeros_like(ids) if doc_ids is None else doc_ids
            if doc_ids is not None and cache.uniform:  # a host sync, but only where docs are given
                cache.uniform = not bool(doc_ids.ne(0).any())
            q_doc, k_doc = cache.doc[:, s : s + n], cache.doc[:, : s + n]  # (B,L), (B,S)
            if cache.uniform and (s == 0 or n == 1 or backend == "flash"):
                # one document, no padding: plain causal, no mask to build (flash's causal mask is
                # bottom-right aligned, so any block of queries; SDPA's offset mask for a block
                # comes from the doc ids, built once by layer_plan)
                q_doc = k_doc = None
        elif n > self.cfg.max_seq_len:
            raise ValueError(f"{n} tokens exceed the model's context of {self.cfg.max_seq_len}")
        docs = (q_doc, k_doc, layer_plan(q_doc, k_doc, backend), backend)  # once, all layers
        ckpt = self.cfg.checkpointing and self.training and cache is None and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            if ckpt:
                x = torch.utils.checkpoint.checkpoint(layer, x, rope, docs, None, i, use_reentrant=False)
            else:
                x = layer(x, rope, docs, cache, i)
        if cache is not None:
            cache.length += n
        if targets is not None:
            return self.target_losses(x, targets)
        if last_only:  # prefill and sampling need the next-token logits only
            x = x[:, -1:]
        return self.logits(x)  # (B,L,V)

    def logits(self, x: Tensor) -> Tensor:
        """The last block's output -> fp32 logits; with code_levels, plus -s/2 |v - mu|^2 for each
        code's FSQ values v, mu and s predicted here (the constant |mu|^2 left out)."""
        x = self.norm(x)
        out = self.head(x)
        if self.digit_out is not None:
            out = out + self.digit_out(x) @ self.code_values.T.to(x.dtype)
        return out.float()

    def target_losses(self, x: Tensor, targets: Tensor) -> Tensor:
        """Cross entropy (N,) fp32 at the N positions with a target (>= 0), in order: the norm,
        head and loss run on those positions only, LOSS_CHUNK at a time, each chunk recomputed in
        the backward pass, so no (B,L,V) logits are ever held (the head is the biggest matmul of
        a small model's step, and its fp32 logits the biggest activation of a large vocab's)."""
        sel = targets >= 0
        h, t = x[sel], targets[sel]  # (N,dim), (N,)

        def chunk(h: Tensor, t: Tensor) -> Tensor:
            return F.cross_entropy(self.logits(h), t, reduction="none")

        ckpt = torch.is_grad_enabled()
        parts = [torch.utils.checkpoint.checkpoint(chunk, h[i : i + LOSS_CHUNK], t[i : i + LOSS_CHUNK],
                                                   use_reentrant=False) if ckpt else
                 chunk(h[i : i + LOSS_CHUNK], t[i : i + LOSS_CHUNK]) for i in range(0, len(t), LOSS_CHUNK)]
        return torch.cat(parts) if parts else x.new_zeros(0, dtype=torch.float32)

    static_shapes = False
    """`step` attends over the whole cache buffer (one shape for every position: set by
    `compile_step`), not over its filled slots only."""

    def step(self, ids: Tensor, coords: Tensor, pos: Tensor, cache: KVCache, next_coords: Tensor | None = None) -> Tensor:
        """Decode with static buffers (gpt-fast's): ids (B,n) at coords (B,n,3) are written at
        positions `pos` ((n,) long tensor, consecutive from cache.length) of the cache, in document
        0, and attend under the mask doc == 0 and key position <= query's (empty slots hold doc -1).
        Compiled (`static_shapes`), the keys are the whole buffer: no host sync and no Python-side
        length, so `compile_step` traces it once for every position. Eager, they are the filled
        slots only (cache.length + n), as a dynamic cache's: the buffer's empty tail would double
        the attention of an average step (`vidlm bench lm`). The caller advances `cache.length`.
        Logits (B,n,V)."""
        n = ids.shape[1]
        keys = cache.max_len if self.static_shapes else cache.length + n
        cache.doc.index_fill_(1, pos, 0)
        if not self.static_shapes and n == 1 and cache.uniform:
            mask = None  # one query after every filled slot of one unpadded document: no mask
        else:
            causal = torch.arange(keys, device=pos.device)[None, :] <= pos[:, None]  # (n,keys)
            mask = (cache.doc[:, :keys] == 0)[:, None, None, :] & causal[None, None]  # (B,1,n,keys)
        x, rope = self.embed(ids, coords, next_coords)
        docs = (None, None, mask, "sdpa")  # flash's kv-cache kernel has no document mask
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, docs, cache, i, pos, keys)
        return self.logits(x)

    def compile_step(self, backend: str = "inductor", mode: str = "auto") -> VideoLM:
        """Replace `step` by `torch.compile(step, fullgraph=True, mode=mode)`: one graph for every
        position (the first call traces it, seconds to a minute; a second block length, as
        speculative passes have, makes it dynamic in that length); a graph break is an error.
        mode "auto": "reduce-overhead" (CUDA graphs: one launch per step) on CUDA, "default"
        elsewhere. On an H200 the S preset decoded 122 tokens/s eager, 309 compiled "default",
        1156 "reduce-overhead" (bench/gpu_check.py). Under CUDA graphs the next replay
        overwrites a step's output buffer, so that step returns a copy of its logits."""
        if mode == "auto":
            mode = "reduce-overhead" if next(self.parameters()).is_cuda else "default"
        self.static_shapes = True
        step = torch.compile(self.step, backend=backend, fullgraph=True, mode=mode)
        self.step = (lambda *args: step(*args).clone()) if mode == "reduce-overhead" else step
        # CUDA graphs record one graph per pass length: speculative passes are then padded to one
        # length (lm/sample.py); on an H200 nine lengths made speculative T=1 x0.72 of plain
        self.pads_passes = mode == "reduce-overhead"
        return self

    # ------------------------------------------------------------------ weights
    def save_pretrained(self, out_dir, vocab=None) -> Path:
        """out_dir/model.safetensors + config.json (+ vocab.json when `vocab` is given)."""
        from safetensors.torch import save_file

        from vidlm.config import to_dict

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(out / WEIGHTS_FILE))
        (out / CONFIG_FILE).write_text(json.dumps(to_dict(self.cfg), indent=1) + "\n")
        if vocab is not None:
            vocab.save(out)
        return out

    @classmethod
    def from_pretrained(cls, path, device="cpu", **overrides) -> VideoLM:
        """Load a folder written by save_pretrained / `vidlm lm export`."""
        from vidlm.config import from_dict, load_weights, read_json

        path = Path(path)
        if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{path} has no {CONFIG_FILE} + {WEIGHTS_FILE}: export a run with "
                                    "`vidlm lm export --run RUN --out DIR`")
        data = {**read_json(path / CONFIG_FILE), **overrides}
        model = cls(from_dict(LMConfig, data, where=str(path / CONFIG_FILE)))
        load_weights(model, path / WEIGHTS_FILE, path / CONFIG_FILE, "vidlm lm export --run RUN --out DIR", device)
        return model.to(device)
