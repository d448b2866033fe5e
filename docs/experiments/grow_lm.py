"""Grow an exported LM deeper without changing what it computes (block expansion, as LLaMA Pro):
after every block of the source, a copy of that block whose two output projections (attention's
`wo`, the MLP's `w2`) are zero, so each new block adds nothing to the residual stream until
training moves it. The grown LM's logits equal the source's at step 0; training then has twice
the layers to spend, starting from everything the source learnt.

    python docs/experiments/grow_lm.py --lm shapes-demo --out runs/lm-12 [--times 2]

OUT is an LM export (config.json, model.safetensors in float32, vocab.json) for `init_from`;
train it with the source's LM config and `model.n_layers` set to the grown depth. Checks the
grown logits against the source's on a random row before it writes.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def grow(state: dict[str, torch.Tensor], times: int) -> dict[str, torch.Tensor]:
    """Block i of the source becomes block i * times; blocks i * times + 1 .. are its copies with
    zero output projections."""
    out = {k: v.float() for k, v in state.items() if not k.startswith("layers.")}
    for k, v in state.items():
        m = re.match(r"layers\.(\d+)\.(.+)", k)
        if m is None:
            continue
        i, name = int(m.group(1)), m.group(2)
        for j in range(times):
            zero = j > 0 and name in ("attn.wo.weight", "mlp.w2.weight")
            out[f"layers.{i * times + j}.{name}"] = torch.zeros_like(v.float()) if zero else v.float().clone()
    return out  # main() loads it strictly into the grown model and checks its logits


def main() -> None:
    from vidlm.lm.config import LMConfig
    from vidlm.lm.model import VideoLM

    from vidlm.config import resolve_weights

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lm", required=True, help="an LM export, a model folder holding lm/, or shipped weights by name")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--times", type=int, default=2, help="the grown depth over the source's")
    args = p.parse_args()

    src = resolve_weights(args.lm)
    src = src / "lm" if (src / "lm").is_dir() else src
    cfg = json.loads((src / "config.json").read_text())
    state = load_file(src / "model.safetensors")
    grown = grow(state, args.times)
    new_cfg = {**cfg, "n_layers": cfg["n_layers"] * args.times}

    small, big = VideoLM.from_pretrained(src).float().eval(), VideoLM(LMConfig(**new_cfg)).eval()
    big.load_state_dict(grown)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg["vocab_size"], (1, 256), generator=g)
    coords = torch.randint(0, 8, (1, 256, 3), generator=g)
    with torch.no_grad():
        diff = (small(ids, coords) - big(ids, coords)).abs().max().item()
    if diff > 1e-4:
        raise SystemExit(f"the grown LM's logits differ from the source's by {diff:.2e}")

    args.out.mkdir(parents=True, exist_ok=True)
    save_file(grown, args.out / "model.safetensors")
    (args.out / "config.json").write_text(json.dumps(new_cfg, indent=1) + "\n")
    shutil.copy(src / "vocab.json", args.out / "vocab.json")
    print(f"{src}: {cfg['n_layers']} -> {new_cfg['n_layers']} layers, "
          f"{sum(v.numel() for v in grown.values()) / 1e6:.1f} M parameters, logits equal to {diff:.1e}; wrote {args.out}")


if __name__ == "__main__":
    main()
