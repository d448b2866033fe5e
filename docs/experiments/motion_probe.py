"""Motion probe: does an LM know where the object goes next, and how sharply? Two measures, t2v
without the caption (so the direction comes from the frames alone), on the coarse codes:

- direction: the NLL of frame K given true frames 0..K-1 when frame K is the true one (the motion
  goes on) and when it is frame K-2 (the motion reverses), on the last 64 clips of a token folder.
  An LM that reads no velocity finds both as far from frame K-1.
- sharpness: held-out single-object clips with no bounce and no bar in frames 0-2 (`render_clip`
  seeds from 2**32 + 1000), frame 2 rendered with the object moved d pixels along its motion
  from the truth and coded by the folder's tokenizer, frame by frame; the NLL of frame 2's codes
  (all of them) given true frames 0, 1, and how many coarse codes differ from the truth's.

    python docs/experiments/motion_probe.py --model RUN/model/lm --tokens RUN/data/tokens
"""
import argparse

import numpy as np
import torch
import torch.nn.functional as F
from vidlm.data.synthetic import BACKGROUNDS, COLOURS, coverage, render_clip
from vidlm.lm.model import VideoLM
from vidlm.lm.tasks import render_train
from vidlm.lm.tokendata import TokenStore
from vidlm.lm.vocab import Vocab
from vidlm.tokenizer.model import VideoTokenizer

from vidlm.pretokenize import load_places


def frame_nll(model: VideoLM, vocab: Vocab, places, codes: torch.Tensor) -> torch.Tensor:
    """codes (K+1,h,w) -> the t2v NLL (h,w) of the last frame's codes, without the caption."""
    seq = render_train("t2v", vocab, codes=codes, text=None, places=places, drop_text=True)
    logits = model(seq.ids[None, :-1], seq.coords[None, :-1])[0].float()
    m = seq.loss_mask[1:]
    return F.cross_entropy(logits[m], seq.ids[1:][m], reduction="none").view(codes.shape)[-1]


def direction(model, vocab, places, store, fine_rows: int, k: int) -> None:
    res = {"goes on": [], "reverses": []}
    for i in range(len(store) - 64, len(store)):
        c = store[i].codes
        on, back = c[: k + 1], torch.cat([c[:k], c[k - 2 : k - 1]])
        if torch.equal(on[k], back[k]) or torch.equal(c[k - 1], c[k]):
            continue  # no motion to read
        for name, x in (("goes on", on), ("reverses", back)):
            res[name].append(float(frame_nll(model, vocab, places, x)[: x.shape[1] - fine_rows].sum()))
    print(f"direction, {k} frames given: frame {k} goes on {np.mean(res['goes on']):.2f} nats, reverses "
          f"{np.mean(res['reverses']):.2f} (coarse codes, {len(res['goes on'])} clips)")


SHIFTS = (-4, -2, -1, -0.5, 0, 0.5, 1, 2, 4)


def motion_clips(clips: int):
    """Held-out single-object clips, no bar, bouncing, at least 1 px a frame and no bounce in
    frames 0-2 (`render_clip` seeds from 2**32 + 1001): (video, background, object, centres of
    frames 0-2) each."""
    seed, n = 2**32 + 1000, 0
    while n < clips:
        seed += 1
        video, _, world = render_clip(seed)
        o = world["objects"][0]
        if len(world["objects"]) != 1 or world["bar"] or o["motion"] != "bouncing":
            continue
        c0, c1, c2 = (np.array(c) for c in o["centres"][:3])
        if np.linalg.norm(c2 - c1) < 1 or np.linalg.norm(c2 - c0 - 2 * (c2 - c1)) > 0.1:
            continue  # too slow, or a bounce in frames 0-2
        n += 1
        yield video, world["background"], o, (c0, c1, c2)


def encode_frames(tok: VideoTokenizer, frames: np.ndarray) -> torch.Tensor:
    """frames (T,H,W,3) uint8 -> codes (T,h,w), each frame coded alone."""
    x = torch.tensor(np.asarray(frames), dtype=torch.float32).permute(3, 0, 1, 2)[None] / 127.5 - 1
    with torch.no_grad():
        return torch.cat([tok.encode(x[:, :, j : j + 1]) for j in range(x.shape[2])], 1)[0]


def sharpness_cases(tok: VideoTokenizer, clips: int, shifts=SHIFTS) -> list[torch.Tensor]:
    """Per clip of motion_clips, codes (2 + len(shifts), h, w): true frames 0, 1, then frame 2
    with the object moved d pixels along its motion for each d in shifts."""
    cases = []
    for video, background, o, (_, c1, c2) in motion_clips(clips):
        v = c2 - c1
        bg, colour = np.array(BACKGROUNDS[background], float), np.array(COLOURS[o["colour"]], float)
        moved = []
        for d in shifts:
            cov = coverage(o["shape"], o["size"], *(c2 + d * v / np.linalg.norm(v)), 64, 64)[..., None]
            moved.append(np.clip(np.round(bg * (1 - cov) + colour * cov), 0, 255))
        cases.append(encode_frames(tok, np.stack([video[0], video[1], *moved])))
    return cases


def sharpness(model, vocab, places, cases: list[torch.Tensor], fine_rows: int, shifts=SHIFTS) -> dict:
    """{"nll": mean NLL of frame 2 per shift, "coarse": of its coarse codes, "unlike": mean coarse
    codes unlike the truth's, "best": clips whose likeliest frame 2 is the truth}."""
    nll, coarse, unlike = {d: [] for d in shifts}, {d: [] for d in shifts}, {d: [] for d in shifts}
    best, zero = 0, 2 + list(shifts).index(0)
    for ids in cases:
        per = {}
        for j, d in enumerate(shifts):
            f = frame_nll(model, vocab, places, torch.stack([ids[0], ids[1], ids[2 + j]]))
            per[d] = float(f.sum())
            nll[d].append(per[d])
            coarse[d].append(float(f[: -fine_rows or None].sum()))
            unlike[d].append(float((ids[2 + j, : -fine_rows or None] != ids[zero, : -fine_rows or None]).sum()))
        best += min(per, key=per.get) == 0
    return {"nll": {d: float(np.mean(v)) for d, v in nll.items()}, "coarse": {d: float(np.mean(v)) for d, v in coarse.items()},
            "unlike": {d: float(np.mean(v)) for d, v in unlike.items()}, "best": best}


def print_sharpness(res: dict, clips: int) -> None:
    print("sharpness: frame 2 with the object moved d px along its motion, given true frames 0, 1")
    print("   d px  NLL (nats, all codes)  NLL (coarse codes)  coarse codes unlike the truth's")
    for d in res["nll"]:
        print(f"{d:7.1f}  {res['nll'][d]:21.2f}  {res['coarse'][d]:18.2f}  {res['unlike'][d]:30.2f}")
    print(f"the truth is the likeliest in {res['best']} of {clips} clips")


def load(model_dir: str, tokens: str):
    """The LM, its vocab, the token store, its code places and its tokenizer."""
    return (VideoLM.from_pretrained(model_dir).eval(), Vocab.from_pretrained(tokens), TokenStore.open(tokens),
            load_places(tokens), VideoTokenizer.from_pretrained(f"{tokens}/tokenizer").eval())


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="an exported LM folder")
    p.add_argument("--tokens", required=True, help="the token folder it was trained on (with its tokenizer)")
    p.add_argument("--clips", type=int, default=24, help="clips of the sharpness probe")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model, vocab, store, places, tok = load(a.model, a.tokens)
    with torch.no_grad():
        for k in (2, 4):
            direction(model, vocab, places, store, tok.cfg.refine_rows, k)
        print_sharpness(sharpness(model, vocab, places, sharpness_cases(tok, a.clips), tok.cfg.refine_rows), a.clips)
