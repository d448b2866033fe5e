"""Conv prior: does conv_step.py's net, added to the LM's logits, put the object where it goes?
On motion_probe.py's held-out clips (true frames 0, 1 given, no bounce before frame 2), the LM
generates frame 2 (extend-forward, no caption), with beta * the net's log-probabilities added to
the logits of each coarse code (a product of experts; the fine codes are the LM's alone); the
codes are decoded and the object's centre (`vidlm.evaluate.observe`, eval world's detector) is
compared with the truth. Also: the true codes decoded (the measuring floor), and copying
frame 1 (the object standing still). `--eval N` then runs `vidlm eval world`'s metrics on N
clips for each beta; `--net-back` (conv_step.py --reverse) adds the prior to frames generated
back in time too.

    python docs/experiments/conv_prior.py --lm RUN/model/lm --tokens RUN/data/tokens --net conv.pt
    python docs/experiments/conv_prior.py ... --net-back back.pt --betas 0 2 --eval 16
"""
import argparse
from pathlib import Path

import numpy as np
import torch
from conv_step import ConvStep
from motion_probe import encode_frames, load, motion_clips
from torch import nn
from vidlm.lm.prior import FramePrior
from vidlm.lm.sample import generate
from vidlm.lm.tasks import render_prompt

from vidlm.evaluate import observe

p = argparse.ArgumentParser()
p.add_argument("--lm", required=True)
p.add_argument("--tokens", required=True)
p.add_argument("--net", required=True, help="conv_step.py --save, or an LM folder with a frame prior")
p.add_argument("--net-back", help="conv_step.py --reverse --save: the prior of frames generated back in time")
p.add_argument("--betas", type=float, nargs="+", default=[0, 0.5, 1, 2])
p.add_argument("--temperatures", type=float, nargs="+", default=[0, 1])
p.add_argument("--samples", type=int, default=4, help="draws per clip at temperature > 0")
p.add_argument("--clips", type=int, default=24)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--eval", type=int, default=0, help="then `vidlm eval world` on this many clips for each beta "
               "(--model's tokenizer and caption model, cfg-text 3, temperature 1, plain decoding)")
p.add_argument("--model", default="shapes-demo", help="the model folder --eval loads, its LM replaced")
a = p.parse_args()
torch.set_num_threads(a.threads)
lm, vocab, _, places, tok = load(a.lm, a.tokens)


def load_net(path: str) -> ConvStep:
    if Path(path).is_dir():  # an LM folder with its frame prior (`vidlm lm prior`)
        return FramePrior.from_pretrained(path)
    saved = torch.load(path)
    net = ConvStep(saved["n_codes"], int(saved["args"]["width"]), int(saved["args"]["layers"])).eval()
    net.load_state_dict(saved["state"])
    return net


net, net_back = load_net(a.net), load_net(a.net_back) if a.net_back else None
lo, hi = vocab.code_range
grid = (64 // tok.cfg.spatial_factor, 64 // tok.cfg.spatial_factor)  # the coarse grid of 64x64 clips


class WithPrior(nn.Module):
    """The LM with beta * the net's log-probs added where it predicts a coarse code of a frame t
    whose frames t-2 and t-1 are whole in the sequence so far (or with --net-back, t+2 and t+1:
    generated back in time), forward first (coarse codes sit at quarter cells
    (4y+2, 4x+2), fine ones at odd ones). It reads the codes of the batch's first row (the full
    prompt under guidance; every row samples the same codes) as they go by, and adds the same
    prior to every row. Plain decoding only (a speculative pass would show it rejected drafts)."""

    def __init__(self, beta: float, grid: tuple[int, int]):
        super().__init__()
        self.lm, self.cfg, self.beta, self.grid = lm, lm.cfg, beta, grid
        self.frames: dict[int, torch.Tensor] = {}
        self.priors: dict[int, torch.Tensor] = {}

    def see(self, ids: torch.Tensor, coords: torch.Tensor) -> None:
        t, y, x = coords.unbind(-1)
        keep = (ids >= lo) & (ids < hi) & (t >= 0) & (y % 4 == 2) & (x % 4 == 2)
        for tt, yy, xx, i in zip(*(v[keep].tolist() for v in (t, y, x, ids))):
            self.frames.setdefault(tt, torch.full(self.grid, -1))[yy // 4, xx // 4] = i - lo

    def prior(self, t: int) -> torch.Tensor | None:
        whole = lambda s: s in self.frames and bool((self.frames[s] >= 0).all())
        if t in self.priors:
            return self.priors[t]
        for step, far, near in ((net, t - 2, t - 1), (net_back, t + 2, t + 1)):
            if step is not None and whole(far) and whole(near):
                with torch.no_grad():
                    logits = step(self.frames[far][None], self.frames[near][None])[0]
                self.priors[t] = logits.log_softmax(0).permute(1, 2, 0)  # (h,w,n_codes)
                break
        return self.priors.get(t)

    def forward(self, ids, coords, *, cache=None, doc_ids=None, last_only=False, next_coords=None):
        if cache is None or cache.length == 0:  # a new prompt
            self.frames, self.priors = {}, {}
        self.see(ids[0], coords[0])
        logits = self.lm(ids, coords, cache=cache, doc_ids=doc_ids, last_only=last_only, next_coords=next_coords)
        t, y, x = next_coords[0, -logits.shape[1] :].unbind(-1)  # what each position predicts
        for j in ((y % 4 == 2) & (x % 4 == 2)).nonzero()[:, 0].tolist() if self.beta else ():
            prior = self.prior(int(t[j]))
            if prior is not None:
                cell = prior[min(int(y[j]) // 4, self.grid[0] - 1), min(int(x[j]) // 4, self.grid[1] - 1)]
                logits[:, j, lo : lo + len(cell)] += self.beta * cell
        return logits


def centre(codes: torch.Tensor, background: str) -> np.ndarray | None:
    """codes (h, w) of one frame -> the detected object's (x, y) centre, or None."""
    with torch.no_grad():
        seen = observe(tok.decode(codes[None, None])[0], background)[0]
    return None if seen is None else np.array(seen["centre"])


errors: dict[str, list] = {"truth decoded": [], "copy frame 1": []}
missed: dict[str, int] = {}
for video, background, _obj, (_, c1, c2) in motion_clips(a.clips):
    codes = encode_frames(tok, video[:3])  # (3,h,w)
    errors["truth decoded"].append(np.linalg.norm(centre(codes[2], background) - c2))
    errors["copy frame 1"].append(np.linalg.norm(c1 - c2))
    prompt = render_prompt("extend-forward", vocab, grid=(3, *codes.shape[1:]), known=[(0, codes[:2])], places=places)
    for beta in a.betas:
        # a frame prior of an LM folder goes through the sampler itself (any context it reads)
        model, opts = (lm, {"prior": net, "prior_weight": beta}) if isinstance(net, FramePrior) else (WithPrior(beta, grid), {})
        for temp in a.temperatures:
            name = f"beta {beta}, T {temp}"
            for s in range(1 if temp == 0 else a.samples):
                with torch.no_grad():
                    new = generate(model, prompt, legal=vocab.code_range, temperature=temp,
                                   generator=torch.Generator().manual_seed(s), **opts)
                c = centre(vocab.ids_to_codes(new[0]).view(codes.shape[1:]), background)
                if c is None:
                    missed[name] = missed.get(name, 0) + 1
                else:
                    errors.setdefault(name, []).append(np.linalg.norm(c - c2))
print(f"{a.clips} clips: centre error of frame 2 in pixels (mean / median), frames with no object")
for name, e in errors.items():
    print(f"{name:20s} {np.mean(e):5.2f} / {np.median(e):5.2f}   {missed.get(name, 0)}")

if a.eval:
    import json

    from vidlm.evaluate import evaluate, format_table
    from vidlm.pipeline import VideoGenerator

    base = VideoGenerator.from_pretrained(a.model)
    for beta in a.betas:
        gen = VideoGenerator(base.tokenizer, base.text_tokenizer, WithPrior(beta, grid), base.vocab)
        report = evaluate(gen, num=a.eval, sampling={"temperature": 1.0, "cfg_text": 3.0, "speculative": 0},
                          progress=False)
        print(f"beta {beta}:\n{format_table(report)}", flush=True)
        print(json.dumps({"beta": beta, **{k: v for k, v in report.items() if not isinstance(v, dict)}}), flush=True)
