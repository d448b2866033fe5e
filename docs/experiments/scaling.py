"""The compute-scaling figure: the same LM recipe at several training compute levels, each
evaluated with `vidlm eval world` on the same held-out clips and sampling seeds, and sampled on
the same prompt and input for the picture.

Levels trained separately, each with its own full schedule (the README's figure: the demo LM,
recipes/lm/demo-scaling.yaml, trained for 400, 1600 and 6400 steps on the shipped tokenizer's
codes of 10000 clips), every LM run with the tokenizer and text model of `--model`:

    python docs/experiments/scaling.py --lm runs/lm-400 runs/lm-1600 runs/lm-6400 --also shapes-demo 22346 135 \
        --model shapes-demo --num 16 --cfg-text 3 --out docs/scaling

or the checkpoints of one `vidlm demo` run (a checkpoint in the middle of a cosine schedule still
has a high learning rate: each point is what that much of this run gave, not what a shorter
run would give), with the run's final tokenizer:

    python docs/experiments/scaling.py --run runs/shapes-full --steps 750 3000 10324 --num 16 --cfg-text 3

An LM run folder holds train.json, lm.json and metrics.jsonl (`vidlm lm train`) and either its
checkpoints or an export (model.safetensors, config.json, vocab.json). Compute is training FLOPs:
steps x rows x row length x `LMConfig.flops_per_token` (padding counted, as the step runs it).
Writes OUT/scaling.json, OUT/scaling.png (world metrics against compute) and OUT/samples.png (one
row per level: t2v of one prompt, then extend-forward of one held-out head, frames over time).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np


def level(lm_run: Path, step: int | None = None) -> dict:
    """Training compute of `lm_run` at `step` (default its last logged step): FLOPs and minutes."""
    from vidlm.lm.config import LMConfig

    from vidlm.config import from_dict, read_json

    train, lm = read_json(lm_run / "train.json"), from_dict(LMConfig, read_json(lm_run / "lm.json"))
    rows = [json.loads(line) for line in (lm_run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    at = step or max(r["step"] for r in rows)
    row_len = train["seq_len"] or lm.max_seq_len
    logged = [r for r in rows if r["step"] <= at]
    flops = at * train["micro_batch_size"] * train["grad_accum"] * row_len * lm.flops_per_token(row_len)
    return {"step": at, "pflop": float(f"{flops / 1e15:.3g}"), "minutes": round((logged[-1]["time"] - rows[0]["time"]) / 60, 1)}


def export_at(run: Path, step: int) -> Path:
    """RUN/exported/step-N: the LM of `vidlm demo` run RUN at checkpoint N, with RUN's tokenizer."""
    from vidlm.lm.train import export

    folder = run / "exported" / f"step-{step}"
    if not (folder / "lm" / "model.safetensors").is_file():
        for part in ("tokenizer", "text"):
            shutil.copytree(run / "model" / part, folder / part, dirs_exist_ok=True)
        export(run / "runs" / "lm", folder / "lm", step=step)
    return folder


def export_lm(run: Path) -> Path:
    """RUN/exported: the last checkpoint of LM run RUN (a `--lm` level), exported once."""
    from vidlm.lm.train import export

    folder = run / "exported"
    return folder if (folder / "model.safetensors").is_file() else export(run, folder)


def samples_row(gen, prompt: str, head, frames: int, columns: int = 9, **opts) -> np.ndarray:
    from vidlm.data.encode import to_uint8

    t2v = to_uint8(gen.t2v(prompt, frames=frames, seed=0, **opts).video)
    ext = to_uint8(gen.extend(head, direction="forward", frames=frames, text=prompt, seed=0, **opts).video)
    pick = np.linspace(0, frames - 1, columns).round().astype(int)
    gap = np.full((t2v.shape[1], 6, 3), 255, np.uint8)
    return np.concatenate([*t2v[pick], gap, *ext[pick]], 1)


def plot(results: list[dict], out: Path) -> None:
    """World metrics against LM training compute, from the results scaling.json holds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["pflop"] for r in results]
    labels = [f"{r['pflop']:g} ({r['minutes']:.0f} min)" for r in results]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("color_accuracy", "t2v colour"), ("shape_accuracy", "t2v shape"),
                       ("t2i_accuracy", "t2i object"), ("i2v_identity", "i2v identity"),
                       ("identity", "extend/connect identity"), ("detection_rate", "frames with an object")):
        ax1.plot(x, [r[key] for r in results], "o-", label=label)
    ax1.set(xscale="log", xlabel="LM training compute (PFLOP, and the minutes it took)", ylabel="fraction", ylim=(0, 1.02),
            title="prompt and identity", xticks=x, xticklabels=labels)
    ax1.minorticks_off()
    plt.setp(ax1.get_xticklabels(), rotation=35, ha="right", fontsize=8)
    ax1.legend(fontsize=7)
    for key, label in (("forward_error_ratio", "extend-forward"), ("backward_error_ratio", "extend-backward"),
                       ("connect_error_ratio", "connect"), ("loop_seam", "loop seam")):
        ax2.plot(x, [r[key] for r in results], "o-", label=label)
    ax2.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax2.set(xscale="log", xlabel="LM training compute (PFLOP, and the minutes it took)", ylabel="error / copy-last (lower is better)",
            title="world model", xticks=x, xticklabels=labels)
    ax2.minorticks_off()
    plt.setp(ax2.get_xticklabels(), rotation=35, ha="right", fontsize=8)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lm", type=Path, nargs="+", help="LM runs trained separately, one per level")
    p.add_argument("--model", default="shapes-demo", help="tokenizer and text model of the --lm runs")
    p.add_argument("--also", nargs=3, action="append", default=[], metavar=("MODEL", "STEPS", "MINUTES"),
                   help="one more level after the --lm runs (repeatable): a model (folder or shipped name) trained "
                        "elsewhere on rows of the same size, its LM steps and minutes (e.g. shapes-demo 22346 135)")
    p.add_argument("--run", type=Path, help="or: a `vidlm demo` output folder ...")
    p.add_argument("--steps", type=int, nargs="+", help="... and its LM checkpoints to evaluate")
    p.add_argument("--num", type=int, default=16, help="held-out clips per evaluation")
    p.add_argument("--out", type=Path, default=Path("docs/scaling"))
    p.add_argument("--cfg-text", type=float, default=1.0, help="text guidance of every sample")
    a = p.parse_args(argv)
    if bool(a.lm) == bool(a.run and a.steps):
        p.error("give --lm RUN... or --run RUN --steps N...")
    from PIL import Image

    from vidlm.config import read_json
    from vidlm.demo import shown
    from vidlm.evaluate import evaluate, heldout_clips
    from vidlm.pipeline import VideoGenerator

    if a.lm:  # an LM run folder holds an export (runs trained elsewhere may come back so) or checkpoints
        levels = [(level(r), {"path": a.model, "lm": r if (r / "model.safetensors").is_file() else
                                  export_lm(r)}) for r in a.lm]
    else:
        levels = [(level(a.run / "runs" / "lm", s), {"path": export_at(a.run, s)}) for s in a.steps]
    per_step = levels[-1][0]["pflop"] / levels[-1][0]["step"]  # --also levels: at the --lm runs' FLOPs a step
    for name, steps, minutes in a.also:
        levels.append(({"step": int(steps), "pflop": float(f"{per_step * int(steps):.3g}"), "minutes": float(minutes),
                        "model": shown(name)}, {"path": name}))

    def saved(where: dict) -> Path | None:
        """A level's report is kept beside its LM (a level added later evaluates only itself)."""
        folder = Path(where.get("lm") or Path(where["path"]) / "lm")
        return folder / f"world-{a.num}-cfg{a.cfg_text:g}.json" if folder.is_dir() else None

    a.out.mkdir(parents=True, exist_ok=True)
    clip, caption, _ = heldout_clips(1, seed=1)[0]
    rows, results = [], []
    for compute, where in levels:
        gen = VideoGenerator.from_pretrained(**where)
        if (keep := saved(where)) and keep.is_file():
            report = read_json(keep)
        else:
            report = evaluate(gen, num=a.num, seed=0, sampling={"cfg_text": a.cfg_text}, progress=False)
            report = {k: v for k, v in report.items() if isinstance(v, float)}
            if keep:
                keep.write_text(json.dumps(report, indent=1))
        results.append({**compute, **report})
        print(json.dumps(results[-1]), flush=True)
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
