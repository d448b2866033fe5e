"""The one attention module: flash-attn on CUDA when installed, PyTorch SDPA otherwise, and
FlexAttention for packed training rows where it is asked for.

    out = attention(q, k, v, q_doc, k_doc, backend=resolve_backend("auto", q))
    # q (B,Lq,Hq,D), k/v (B,Lk,Hkv,D) -> out (B,Lq,Hq,D); Hq a multiple of Hkv (GQA)

The queries are the last Lq of the Lk key positions (a prefill or decode step appends Lq
tokens to Lk - Lq cached ones). Query i attends to key j iff
    j <= (Lk - Lq) + i  (causal)  and  k_doc[j] == q_doc[i]  and  k_doc[j] >= 0,
so packed rows (doc ids 0, 1, 2, ...) never look across documents and padding (doc id -1) is
never attended. A padding query attends to itself only (its output is garbage but finite).
`q_doc = k_doc = None` means one document per row and no padding (plain causal attention).

Backends
- "sdpa": `scaled_dot_product_attention`. Any device, any dtype; the reference. Full rows with
  doc ids (training, prefill) run it causally on each document (contiguous within a row, as
  packing makes them); a cache's queries attend under a boolean block mask built from the rule
  above; no doc ids is plain `is_causal`.
- "flash": flash-attn 2 (`pip install vidlm[gpu]`), fp16/bf16 on CUDA only:
  `flash_attn_varlen_func` for full rows (each maximal run of one doc id is a sequence,
  cu_seqlens from the doc ids; documents must be contiguous within a row, as packing makes
  them), `flash_attn_func` without doc ids (causal, bottom-right aligned: VideoLM passes none
  for queries over a one-document cache, so no layer checks the cache on the host). Queries
  over a cache that holds padding or several documents fall back to SDPA (flash's kv-cache
  kernel has no document mask).
- "flex": `torch.nn.attention.flex_attention`, compiled, for full rows with doc ids (packed
  training rows): one call a layer under a block mask built once per forward from the rule
  above, where "sdpa" makes one call per document (cheap on a CPU, a launch each on a GPU:
  docs/experiments.md, the H200 loan). Everything else (no doc ids, queries over a cache) is
  SDPA's. PyTorch has no FlexAttention backward on a CPU, so on a CPU "flex" serves inference
  only; opt in (`attn_backend: flex`) until a GPU run has measured it (bench/gpu_check.py).
`resolve_backend("auto", x)` picks flash where it can run, else SDPA. A model runs
`layer_plan(q_doc, k_doc)` once per forward and passes it to every layer's
`attention(..., plan=)`: the block mask, or the document runs of full rows (one host read per
forward, not per layer). tests/test_lm_model.py
checks that the backends agree (GPU-marked) and pins the SDPA path on CPU.
"""

from __future__ import annotations

import importlib.util
from itertools import pairwise
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def flash_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()


def resolve_backend(backend: str, x: Tensor) -> str:
    """"auto" -> "flash" for fp16/bf16 CUDA tensors when flash-attn is installed, else "sdpa"."""
    if backend in ("sdpa", "flex"):
        return backend
    can = x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) and flash_available()
    if backend == "flash" and not can:
        raise RuntimeError("attn_backend='flash' needs flash-attn installed (pip install 'vidlm[gpu]') and "
                           "fp16/bf16 tensors on CUDA; use 'auto' or 'sdpa' here")
    return "flash" if can else "sdpa"


def block_mask(q_doc: Tensor, k_doc: Tensor) -> Tensor:
    """Boolean mask (B,1,Lq,Lk), True = attend, for queries at the last Lq key positions."""
    lq, lk = q_doc.shape[1], k_doc.shape[1]
    qpos = torch.arange(lk - lq, lk, device=k_doc.device)[:, None]  # (Lq,1)
    kpos = torch.arange(lk, device=k_doc.device)[None, :]  # (1,Lk)
    same = (q_doc[:, :, None] == k_doc[:, None, :]) & (k_doc[:, None, :] >= 0)  # (B,Lq,Lk)
    mask = (same & (kpos <= qpos)) | (kpos == qpos)
    return mask[:, None]


class Runs(NamedTuple):
    """The maximal runs of one doc id in full rows (B,L), over the flattened rows."""

    cu: Tensor  # (N+1,) int32 run boundaries (flash-attn's cu_seqlens)
    longest: int
    bounds: list[int]  # cu on the host
    ids: list[int]  # each run's doc id (-1: padding)


def document_runs(doc: Tensor) -> Runs:
    b, n = doc.shape
    flat = doc.reshape(-1)
    start = torch.ones_like(flat, dtype=torch.bool)
    start[1:] = flat[1:] != flat[:-1]
    start[::n] = True  # every row starts a run
    starts = start.nonzero().flatten()
    cu = torch.cat([starts, starts.new_tensor([b * n])]).to(torch.int32)
    bounds = cu.tolist()
    return Runs(cu, max(e - s for s, e in pairwise(bounds)), bounds, flat[starts].tolist())


def flex_mask(doc: Tensor):
    """FlexAttention's BlockMask of full rows (B,L) with doc ids: the rule of the module doc."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q, k):
        return (doc[b, q] == doc[b, k]) & (doc[b, k] >= 0) & (k <= q) | (k == q)

    b, n = doc.shape
    return create_block_mask(mask_mod, b, None, n, n, device=doc.device)


def layer_plan(q_doc: Tensor | None, k_doc: Tensor | None, backend: str = "sdpa"):
    """What a caller running many layers computes once for `attention(..., plan=)`: the document
    runs of full rows with doc ids (flex: their BlockMask), block_mask for queries over a cache
    with doc ids (fewer queries than keys; SDPA under that mask, whatever the backend: flash and
    flex get no document mask there), None without doc ids."""
    if q_doc is None:
        return None
    if q_doc.shape[1] == k_doc.shape[1]:
        return flex_mask(q_doc) if backend == "flex" else document_runs(q_doc)
    return block_mask(q_doc, k_doc)


def sdpa(q: Tensor, k: Tensor, v: Tensor, q_doc: Tensor | None, k_doc: Tensor | None,
         plan: Tensor | Runs | None = None) -> Tensor:
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B,H,L,D)
    lq, lk = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if isinstance(plan, Tensor):  # a mask the caller built: block_mask, or the static decode step's
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=plan, enable_gqa=gqa)
    elif q_doc is None:
        if lq == lk or lq == 1:  # a single query is the last position: it sees every key
            out = F.scaled_dot_product_attention(q, k, v, is_causal=lq == lk > 1, enable_gqa=gqa)
        else:
            ones = torch.zeros(q.shape[0], lq, dtype=torch.long, device=q.device)
            mask = block_mask(ones, torch.zeros(q.shape[0], lk, dtype=torch.long, device=q.device))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    elif lq == lk:
        out = _per_document(q, k, v, plan or document_runs(q_doc))
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=block_mask(q_doc, k_doc), enable_gqa=gqa)
    return out.transpose(1, 2)


def _per_document(q: Tensor, k: Tensor, v: Tensor, runs: Runs) -> Tensor:
    """Full rows (B,H,L,D) of contiguous documents: causal SDPA on each document alone, so no
    (L,L) mask is built and no work is spent on the blocks a mask would throw away (about half
    of a packed row's attention, and more with several documents). A padding query (doc -1)
    attends to itself only: its output is its value."""
    b, h, n, d = q.shape
    rep = h // k.shape[1]
    pieces = []
    for (s, e), i in zip(pairwise(runs.bounds), runs.ids):
        r, a = divmod(s, n)
        z = a + e - s
        if i < 0:
            pieces.append(v[r, :, a:z].repeat_interleave(rep, 0))
        else:
            pieces.append(F.scaled_dot_product_attention(q[r : r + 1, :, a:z], k[r : r + 1, :, a:z], v[r : r + 1, :, a:z],
                                                          is_causal=True, enable_gqa=rep > 1)[0])
    return torch.cat(pieces, 1).view(h, b, n, d).transpose(0, 1)


def flash(q: Tensor, k: Tensor, v: Tensor, q_doc: Tensor | None, k_doc: Tensor | None,
          runs: Runs | None = None) -> Tensor:
    from flash_attn import flash_attn_func, flash_attn_varlen_func

    b, lq = q.shape[:2]
    lk = k.shape[1]
    if q_doc is None:
        return flash_attn_func(q, k, v, causal=True)  # bottom-right aligned causal mask
    if lq == lk:
        r = runs or document_runs(q_doc)
        out = flash_attn_varlen_func(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), r.cu, r.cu, r.longest,
                                     r.longest, causal=True)
        return out.view(b, lq, *out.shape[1:])
    return sdpa(q, k, v, q_doc, k_doc)  # queries over a cache with padding or several documents


_compiled_flex = None


def flex(q: Tensor, k: Tensor, v: Tensor, mask) -> Tensor:
    """Full rows (B,L,H,D) under a flex_mask, in one compiled FlexAttention call."""
    global _compiled_flex
    if _compiled_flex is None:  # compiled once per process (unfused eager flex materialises the scores)
        from torch.nn.attention.flex_attention import flex_attention

        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B,H,L,D)
    return _compiled_flex(q, k, v, block_mask=mask, enable_gqa=q.shape[1] != k.shape[1]).transpose(1, 2)


def attention(q: Tensor, k: Tensor, v: Tensor, q_doc: Tensor | None = None, k_doc: Tensor | None = None,
              *, backend: str = "sdpa", plan=None) -> Tensor:
    """q (B,Lq,Hq,D), k/v (B,Lk,Hkv,D), doc ids (B,Lq)/(B,Lk) or None -> (B,Lq,Hq,D).
    `plan`: layer_plan(q_doc, k_doc, backend), when the caller computes it once for all layers,
    or, with no doc ids, any boolean mask broadcastable to (B,1,Lq,Lk) (SDPA)."""
    if (q_doc is None) != (k_doc is None):
        raise ValueError("pass both q_doc and k_doc, or neither")
    if backend == "flash" and not isinstance(plan, Tensor):
        return flash(q, k, v, q_doc, k_doc, plan)
    if backend == "flex" and q_doc is not None and q.shape[1] == k.shape[1]:
        return flex(q, k, v, plan if plan is not None else flex_mask(q_doc))
    return sdpa(q, k, v, q_doc, k_doc, plan)
