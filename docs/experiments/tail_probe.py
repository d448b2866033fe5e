"""Tail probe: does an LM read the ending it is given? The extend-backward loss (nats a code, with
the caption) of the held-out clips of a token folder (its last 16, as `vidlm lm train` holds them
out), per generated latent frame, with the clip's own last J latent frames as the known ending,
with another held-out clip's, and with the ending dropped (the guidance twin). The endings are
the token folder's tails: every length where its tokenizer codes every frame alone
(`tail_slices`), else the stored ones (`vidlm data tokenize --tails`).

    python docs/experiments/tail_probe.py --model RUN/model/lm --tokens RUN/data/tokens [--tails 2 5]
"""
import argparse

import torch
import torch.nn.functional as F
from vidlm.lm.model import VideoLM
from vidlm.lm.tasks import open_frames, render_train
from vidlm.lm.tokendata import TokenStore
from vidlm.lm.vocab import Vocab

from vidlm.pretokenize import load_places

p = argparse.ArgumentParser()
p.add_argument("--model", required=True, help="an exported LM folder")
p.add_argument("--tokens", required=True, help="the token folder it was trained on")
p.add_argument("--tails", type=int, nargs="+", default=[2, 5], help="ending lengths J in latent frames")
p.add_argument("--clips", type=int, default=16)
p.add_argument("--threads", type=int, default=1)
a = p.parse_args()
torch.set_num_threads(a.threads)
model, vocab = VideoLM.from_pretrained(a.model).eval(), Vocab.from_pretrained(a.tokens)
store, places = TokenStore.open(a.tokens), load_places(a.tokens)
held = [store[i] for i in range(len(store) - a.clips, len(store))]
with torch.no_grad():
    for j in a.tails:
        n = held[0].codes.shape[0] - j
        print(f"ending of {j} latent frames; generated frames 0..{n - 1}, in time order")
        if any(j not in clip.tails for clip in held):
            raise SystemExit(f"{a.tokens} holds no tails of {j} latent frames: tokenize with --tails {j}")
        order = open_frames("extend-backward", tuple(held[0].codes.shape), [(n, held[0].tails[j])])  # generation order
        for name in ("own", "another clip's", "dropped"):
            total = torch.zeros(n)
            for k, clip in enumerate(held):
                tail = (held[(k + 1) % len(held)] if name == "another clip's" else clip).tails[j]
                seq = render_train("extend-backward", vocab, codes=clip.codes, text=clip.text, known=[(n, tail)],
                                   places=places, drop_known=name == "dropped")
                logits = model(seq.ids[None, :-1], seq.coords[None, :-1])[0].float()
                m = seq.loss_mask[1:]
                total[order] += F.cross_entropy(logits[m], seq.ids[1:][m], reduction="none").reshape(n, -1).mean(1)
            print(f"  {name:<15}", " ".join(f"{v:.2f}" for v in (total / len(held)).tolist()))
