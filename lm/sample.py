"""Token-level sampling: small pure functions over a model that returns logits.

The model is any `VideoLM`-like module: `model(ids (B,L), coords (B,L,3), cache=, doc_ids=,
last_only=) -> logits (B,L,V)` ((B,1,V) with last_only) with an explicit static `KVCache`
(`vidlm.lm.model.KVCache`). Nothing here knows about videos: a prompt is token ids + their
(t, y, x) coordinates + the coordinates still to generate (`vidlm.lm.tasks.Prompt`); the caller
says which id range is legal (for video positions, `vocab.code_range`).

    prompt = render_prompt(...)                     # ids (L,), coords (L,3), gen_coords (N,3)
    g = torch.Generator().manual_seed(0)
    new = generate(model, prompt, legal=vocab.code_range, temperature=1.0, top_k=64,
                   cfg=CFG(text=3.0, visual=1.5, no_text=prompt_without_text, uncond=bare),
                   generator=g)                     # (1, N) ids, all inside `legal`

Batches: pass a list of prompts (any lengths; they are left-padded, pads get doc id -1 so they
are never attended). All prompts of a batch generate the same number of tokens.

Classifier-free guidance, with separate text and visual-condition scales (`CFG`):

    logits = u + visual * (v - u) + text * (c - v)
           = text * c + (visual - text) * v + (1 - visual) * u

where c are the logits of the full prompt, v of the prompt with its text dropped (known frames
kept) and u of the prompt with text and known frames dropped. text = visual = 1 is plain
conditional sampling, text = visual = 0 is unconditional sampling, text = visual = s is classic
CFG `u + s (c - u)`. The variants are stacked as rows of ONE batch; a variant whose weight is 0
is not computed at all.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


class ContextError(ValueError):
    """A request that does not fit the model's context (the message says what fits)."""


@dataclass(frozen=True)
class CFG:
    """Classifier-free guidance: `logits = u + visual * (v - u) + text * (c - v)` (see module doc)."""

    text: float = 1.0
    """Text scale s_t: how far to push from the no-text logits v towards the full logits c."""
    visual: float = 1.0
    """Visual-condition scale s_v: how far to push from the bare logits u towards v."""
    no_text: Any = None
    """Prompt(s) with the text dropped and known frames kept (one per conditional prompt)."""
    uncond: Any = None
    """Prompt(s) with text and known frames dropped (one per conditional prompt)."""


def _as_list(prompt) -> list:
    return list(prompt) if isinstance(prompt, (list, tuple)) else [prompt]


def cfg_groups(prompt, cfg: CFG | None) -> list[tuple[float, list]]:
    """[(weight, prompts)] for each prompt variant with a non-zero weight (variants that are the
    same objects are merged by summing their weights)."""
    prompts = _as_list(prompt)
    if cfg is None:
        return [(1.0, prompts)]
    raw = [
        (cfg.text, prompts, "the prompt"),
        (cfg.visual - cfg.text, cfg.no_text, "CFG.no_text (the prompt without its text)"),
        (1.0 - cfg.visual, cfg.uncond, "CFG.uncond (the prompt without text and known frames)"),
    ]
    groups: list[tuple[float, list]] = []
    for weight, variant, name in raw:
        if weight == 0:
            continue
        if variant is None:
            raise ValueError(
                f"CFG(text={cfg.text}, visual={cfg.visual}) gives {name} the weight {weight}, "
                f"but it was not given; pass it, or use scales that do not need it"
            )
        variant = _as_list(variant)
        if len(variant) != len(prompts):
            raise ValueError(f"{name}: {len(variant)} prompts for {len(prompts)} requests")
        for i, (w, other) in enumerate(groups):
            if all(a is b for a, b in zip(other, variant)):
                groups[i] = (w + weight, other)
                break
        else:
            groups.append((weight, variant))
    return groups


def pad_prompts(prompts: Sequence) -> tuple[Tensor, Tensor, Tensor]:
    """Left-pad prompts into a batch: ids (B,P), coords (B,P,3), doc_ids (B,P) (-1 at pads)."""
    width = max(len(p.ids) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    coords = torch.zeros(len(prompts), width, 3, dtype=torch.long)
    doc_ids = torch.full((len(prompts), width), -1, dtype=torch.long)
    for row, p in enumerate(prompts):
        n = len(p.ids)
        ids[row, width - n :] = torch.as_tensor(p.ids)
        coords[row, width - n :] = torch.as_tensor(p.coords)
        doc_ids[row, width - n :] = 0
    return ids, coords, doc_ids


def context_length(model) -> int:
    """The number of tokens the model's context holds (its config's max_seq_len)."""
    return int(model.cfg.max_seq_len)


def check_fits(model, prompt_len: int, new_tokens: int, what: str = "") -> None:
    """Raise ContextError with what does fit if prompt + new tokens exceed the context."""
    ctx = context_length(model)
    if prompt_len + new_tokens > ctx:
        raise ContextError(
            f"{what or 'the request'} needs {prompt_len} prompt + {new_tokens} generated = "
            f"{prompt_len + new_tokens} tokens, but the model's context holds {ctx}; at most "
            f"{max(ctx - prompt_len, 0)} tokens can be generated after this prompt"
        )


def allocate_cache(model, batch_size: int, max_len: int):
    """A static KV cache for `batch_size` rows of up to `max_len` tokens, on the model's device."""
    from vidlm.lm.model import KVCache

    param = next(model.parameters())
    return KVCache.allocate(model.cfg, batch_size, max_len, device=param.device, dtype=param.dtype)


def prefill(model, ids: Tensor, coords: Tensor, cache, doc_ids: Tensor | None = None) -> Tensor:
    """Run the prompt ids (B,L) at coords (B,L,3) into the cache; logits of the last position (B,V)."""
    return model(ids, coords, cache=cache, doc_ids=doc_ids, last_only=True)[:, -1]


def decode_one_token(model, token: Tensor, coord: Tensor, cache, doc_ids: Tensor | None = None) -> Tensor:
    """Append one token per row, token (B,) at coord (B,3); the next-token logits (B,V)."""
    if doc_ids is None:
        doc_ids = torch.zeros_like(token)
    return model(token[:, None], coord[:, None], cache=cache, doc_ids=doc_ids[:, None])[:, -1]


def sample_logits(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One id per row from logits (B,V): temperature 0 is argmax; top-k, then top-p (nucleus)."""
    if temperature < 0 or (top_p is not None and not 0 < top_p <= 1) or (top_k is not None and top_k < 1):
        raise ValueError(f"need temperature >= 0, top_k >= 1, 0 < top_p <= 1; got "
                         f"{temperature}, {top_k}, {top_p}")
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix with mass >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1)
    # Gumbel-max in its exponential form: argmax(p / q), q ~ Exp(1), seeded by `generator`.
    q = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / q).argmax(-1)


def _restrict(logits: Tensor, legal: tuple[int, int] | None) -> Tensor:
    return logits if legal is None else logits[:, legal[0] : legal[1]]


def _combine(logits: Tensor, weights: list[float], batch: int) -> Tensor:
    """(G*B, V) logits of G prompt variants -> (B, V) guided logits, the weighted sum."""
    if len(weights) == 1 and weights[0] == 1.0:
        return logits
    rows = logits.view(len(weights), batch, -1)
    return sum(w * rows[g] for g, w in enumerate(weights))


@torch.inference_mode()
def stream(
    model,
    prompt,
    *,
    max_new_tokens: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    cfg: CFG | None = None,
    generator: torch.Generator | None = None,
    legal: tuple[int, int] | None = None,
    use_cache: bool = True,
    window: int | None = None,
    keep: int | None = None,
    period: int = 1,
    cache=None,
) -> Iterator[Tensor]:
    """Yield the new ids (B,) one position at a time, as they are sampled.

    prompt: one `Prompt` (ids (L,), coords (L,3), gen_coords (N,3)) or a list of them.
    max_new_tokens: how many of the N gen_coords to fill (default all N).
    legal: the id range [lo, hi) allowed at every generated position (vocab.code_range);
      nothing outside it is ever sampled. None allows the whole vocabulary.
    use_cache: False recomputes the whole sequence at every step (the reference path).
    window / keep: sliding window for long generation. The cache holds `window` tokens (default
      all that is needed); when it is full, the generated tokens but the last `keep` are dropped
      (KVCache.keep_last) and generation goes on, without re-reading what was dropped. The
      prompt (task, grid, caption, known frames) stays in the cache as a fixed sink: every
      token, however late, still sees it.
      period: keep `keep` tokens plus as many more as it takes for the kept part to start at a
      multiple of `period` generated tokens (a latent frame, h*w tokens, for videos).
    cache: an allocated KV cache to use (default: one sized to the request). Its rows are the
      prompt rows (times the CFG variants); the prompt is appended after what it already holds.
    """
    prompts = _as_list(prompt)
    groups = cfg_groups(prompts, cfg)
    weights = [w for w, _ in groups]
    rows = [p for _, variant in groups for p in variant]
    batch = len(prompts)
    device = next(model.parameters()).device
    gen_coords = [torch.as_tensor(p.gen_coords, dtype=torch.long) for p in prompts]
    n_gen = {len(c) for c in gen_coords}
    if len(n_gen) != 1:
        raise ValueError(f"all prompts of a batch must generate the same number of tokens, got {n_gen}")
    n = n_gen.pop() if max_new_tokens is None else max_new_tokens
    if n > len(gen_coords[0]):
        raise ValueError(f"max_new_tokens={n} but the prompt has only {len(gen_coords[0])} gen_coords")
    gen = torch.stack(gen_coords).to(device).repeat(len(groups), 1, 1)  # (R,N,3)

    ids, coords, doc_ids = (t.to(device) for t in pad_prompts(rows))  # (R,P), (R,P,3), (R,P)
    prompt_len = ids.shape[1]
    if window is None:
        check_fits(model, prompt_len, n)
    else:
        if keep is None or not 0 < keep <= window - prompt_len - period:
            raise ValueError(f"a sliding window needs 0 < keep <= window - prompt - period, got keep={keep}, "
                             f"window={window}, prompt={prompt_len}, period={period}")
        if window > context_length(model):
            raise ContextError(f"a sliding window of {window} tokens must fit the model's context of "
                               f"{context_length(model)}")
    if n == 0:
        return
    row_doc = torch.zeros(len(rows), dtype=torch.long, device=device)

    def pick(logits: Tensor) -> Tensor:  # (R,V) -> (B,) ids
        guided = _combine(_restrict(logits, legal), weights, batch)
        token = sample_logits(guided, temperature=temperature, top_k=top_k, top_p=top_p,
                              generator=generator)
        return token + (legal[0] if legal is not None else 0)

    if not use_cache:
        for i in range(n):
            token = pick(model(ids, coords, doc_ids=doc_ids, last_only=True)[:, -1])
            yield token
            ids = torch.cat([ids, token.repeat(len(groups))[:, None]], 1)
            coords = torch.cat([coords, gen[:, i : i + 1]], 1)
            doc_ids = torch.cat([doc_ids, row_doc[:, None]], 1)
        return

    if cache is None:
        cache = allocate_cache(model, len(rows), min(window or prompt_len + n, prompt_len + n))
    token = pick(prefill(model, ids, coords, cache, doc_ids))
    sink = cache.length  # the prompt (after whatever the cache held before it)
    yield token
    for i in range(1, n):
        if window is not None and cache.length >= window:
            cache.keep_last(keep + (i - 1) % period, sink)  # i - 1 generated tokens were cached
        logits = decode_one_token(model, token.repeat(len(groups)), gen[:, i - 1], cache, row_doc)
        token = pick(logits)
        yield token


def generate(model, prompt, **options) -> Tensor:
    """All new ids at once, (B, N): `stream` collected (the same arguments)."""
    tokens = list(stream(model, prompt, **options))
    if not tokens:
        return torch.zeros(len(_as_list(prompt)), 0, dtype=torch.long)
    return torch.stack(tokens, 1)
