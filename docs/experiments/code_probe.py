"""Code probe: do a tokenizer's codes carry the object's shape? A small MLP reads the codes
(embedded) in the 4x4 latent window around the object's centre in latent frame 0 of 3000 frames
of the shapes world (seed 5; 80 % to train, 20 % to test) and predicts the shape; the same MLP
also reads the encoder's output before the quantizer. Chance is 1/3.

    python docs/experiments/code_probe.py [TOKENIZER_DIR]
"""
import sys

import torch
import torch.nn.functional as F
from torch import nn
from vidlm.data.synthetic import SHAPES, clip_seed, render_clip
from vidlm.tokenizer.model import VideoTokenizer

torch.set_num_threads(1)
torch.manual_seed(0)
tok = VideoTokenizer.from_pretrained(sys.argv[1] if len(sys.argv) > 1 else "vidlm/weights/shapes-demo/tokenizer").eval()
codes, latents, shapes = [], [], []
with torch.no_grad():
    for i in range(3000):
        frames, _, world = render_clip(clip_seed(5, i), frames=2)
        x = torch.from_numpy(frames[:1]).permute(3, 0, 1, 2).float()[None] / 127.5 - 1  # (1,3,1,H,W)
        z = tok.encoder(x)
        ids = tok.quantizer(z)[1][0, 0]  # (h, w)
        obj = world["objects"][0]
        cx, cy = obj["centres"][0]
        x0, y0 = (min(max(int(c // tok.cfg.spatial_factor) - 1, 0), ids.shape[0] - 4) for c in (cx, cy))
        codes.append(ids[y0 : y0 + 4, x0 : x0 + 4].flatten())
        latents.append(z[0, :, 0, y0 : y0 + 4, x0 : x0 + 4].flatten())
        shapes.append(SHAPES.index(obj["shape"]))
labels = torch.tensor(shapes)


def probe(inputs: torch.Tensor, embed: bool) -> float:
    n = int(0.8 * len(labels))
    net = nn.Sequential(*([nn.Embedding(tok.cfg.vocab_size, 16), nn.Flatten()] if embed else []),
                        nn.Linear(inputs.shape[1] * (16 if embed else 1), 256), nn.GELU(), nn.Linear(256, 3))
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=0.01)
    for _ in range(300):
        for b in torch.randperm(n).split(256):
            loss = F.cross_entropy(net(inputs[b]), labels[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float((net(inputs[n:]).argmax(-1) == labels[n:]).float().mean())


print(f"shape from the codes: {probe(torch.stack(codes), True):.2f}")
print(f"shape from the encoder output before the quantizer: {probe(torch.stack(latents), False):.2f}")
