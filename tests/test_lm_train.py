"""LM training: packing, the task stream, exact resume under ZeRO 1/2/3 (1 and 2 CPU ranks),
export, recipes, and a debug run that learns every task.

The generic checkpoint mechanism is tested in tests/test_runtime.py; this file tests what the LM
trainer adds (its data position, its losses, its export). Also runnable as the 2-rank worker:
    deepspeed --num_gpus 2 --module tests.test_lm_train --config job.json
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
STEPS, RESUME_AT = 4, 2


def synth_tokens(out: Path, clips: int = 24, seed: int = 0) -> Path:
    """A learnable token world: codes[t,y,x] = (c0 + 3t + y + 2x) % 32, caption [c0 % 8, 9]; tails
    and structure views are deterministic functions of the codes (like a real tokenizer's)."""
    from vidlm.lm.tokendata import ShardWriter, TokenClip
    from vidlm.lm.vocab import Vocab

    g = torch.Generator().manual_seed(seed)
    writer = ShardWriter(out, per_shard=10)
    for i in range(clips):
        n = 3 + i % 2  # two durations (buckets)
        c0 = int(torch.randint(0, 32, (1,), generator=g))
        t, y, x = torch.meshgrid(torch.arange(n), torch.arange(2), torch.arange(3), indexing="ij")
        codes = (c0 + 3 * t + y + 2 * x) % 32
        tails = {j: (codes[-j:] + 5) % 32 for j in (1, 2)}
        writer.write(TokenClip(key=f"clip{i:03d}", codes=codes, text=[c0 % 8, 9], tails=tails,
                               structure=codes // 4, meta={"caption": f"clip {c0}"}))
    writer.close()
    Vocab(text_size=12, code_size=32, max_t=8, max_h=4, max_w=4).save(out)
    return out


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    return synth_tokens(tmp_path_factory.mktemp("lmdata") / "tokens")


def debug_cfg(**over):
    from vidlm.lm.config import TrainConfig

    from vidlm.config import load_yaml

    cfg = load_yaml(TrainConfig, REPO / "recipes/lm/debug.yaml")
    base = {"steps": STEPS, "seq_len": 128, "log_every": 1, "val_every": 100, "ckpt_every": 100, "threads": 1}
    return dataclasses.replace(cfg, **{**base, **over})


def run_resume(cfg, tokens, root: Path, stage: int, local_rank=None) -> dict:
    """Straight run vs stopped at RESUME_AT and resumed: the losses after RESUME_AT."""
    from vidlm.lm.train import main

    ds = str(REPO / f"recipes/deepspeed/zero{stage}.json")
    straight = main(cfg, run_dir=str(root / f"straight{stage}"), data=str(tokens), deepspeed=ds, local_rank=local_rank)
    main(cfg, run_dir=str(root / f"resumed{stage}"), data=str(tokens), deepspeed=ds, local_rank=local_rank,
         stop_at=RESUME_AT)
    resumed = main(cfg, run_dir=str(root / f"resumed{stage}"), data=str(tokens), deepspeed=ds, local_rank=local_rank)
    return {"straight": straight["losses"][RESUME_AT:], "resumed": resumed["losses"],
            "resumed_at": resumed["first_step"], "all": straight["losses"], "params_held": straight["params_held"]}


# ----------------------------------------------------------------------------- packing and data
def test_packed_loss_equals_unpacked(tokens):
    from vidlm.lm.model import VideoLM
    from vidlm.lm.stream import TaskStream, micro_batch
    from vidlm.lm.tokendata import read_clips
    from vidlm.lm.train import token_losses
    from vidlm.lm.vocab import Vocab

    cfg = debug_cfg()
    vocab = Vocab.from_pretrained(tokens)
    torch.manual_seed(0)
    model = VideoLM(cfg.lm_config(vocab.size)).eval()
    stream = TaskStream(read_clips(tokens), vocab, cfg.data, seed=0, rank=0, world=1, row_len=128)
    batch, nxt = micro_batch(stream, 0, 3, 128)
    assert nxt > 3 and (batch["doc_ids"].max(1).values >= 1).all()  # several sequences per row
    with torch.no_grad():
        ce, mask = token_losses(model, batch, "cpu")
        separate = []
        for n in range(nxt):
            seq, _ = stream(n)
            logits = model(seq.ids[None], seq.coords[None])[0, :-1]
            per = torch.nn.functional.cross_entropy(logits, seq.ids[1:], reduction="none")
            separate.append(per[seq.loss_mask[1:]])
    separate = torch.cat(separate)
    assert int(mask.sum()) == len(separate)
    torch.testing.assert_close(ce[mask], separate, atol=1e-5, rtol=1e-5)


def test_stream_is_a_pure_function_and_mixes_tasks(tokens):
    from vidlm.lm.stream import TaskStream
    from vidlm.lm.tasks import TASKS
    from vidlm.lm.tokendata import read_clips
    from vidlm.lm.vocab import Vocab

    clips, vocab, cfg = read_clips(tokens), Vocab.from_pretrained(tokens), debug_cfg()
    a = TaskStream(clips, vocab, cfg.data, seed=0, rank=0, world=2, row_len=128)
    b = TaskStream(clips, vocab, cfg.data, seed=0, rank=1, world=2, row_len=128)
    seen = {a(n)[1] for n in range(200)}
    assert seen == set(range(len(TASKS)))
    assert all(torch.equal(a(n)[0].ids, a(n)[0].ids) for n in (0, 57, 199))
    assert any(not torch.equal(a(n)[0].ids, b(n)[0].ids) for n in range(5))  # ranks see other data
    grids = {a(n)[0].ids[2].item() for n in range(50)}
    assert len(grids) >= 2  # grid t from each clip's own length (and t2i / loop)


def test_stream_windows_reorder_draws_into_tighter_rows(tokens):
    from vidlm.lm.stream import TaskStream, micro_batch
    from vidlm.lm.tokendata import read_clips
    from vidlm.lm.vocab import Vocab

    clips, vocab, cfg = read_clips(tokens), Vocab.from_pretrained(tokens), debug_cfg()
    packed = TaskStream(clips, vocab, cfg.data, seed=0, rank=0, world=1, row_len=128)
    assert cfg.data.pack_window == 16  # the debug recipe's, so that the test spans windows
    ids = lambda seq: tuple(seq.ids.tolist())
    for k in range(3):  # each window holds the same draws, in another order
        window = range(16 * k, 16 * (k + 1))
        assert sorted(ids(packed(n)[0]) for n in window) == sorted(ids(packed.draw(n)[0]) for n in window)
    padding = {}
    for name, stream in (("packed", packed), ("drawn", packed.draw)):
        cursor, real = 0, 0
        for _ in range(12):
            batch, cursor = micro_batch(stream, cursor, 1, 128)
            real += int((batch["doc_ids"] >= 0).sum())
        padding[name] = 1 - real / (12 * 128)
    assert padding["packed"] < padding["drawn"]


def test_every_recipe_validates():
    from vidlm.lm.cli import build_parser
    from vidlm.lm.config import TrainConfig

    from vidlm import runtime as rt
    from vidlm.config import load_yaml

    recipes = sorted((REPO / "recipes/lm").glob("*.yaml"))
    assert {p.stem for p in recipes} >= {"debug", "demo", "S", "M", "L", "XL"}
    for path in recipes:
        cfg = load_yaml(TrainConfig, path)
        lm = cfg.lm_config(vocab_size=70000)
        assert cfg.row_len <= lm.max_seq_len, path
        for stage in (0, 1, 2, 3):
            rt.deepspeed_config(REPO / f"recipes/deepspeed/zero{stage}.json", micro_batch_size=cfg.micro_batch_size,
                                grad_accum=cfg.grad_accum, grad_clip=cfg.grad_clip,
                                precision="fp32" if cfg.precision == "bf16" else cfg.precision, world_size=8)
        env = {**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable, "MASTER_PORT": "29999"}
        cmd = subprocess.run(["bash", REPO / "recipes/launch/cpu.sh", "vidlm.lm.cli train", path,
                              "--deepspeed", "recipes/deepspeed/zero2.json"], env=env, capture_output=True,
                             text=True, check=True).stdout.split()
        args = build_parser().parse_args(cmd[cmd.index("train"):])
        assert args.config == str(path) and args.deepspeed == "recipes/deepspeed/zero2.json"
    from vidlm.config import ConfigError

    with pytest.raises(ConfigError, match="vocab_size"):
        TrainConfig(preset="debug", model={"vocab_size": 3}).lm_config(10)


# ----------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def dist():
    from vidlm import runtime as rt

    return rt.init_distributed()


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_exact_resume_one_rank(dist, tokens, tmp_path, stage):
    # ZeRO-3 also with activation checkpointing
    r = run_resume(debug_cfg(grad_accum=2, model={"checkpointing": stage == 3}), tokens, tmp_path, stage)
    assert r["resumed_at"] == RESUME_AT and len(r["resumed"]) == STEPS - RESUME_AT
    assert r["resumed"] == r["straight"], f"ZeRO-{stage}"


def test_compiled_blocks_train_like_eager(dist, tokens, tmp_path, monkeypatch):
    """compile: true compiles each block (traced here with aot_eager: no C++ build in the test)
    and trains to the eager run's losses; with ZeRO-3 it is refused before training, as is
    FlexAttention on a CPU (no backward there)."""
    from vidlm.lm import train

    from vidlm.config import ConfigError

    monkeypatch.setattr(train, "COMPILE_BACKEND", "aot_eager")
    eager = train.main(debug_cfg(steps=3), run_dir=str(tmp_path / "eager"), data=str(tokens))
    compiled = train.main(debug_cfg(steps=3, compile=True), run_dir=str(tmp_path / "compiled"), data=str(tokens))
    assert compiled["losses"] == pytest.approx(eager["losses"], rel=1e-4)
    with pytest.raises(ConfigError, match="ZeRO-3"):
        train.main(debug_cfg(steps=3, compile=True), run_dir=str(tmp_path / "z3"), data=str(tokens),
                   deepspeed=str(REPO / "recipes/deepspeed/zero3.json"))
    with pytest.raises(ConfigError, match="flex"):
        train.main(debug_cfg(steps=3, model={"attn_backend": "flex"}), run_dir=str(tmp_path / "flex"), data=str(tokens))


def test_debug_run_learns_every_task_and_exports(dist, tokens, tmp_path):
    from vidlm.lm.model import VideoLM
    from vidlm.lm.stream import load_data, val_sequences
    from vidlm.lm.tasks import TASKS
    from vidlm.lm.train import main
    from vidlm.lm.vocab import Vocab

    cfg = debug_cfg(steps=40, log_every=10, val_every=40, ckpt_every=20, lr=3e-3)
    zero3 = str(REPO / "recipes/deepspeed/zero3.json")
    out = main(cfg, run_dir=str(tmp_path / "run"), data=str(tokens), deepspeed=zero3)
    last = out["last"]
    # the initial model (same seed) on the same validation sequences
    _train, val, vocab = load_data(cfg, str(tokens))
    torch.manual_seed(cfg.seed)
    fresh = VideoLM(cfg.lm_config(vocab.size)).eval()
    exported = VideoLM.from_pretrained(
        __import__("vidlm.lm.train", fromlist=["export"]).export(tmp_path / "run", tmp_path / "model")).eval()
    assert Vocab.from_pretrained(tmp_path / "model") == vocab
    sums = {k: [0.0, 0.0, 0] for k in TASKS}
    with torch.no_grad():
        for batch in val_sequences(val, vocab, cfg):
            for i, m in enumerate((fresh, exported)):
                logits = m(batch["ids"], batch["coords"], doc_ids=batch["doc_ids"])[:, :-1]
                ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["ids"][:, 1:].flatten(),
                                                       reduction="none").view(logits.shape[:2])
                task = batch["task"][:, 1:]
                for t, name in enumerate(TASKS):
                    sel = batch["loss_mask"][:, 1:] & (task == t)
                    sums[name][i] += float(ce[sel].sum())
                    sums[name][2] += int(sel.sum()) if i == 0 else 0
    for name, (before, after, n) in sums.items():
        assert n > 0, name
        before, after = before / n, after / n
        assert after < 0.6 * before, f"{name}: {before:.3f} -> {after:.3f}"
        # the exported weights are the trained ones: their loss is the run's last validation
        assert after == pytest.approx(last[f"val/{name}"], rel=1e-4), name
    assert last["skipped_steps"] == 0 and last["tokens_per_s"] > 0
    # an earlier checkpoint exports too (the compute-scaling figure); a step never saved is refused
    from vidlm.lm.train import export

    early = VideoLM.from_pretrained(export(tmp_path / "run", tmp_path / "early", step=20))
    assert any(not torch.equal(a, b) for a, b in zip(early.parameters(), exported.parameters()))
    with pytest.raises(FileNotFoundError, match="no complete checkpoint of step 30"):
        export(tmp_path / "run", tmp_path / "nope", step=30)
    # fine-tuning starts from the exported weights: its first step's loss is the trained model's
    from vidlm.config import ConfigError

    tuned = main(debug_cfg(steps=2, init_from=str(tmp_path / "model")), run_dir=str(tmp_path / "tuned"), data=str(tokens))
    assert tuned["losses"][0] < 0.6 * out["losses"][0]
    with pytest.raises(ConfigError, match=r"another architecture .*n_layers"):
        main(debug_cfg(steps=2, init_from=str(tmp_path / "model"), model={"n_layers": 1}),
             run_dir=str(tmp_path / "other"), data=str(tokens))


def test_code_levels_must_be_the_tokenizers(dist, tokens, tmp_path):
    """model.code_levels trains where the token folder's tokenizer codes with those FSQ levels, and
    is refused before training where it does not (other levels, or no tokenizer)."""
    import json
    import shutil

    from vidlm.lm.train import main

    from vidlm.config import ConfigError

    with pytest.raises(ConfigError, match="holds no tokenizer"):
        main(debug_cfg(steps=2, model={"code_levels": [4, 8]}), run_dir=str(tmp_path / "none"), data=str(tokens))
    fsq = tmp_path / "tokens"
    shutil.copytree(tokens, fsq)
    (fsq / "tokenizer").mkdir()
    (fsq / "tokenizer" / "config.json").write_text(json.dumps({"config": {"quantizer": "fsq", "levels": [4, 8]}}))
    with pytest.raises(ConfigError, match=r"levels \[4, 8\]"):
        main(debug_cfg(steps=2, model={"code_levels": [8, 4]}), run_dir=str(tmp_path / "other"), data=str(fsq))
    out = main(debug_cfg(steps=2, model={"code_levels": [4, 8]}), run_dir=str(tmp_path / "run"), data=str(fsq))
    assert len(out["losses"]) == 2 and out["params_held"] > 0


@pytest.mark.slow
def test_exact_resume_two_ranks(tokens, tmp_path):
    """One `deepspeed` launch with 2 CPU ranks checks ZeRO 1, 2 and 3 (exact resume) and that
    ZeRO-3 is partitioned from the start and trains like ZeRO-2."""
    if torch.cuda.is_available():
        pytest.skip("CPU-rank launch test")
    job = {"out": str(tmp_path / "result.json"), "root": str(tmp_path / "runs"), "tokens": str(tokens)}
    (tmp_path / "job.json").write_text(json.dumps(job))
    from conftest import launch  # here: the ranks import this module, outside pytest

    proc = launch("tests.test_lm_train", tmp_path / "job.json", nproc=2, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    for stage in ("1", "2", "3"):
        r = result[stage]
        assert r["resumed_at"] == RESUME_AT and len(r["resumed"]) == STEPS - RESUME_AT
        assert r["resumed"] == r["straight"], f"ZeRO-{stage}"
        assert r["other_rank"] != r["straight"], "both ranks saw the same data"
    # ZeRO-3 builds the model inside deepspeed.zero.Init: each rank holds about half of it, and
    # the partitioned run computes the losses of the ZeRO-2 run
    assert result["3"]["params_held"] < 0.6 * result["2"]["params_held"]
    assert result["3"]["all"] == pytest.approx(result["2"]["all"], rel=1e-4)


def worker(argv=None) -> int:
    """The 2-rank side of test_exact_resume_two_ranks (run by the deepspeed launcher)."""
    import argparse

    from vidlm import runtime as rt

    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    rt.add_launcher_args(p)
    args = p.parse_args(argv)
    job = json.loads(Path(args.config).read_text())
    dist = rt.init_distributed(args.local_rank)
    result = {}
    for stage in (1, 2, 3):
        r = run_resume(debug_cfg(), job["tokens"], Path(job["root"]), stage, args.local_rank)
        mine = torch.tensor(r["straight"], dtype=torch.float64)
        others = [torch.zeros_like(mine) for _ in range(dist.world_size)]
        torch.distributed.all_gather(others, mine)
        result[str(stage)] = {**r, "other_rank": others[1].tolist()}
    if dist.is_main:
        Path(job["out"]).write_text(json.dumps(result))
    rt.finish(dist)
    return 0


if __name__ == "__main__":
    sys.exit(worker())
