"""The compute-scaling figure: one `vidlm demo` run's LM, evaluated at several points of its
training (its checkpoints at 1/16, 1/4 and all of its steps), with the run's final tokenizer.

    python docs/experiments/scaling.py --run runs/shapes-full --steps 750 3000 10324 \
        --num 16 --cfg-text 3 --out docs/scaling

For each step: `vidlm lm export --step` into RUN/exported/step-N/lm (tokenizer and text from
RUN/model), `vidlm eval world` on held-out clips (the same clips and sampling seeds at every
step), and the same prompts and inputs sampled for the picture. Writes OUT/scaling.json,
OUT/scaling.png (world metrics against LM training CPU-minutes) and OUT/samples.png (one row per
compute level: t2v of one prompt, then extend-forward of one held-out head, frames over time).

A checkpoint in the middle of a cosine schedule still has a high learning rate: each point is
what that much training of this run gave, not the best a shorter run could give.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np


def lm_minutes(run: Path) -> dict[int, float]:
    """Wall-clock minutes of LM training at each logged step (RUN/runs/lm/metrics.jsonl)."""
    rows = [json.loads(line) for line in (run / "runs" / "lm" / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: (r["time"] - rows[0]["time"]) / 60 for r in rows}


def model_at(run: Path, step: int) -> Path:
    from vidlm.lm.train import export

    folder = run / "exported" / f"step-{step}"
    if not (folder / "lm" / "model.safetensors").is_file():
        for part in ("tokenizer", "text"):
            shutil.copytree(run / "model" / part, folder / part, dirs_exist_ok=True)
        export(run / "runs" / "lm", folder / "lm", step=step)
    return folder


def samples_row(gen, prompt: str, head, frames: int, columns: int = 9, **opts) -> np.ndarray:
    from vidlm.data.encode import to_uint8

    t2v = to_uint8(gen.t2v(prompt, frames=frames, seed=0, **opts).video)
    ext = to_uint8(gen.extend(head, direction="forward", frames=frames, text=prompt, seed=0, **opts).video)
    pick = np.linspace(0, frames - 1, columns).round().astype(int)
    gap = np.full((t2v.shape[1], 6, 3), 255, np.uint8)
    return np.concatenate([*t2v[pick], gap, *ext[pick]], 1)


def plot(results: list[dict], out: Path) -> None:
    """World metrics against LM training minutes, from the results scaling.json holds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["lm_minutes"] for r in results]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, label in (("color_accuracy", "t2v colour"), ("shape_accuracy", "t2v shape"),
                       ("t2i_accuracy", "t2i object"), ("i2v_identity", "i2v identity"),
                       ("identity", "extend/connect identity"), ("detection_rate", "frames with an object")):
        ax1.plot(x, [r[key] for r in results], "o-", label=label)
    ax1.set(xscale="log", xlabel="LM training (CPU minutes)", ylabel="fraction", ylim=(0, 1.02),
            title="prompt and identity", xticks=x, xticklabels=[f"{m:.0f}" for m in x])
    ax1.minorticks_off()
    ax1.legend(fontsize=7)
    for key, label in (("forward_error_ratio", "extend-forward"), ("backward_error_ratio", "extend-backward"),
                       ("connect_error_ratio", "connect"), ("loop_seam", "loop seam")):
        ax2.plot(x, [r[key] for r in results], "o-", label=label)
    ax2.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax2.set(xscale="log", xlabel="LM training (CPU minutes)", ylabel="error / copy-last (lower is better)",
            title="world model", xticks=x, xticklabels=[f"{m:.0f}" for m in x])
    ax2.minorticks_off()
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a `vidlm demo` output folder")
    p.add_argument("--steps", type=int, nargs="+", required=True, help="LM checkpoints to evaluate")
    p.add_argument("--num", type=int, default=16, help="held-out clips per evaluation")
    p.add_argument("--out", type=Path, default=Path("docs/scaling"))
    p.add_argument("--cfg-text", type=float, default=1.0, help="text guidance of every sample")
    a = p.parse_args(argv)
    from PIL import Image

    from vidlm.evaluate import evaluate, heldout_clips
    from vidlm.pipeline import VideoGenerator

    a.out.mkdir(parents=True, exist_ok=True)
    minutes = lm_minutes(a.run)
    clip, caption, _ = heldout_clips(1, seed=1)[0]
    rows, results = [], []
    for step in a.steps:
        gen = VideoGenerator.from_pretrained(model_at(a.run, step))
        report = evaluate(gen, num=a.num, seed=0, sampling={"cfg_text": a.cfg_text}, progress=False)
        m = minutes.get(step) or minutes[min(minutes, key=lambda s: abs(s - step))]
        results.append({"step": step, "lm_minutes": round(m, 1), **{k: v for k, v in report.items()
                                                                      if isinstance(v, float)}})
        print(json.dumps(results[-1]))
        rows.append(samples_row(gen, caption, clip[:, :5], clip.shape[1], cfg_text=a.cfg_text))
    (a.out / "scaling.json").write_text(json.dumps(results, indent=1) + "\n")

    sep = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    sheet = np.concatenate([x for r in rows for x in (r, sep)][:-1], 0)
    Image.fromarray(sheet).resize((sheet.shape[1] * 2, sheet.shape[0] * 2), Image.NEAREST).save(a.out / "samples.png")

    plot(results, a.out / "scaling.png")
    print(f"wrote {a.out / 'scaling.json'}, {a.out / 'scaling.png'}, {a.out / 'samples.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
