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


def _where_next(model, next_coords: Tensor | None) -> dict:
    """The next_coords argument for models whose queries turn with them (LMConfig.next_query)."""
    return {"next_coords": next_coords} if getattr(getattr(model, "cfg", None), "next_query", False) else {}


def prefill(model, ids: Tensor, coords: Tensor, cache, doc_ids: Tensor | None = None,
            next_coords: Tensor | None = None) -> Tensor:
    """Run the prompt ids (B,L) at coords (B,L,3) into the cache; logits of the last position (B,V).
    next_coords (B,L,3): where each position predicts (the first position to generate, last)."""
    return model(ids, coords, cache=cache, doc_ids=doc_ids, last_only=True, **_where_next(model, next_coords))[:, -1]


def decode(model, ids: Tensor, coords: Tensor, cache, pos: Tensor, next_coords: Tensor | None = None) -> Tensor:
    """Append ids (B,n) at coords (B,n,3) (predicting at next_coords (B,n,3)), in document 0, at
    cache positions `pos` ((n,) long tensor from cache.length); their logits (B,n,V). Models with
    a static step (`VideoLM.step`, maybe compiled) take it: no host sync; others a cached forward."""
    where = _where_next(model, next_coords)
    if not hasattr(model, "step"):
        return model(ids, coords, cache=cache, **where)
    logits = model.step(ids, coords, pos, cache, **where)
    cache.length += ids.shape[1]
    return logits


def _after(gen: Tensor, a: int, b: int) -> Tensor:
    """The coordinates each of generated positions a..b-1 predicts at: gen (R,N,3)[a+1 .. b],
    the last position's own past the end."""
    out = gen[:, a + 1 : b + 1]
    return out if out.shape[1] == b - a else torch.cat([out, gen[:, -1:].expand(-1, b - a - out.shape[1], -1)], 1)


def sample_logits(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """One id per row from logits (B,V): temperature 0 is argmax; top-k, then top-p (nucleus).
    The draw is Gumbel-max in its exponential form, argmax(p / noise) with noise ~ Exp(1) shaped
    like logits (default: drawn from `generator`): the same noise picks the same id from the same
    distribution, which is what lets speculative decoding reproduce plain sampling (`Noise`)."""
    if temperature < 0 or (top_p is not None and not 0 < top_p <= 1) or (top_k is not None and top_k < 1):
        raise ValueError(f"need temperature >= 0, top_k >= 1, 0 < top_p <= 1; got "
                         f"{temperature}, {top_k}, {top_p}")
    if temperature == 0:
        return logits.argmax(-1)
    probs = filtered_probs(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    if noise is None:
        noise = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return gumbel_max(probs, noise)


def gumbel_max(probs: Tensor, noise: Tensor) -> Tensor:
    """The sampling rule everywhere: argmax(p / noise), noise ~ Exp(1) (Gumbel-max in its
    exponential form), so the same noise picks the same id from the same distribution."""
    return (probs / noise).argmax(-1)


def filtered_probs(logits: Tensor, *, temperature: float, top_k: int | None = None,
                   top_p: float | None = None) -> Tensor:
    """The distribution sample_logits draws from (temperature > 0): logits (..., V) -> probs."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix with mass >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits.softmax(-1)


class Noise:
    """The sampling noise of every position to generate: Exp(1) of shape (batch, vocab) per
    position, drawn from `generator` in fixed blocks of positions, in order, so position j gets
    the same noise however the positions are visited (plain decoding one at a time, speculative
    passes several at once). Blocks wholly before the positions asked for are dropped: positions
    are visited in order."""

    def __init__(self, generator: torch.Generator | None, shape: tuple[int, int], device, block: int = 64):
        self.generator, self.shape, self.device, self.block = generator, shape, device, block
        self.blocks: dict[int, Tensor] = {}

    def __getitem__(self, where: slice) -> Tensor:
        """Noise of positions where.start .. where.stop - 1: (n, batch, vocab)."""
        first, last = where.start // self.block, (where.stop - 1) // self.block
        for b in range(max(self.blocks, default=-1) + 1, last + 1):
            self.blocks[b] = torch.empty(self.block, *self.shape, device=self.device).exponential_(
                1.0, generator=self.generator)
        for b in [b for b in self.blocks if b < first]:
            del self.blocks[b]
        blocks = [self.blocks[b] for b in range(first, last + 1)]
        rows = blocks[0] if len(blocks) == 1 else torch.cat(blocks)  # one block: a view, no copy
        return rows[where.start - first * self.block : where.stop - first * self.block]


def _restrict(logits: Tensor, legal: tuple[int, int] | None) -> Tensor:
    return logits if legal is None else logits[..., legal[0] : legal[1]]


def _combine(logits: Tensor, weights: list[float], batch: int) -> Tensor:
    """(G*B, ..., V) logits of G prompt variants -> (B, ..., V) guided logits, the weighted sum."""
    if len(weights) == 1 and weights[0] == 1.0:
        return logits
    rows = logits.view(len(weights), batch, *logits.shape[1:])
    return sum(w * rows[g] for g, w in enumerate(weights))


DRAFT_KINDS = ("previous frame", "left", "jacobi")


def draft_sources(prompt, legal: tuple[int, int] | None) -> tuple[Tensor, Tensor, Tensor]:
    """Where speculative decoding takes the draft of each position to generate, from coordinates
    alone: the code at the same (y, x) one latent frame away (t-1, else t+1: backgrounds and
    slow objects repeat), else the nearest code to its left in the same row (codes that sit where
    they draw, as two-level codes do, are more than one x apart). Sources are the prompt's known
    codes (ids inside `legal`) and positions generated earlier. Returns source (N,): an index into
    the timeline [known codes (K), generated (N)], -1 for none; kind (N,): an index into
    DRAFT_KINDS; known (K,): the known codes' ids."""
    ids, coords = torch.as_tensor(prompt.ids), torch.as_tensor(prompt.coords)
    is_code = torch.ones_like(ids, dtype=torch.bool) if legal is None else (ids >= legal[0]) & (ids < legal[1])
    known = ids[is_code]
    where, rows = {}, {}  # (t, y, x) -> timeline index; (t, y) -> [(x, timeline index)]

    def add(t, y, x, i):
        where[(t, y, x)] = i
        rows.setdefault((t, y), []).append((x, i))

    for i, c in enumerate(coords[is_code].tolist()):
        add(*c, i)
    gen = torch.as_tensor(prompt.gen_coords).tolist()
    source, kind = torch.full((len(gen),), -1, dtype=torch.long), torch.zeros(len(gen), dtype=torch.long)
    for j, (t, y, x) in enumerate(gen):
        near = where.get((t - 1, y, x), where.get((t + 1, y, x)))
        if near is not None:
            source[j] = near
        else:
            left = max((c for c in rows.get((t, y), ()) if c[0] < x), default=None)
            if left is not None:
                source[j], kind[j] = left[1], 1
        add(t, y, x, len(known) + j)
    return source, kind, known


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
    draft: int = 0,
    jacobi: str = "first",
    stats: dict | None = None,
    prior=None,
    prior_weight: float | None = None,
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
    draft: speculative decoding with up to `draft` proposed tokens per forward pass (one prompt
      only; 0 = off). Drafts come from coordinates (`draft_sources`) and are verified in one
      pass. Every position samples with its own noise (`Noise`: Gumbel-max, argmax(p / noise)),
      drawn in the same order whatever the path, so a draft is kept exactly when it is the token
      plain decoding samples there: the tokens are plain decoding's, at every temperature, for
      the same generator seed (and their distribution plain sampling's). Rejected positions
      leave the KV cache.
    jacobi: where the model's own guesses serve as drafts (Jacobi iteration: the token each
      position past a rejection sampled, with its own noise, in the pass that rejected):
      "first" (default) before the coordinates' draft, "fallback" where coordinates give no
      draft, "off" never. "first" is the faster order at temperature 0 and 1 alike in `vidlm
      bench lm --model shapes-demo` (its draft_order; see the README's results).
    stats: a dict to count into: forwards, and per draft kind proposed / accepted.
    prior / prior_weight: a frame prior (`vidlm.lm.prior.FramePrior`) whose log-probs, times
      prior_weight (default: the prior's own `weight`; 0 turns it off), are added to the guided
      logits of every code it predicts (a product of experts), before temperature and filtering:
      the distribution sampled is the product's, on every path (speculative drafts included).
      It needs prompts that say their frames (`Prompt.frames`) and `legal` = the code range.
    Prompts with a `place` hook (codes placed by earlier ones, vidlm.lm.tasks) get their true
    coordinates as they are sampled; their draft blocks stop at the positions after which the
    hook may move coordinates (`Prompt.place_every`), so every pass has the ones it needs.
    """
    if jacobi not in ("first", "fallback", "off"):
        raise ValueError(f"jacobi must be 'first', 'fallback' or 'off', got {jacobi!r}")
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
    hooks = [getattr(p, "place", None) for p in prompts]
    priors = prior_hooks(prior, prior_weight, prompts, legal)
    sampled = torch.zeros(batch, n, dtype=torch.long) if any(hooks) or priors else None  # what the hooks read

    def placed(i: int, token: Tensor) -> None:  # after position i: the coordinates it decides
        if sampled is None:
            return
        sampled[:, i] = token.cpu()
        for b, hook in enumerate(hooks):
            new = hook(i, sampled[b, : i + 1]) if hook is not None else None
            if new is not None:
                m = min(len(new), n - i - 1)
                gen[b::batch, i + 1 : i + 1 + m] = new[:m].to(device)

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
    noise = None  # Noise of the guided logits' shape, made at the first position

    def pick(logits: Tensor, i: int) -> Tensor:  # (R,V) -> (B,) ids at generated position i
        nonlocal noise
        guided = _combine(_restrict(logits, legal), weights, batch)
        for b, hook in enumerate(priors):
            bias = hook(i, sampled[b])
            if bias is not None:
                guided[b] += bias.to(guided.device)
        if noise is None and temperature > 0:
            noise = Noise(generator, tuple(guided.shape), device)
        token = sample_logits(guided, temperature=temperature, top_k=top_k, top_p=top_p,
                              noise=None if noise is None else noise[i : i + 1][0])
        return token + (legal[0] if legal is not None else 0)

    if not use_cache:
        for i in range(n):
            where = _where_next(model, torch.cat([coords[:, 1:], gen[:, i : i + 1]], 1))
            token = pick(model(ids, coords, doc_ids=doc_ids, last_only=True, **where)[:, -1], i)
            placed(i, token)
            yield token
            ids = torch.cat([ids, token.repeat(len(groups))[:, None]], 1)
            coords = torch.cat([coords, gen[:, i : i + 1]], 1)
            doc_ids = torch.cat([doc_ids, row_doc[:, None]], 1)
        return

    if cache is None:
        cache = allocate_cache(model, len(rows), min(window or prompt_len + n, prompt_len + n))
    token = pick(prefill(model, ids, coords, cache, doc_ids, torch.cat([coords[:, 1:], gen[:, :1]], 1)), 0)
    sink = cache.length  # the prompt (after whatever the cache held before it)
    placed(0, token)
    yield token
    if draft > 0 and batch == 1:
        options = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
        yield from _speculate(model, prompts[0], token, gen, cache, n, draft=draft, legal=legal, weights=weights,
                              options=options, noise=noise, window=window, keep=keep, period=period,
                              sink=sink, stats=stats, jacobi=jacobi, placed=placed, prior=priors[0] if priors else None)
        return
    pos = torch.full((1,), cache.length, dtype=torch.long, device=device)  # advanced on the device
    for i in range(1, n):
        if window is not None and cache.length >= window:
            cache.keep_last(keep + (i - 1) % period, sink)  # i - 1 generated tokens were cached
            pos.fill_(cache.length)
        logits = decode(model, token.repeat(len(groups))[:, None], gen[:, i - 1 : i], cache, pos,
                        gen[:, i : i + 1])[:, -1]
        pos += 1
        token = pick(logits, i)
        placed(i, token)
        yield token


def _speculate(model, prompt, token, gen, cache, n, *, draft, legal, weights, options, noise, window, keep,
               period, sink, stats, jacobi, placed, prior) -> Iterator[Tensor]:
    """stream's decode loop with drafts (one prompt; its CFG variants are the cache's rows):
    each forward pass appends the last sampled token and up to `draft` drafts, keeps the
    longest accepted run plus one token sampled at the first rejection (or after the run)."""
    rows, lo = len(weights), legal[0] if legal is not None else 0
    every = prompt.place_every if getattr(prompt, "place", None) is not None else n  # see stream's doc
    source, kind, known = draft_sources(prompt, legal)
    guess = [-1] * n  # the model's last guess at each position (Jacobi drafts)
    timeline = torch.cat([known, torch.full((n,), -1, dtype=torch.long)]).tolist()
    base, i = len(known), 1  # i tokens emitted; the last one (token) is not cached yet
    timeline[base] = int(token)
    counts = stats if stats is not None else {}
    for name in ("proposed", "accepted"):
        counts.setdefault(name, dict.fromkeys(DRAFT_KINDS, 0))
    counts.setdefault("forwards", 0)
    # Drafts per pass: +2 after a pass that kept them all, -1 after one that did not; none while
    # a draft is kept less than one time in five where the drafts before it were (a pass with
    # drafts costs more than a plain step), but a probe of one draft every 8th pass to notice
    # when the model turns sure again.
    length, rate, passes = draft, 1.0, 0
    # When sampling, a coordinate draft is not its source's token but what the source's
    # distribution samples with this position's noise: where the distribution repeats (a
    # background), so does the sample, however unsure the model is. dist holds the distribution
    # of every generated position (after its pass), stored marks the filled ones.
    sampling, dist, stored = options["temperature"] > 0, None, torch.zeros(n, dtype=torch.bool)
    while i < n:
        passes += 1
        if rate < 0.2:
            length = 1 if passes % 8 == 0 else 0
        if window is not None and cache.length >= window:  # slide exactly where plain decoding does
            cache.keep_last(keep + (i - 1) % period, sink)
        room = (window if window is not None else cache.max_len) - cache.length - 1
        # the pass predicts positions i .. i+span: none past the next one whose coordinates a place
        # hook may move (the row end r >= i: r - i drafts, whose last fed token's next place is r's)
        drafts, names, span = [], [], max(0, min(length, n - 1 - i, room, every - 1 - i % every))
        coupled = [-1] * span
        if dist is not None and span:
            src = (source[i : i + span] - base).clamp(min=0)
            ok = ((source[i : i + span] >= base) & stored[src]).to(dist.device)
            picks = gumbel_max(dist[src.to(dist.device)], noise[i : i + span][:, 0]) + lo
            coupled = torch.where(ok, picks, -1).tolist()
        for j in range(i, i + span):
            value = coupled[j - i] if coupled[j - i] >= 0 else timeline[source[j]] if source[j] >= 0 else -1
            coord = (value, DRAFT_KINDS[kind[j]])
            offers = {"fallback": (coord, (guess[j], "jacobi")), "first": ((guess[j], "jacobi"), coord),
                      "off": (coord,)}[jacobi]
            value, name = next(((v, k) for v, k in offers if v >= 0), (-1, ""))
            if value < 0:
                break
            drafts.append(value)
            names.append(name)
            timeline[base + j] = value  # tentative: a later draft may copy it
        block = torch.tensor([int(token), *drafts], device=gen.device)
        start, width, ids = cache.length, len(block), block
        if getattr(model, "pads_passes", False) and start + draft + 1 <= cache.max_len and i + draft <= n:
            # one pass length for every pass (one CUDA graph): the last token again as padding,
            # whose logits are dropped and whose cache slots the truncate below forgets
            width = draft + 1
            ids = torch.cat([block, block[-1:].expand(width - len(block))])
        pos = torch.arange(start, start + width, device=gen.device)
        logits = decode(model, ids.repeat(rows, 1), gen[:, i - 1 : i - 1 + width], cache, pos,
                        _after(gen, i - 1, i - 1 + width))[:, : len(block)]
        guided = _combine(_restrict(logits, legal), weights, 1)[0]  # (len(drafts)+1, V)
        seen = timeline[base:] if prior is not None else None  # sampled, then this pass's drafts
        for j in range(len(block) if prior is not None else 0):  # the prior given the drafts before j
            bias = prior(i + j, seen)
            if bias is not None:
                guided[j] += bias.to(guided.device)
        counts["forwards"] += 1
        # Each row's token as plain decoding would sample it there (same noise), given the drafts
        # before it: a draft is kept if it is that token, so the tokens are plain decoding's.
        if sampling:
            probs = filtered_probs(guided, **options)
            picked = gumbel_max(probs, noise[i : i + len(block)][:, 0])
        else:
            picked = guided.argmax(-1)
        picked, out = picked.tolist(), []
        for d, name, p in zip(drafts, names, picked):
            counts["proposed"][name] += 1
            if p != d - lo:
                break
            counts["accepted"][name] += 1
            out.append(d)
        out.append(picked[len(out)] + lo)
        if sampling:
            dist = probs.new_zeros(n, probs.shape[-1]) if dist is None else dist
            dist[i : i + len(out)], stored[i : i + len(out)] = probs[: len(out)], True
        # rows past the first rejection sampled the positions after it from a prefix with one
        # wrong token: the Jacobi guesses of the next pass
        for j, value in enumerate(picked[len(out) :], start=i + len(out)):
            guess[j] = value + lo
        if drafts:
            kept = len(out) - 1
            rate = 0.9 * rate + 0.1 * kept / (kept + (kept < len(drafts)))
        length = min(draft, length + 2) if len(out) > len(drafts) else max(1, length - 1)
        cache.truncate(start + len(out))  # the last sampled token, and the kept drafts
        for j, value in enumerate(out):
            timeline[base + i + j] = value
        for j in range(i + len(out), i + len(drafts) + 1):
            if j < n:
                timeline[base + j] = -1
        for j, value in enumerate(out):
            placed(i + j, torch.tensor([value]))
        i += len(out)
        token = torch.tensor([out[-1]], device=gen.device)
        for value in out:
            yield torch.tensor([value], device=gen.device)


def prior_hooks(prior, weight: float | None, prompts: list, legal: tuple[int, int] | None) -> list:
    """One `vidlm.lm.prior.PriorHook` per prompt, or [] where there is no prior (or weight 0)."""
    from vidlm.lm.prior import PriorHook, effective_weight

    weight = effective_weight(prior, weight)
    if not weight:
        return []
    if legal is None or legal[1] - legal[0] != prior.cfg.n_codes:
        raise ValueError(f"the frame prior predicts {prior.cfg.n_codes} codes: pass legal = the vocab's code range "
                         f"of as many ids, got {legal}")
    if any(getattr(p, "frames", None) is None for p in prompts):
        raise ValueError("the frame prior needs prompts that say their frames (`render_prompt` makes them)")
    return [PriorHook(prior, weight, p.frames, legal[0]) for p in prompts]


def generate(model, prompt, **options) -> Tensor:
    """All new ids at once, (B, N): `stream` collected (the same arguments)."""
    tokens = list(stream(model, prompt, **options))
    if not tokens:
        return torch.zeros(len(_as_list(prompt)), 0, dtype=torch.long)
    return torch.stack(tokens, 1)
