"""The frame prior (vidlm.lm.prior): what it reads from a prompt, its place in sampling (the
product of experts is the distribution every decode path samples), training and its files."""

import pytest
import torch
from conftest import two_level_config
from test_speculative import TASKS
from vidlm.lm.prior import FramePrior, PriorConfig, PriorHook, train_prior
from vidlm.lm.tasks import render_prompt

from vidlm.pipeline import VideoGenerator


def with_prior(gen: VideoGenerator, weight: float = 4.0, seed: int = 0, **cfg) -> VideoGenerator:
    torch.manual_seed(seed)
    gen.prior = FramePrior(PriorConfig(n_codes=gen.vocab.code_size, width=48, layers=1, weight=weight,
                                       refine_rows=gen.tokenizer.cfg.refine_rows, **cfg)).eval()
    return gen


@pytest.fixture(scope="module")
def prior_gen():
    return with_prior(VideoGenerator.random("debug", tokenizer="debug", seed=0))


@pytest.fixture(scope="module")
def prior3_gen():
    """A prior reading three frames, or fewer down to one (the rest blank)."""
    return with_prior(VideoGenerator.random("debug", tokenizer="debug", seed=0), context=3, min_context=1)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("which", ["prior_gen", "prior3_gen"])
def test_speculative_samples_the_product_plain_decoding_samples(which, task, temperature, request):
    """Drafts see the prior their frame gets given the drafts before them: the tokens stay plain
    decoding's, and the prior does change them."""
    prior_gen = request.getfixturevalue(which)
    video = torch.rand(3, 5, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    opts = {"temperature": temperature, "top_k": 24, "cfg_text": 2.0, "seed": 0}
    plain = TASKS[task](prior_gen, video, speculative=0, **opts).codes
    fast = TASKS[task](prior_gen, video, speculative=8, **opts).codes
    assert torch.equal(plain, fast), task
    alone = TASKS[task](prior_gen, video, speculative=0, prior_weight=0, **opts).codes
    if task != "t2i" and (task != "edit" or prior_gen.prior.cfg.min_context == 1):  # edit: 2 latent frames
        assert not torch.equal(plain, alone), task
    else:
        assert torch.equal(plain, alone), task


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_two_level_codes_get_the_prior_on_their_coarse_rows(temperature):
    gen = with_prior(VideoGenerator.random("debug", tokenizer=two_level_config(), seed=0, next_query=True))
    opts = {"temperature": temperature, "top_k": 24, "cfg_text": 2.0, "seed": 0}
    plain = TASKS["t2v"](gen, None, speculative=0, **opts).codes
    assert torch.equal(plain, TASKS["t2v"](gen, None, speculative=8, **opts).codes)
    assert not torch.equal(plain, TASKS["t2v"](gen, None, speculative=0, prior_weight=0, **opts).codes)


def test_the_hook_reads_known_and_generated_frames_but_not_edit_signals(prior_gen):
    vocab, lo = prior_gen.vocab, prior_gen.vocab.code_range[0]
    codes = torch.randint(vocab.code_size, (4, 2, 3), generator=torch.Generator().manual_seed(0))
    hook = lambda task, known: PriorHook(prior_gen.prior, 2.0, render_prompt(task, vocab, grid=(4, 2, 3),
                                                                               known=known).frames, lo)
    per = 6
    # extend-forward from two known frames: frame 2 (position 0 on) has its prior at once
    ext = hook("extend-forward", [(0, codes[:2])])
    expect = 2.0 * prior_gen.prior(codes[0][None], codes[1][None])[0].log_softmax(0)
    assert torch.allclose(ext(0, []), expect[:, 0, 0]) and torch.allclose(ext(4, []), expect[:, 1, 1])
    # frame 3 reads generated frame 2 (ids 0..5 of the sequence) and known frame 1
    made = vocab.codes_to_ids(codes[2]).reshape(-1).tolist()
    expect = 2.0 * prior_gen.prior(codes[1][None], codes[2][None])[0].log_softmax(0)
    assert torch.allclose(ext(per + 5, made + [-1] * 5), expect[:, 1, 2])  # positions from i on: not read
    # extend-backward generates frame 1 from frames 3, 2 (known tail): the prior runs back in time
    back = hook("extend-backward", [(2, codes[2:])])
    assert torch.allclose(back(0, []), 2.0 * prior_gen.prior(codes[3][None], codes[2][None])[0].log_softmax(0)[:, 0, 0])
    # t2v's first two frames have no two neighbours; edit's structure codes are no frames
    assert hook("t2v", [])(per - 1, [lo] * (per - 1)) is None
    assert hook("edit", [(None, codes)])(per + 1, [lo] * (per + 1)) is None
    assert hook("edit", [(None, codes)])(2 * per, [lo] * (2 * per)) is not None


def test_a_prior_of_three_frames_reads_what_there_is(prior3_gen):
    """Context 3, min_context 1: the frames a prompt lacks are read as blank, the nearest last;
    where both directions have frames (connect's middle), the one with more."""
    vocab, lo, prior = prior3_gen.vocab, prior3_gen.vocab.code_range[0], prior3_gen.prior
    codes = torch.randint(vocab.code_size, (5, 2, 3), generator=torch.Generator().manual_seed(0))
    blank = torch.full((2, 3), prior.blank)
    ids = lambda *frames: [i for c in frames for i in vocab.codes_to_ids(c).reshape(-1).tolist()]

    def expect(*frames):  # the farthest first
        return 2.0 * prior(*(f[None] for f in frames))[0].log_softmax(0)[:, 0, 0]

    def hook(task, known):
        return PriorHook(prior, 2.0, render_prompt(task, vocab, grid=(5, 2, 3), known=known).frames, lo)

    t2v, per = hook("t2v", []), 6
    assert t2v(0, []) is None  # frame 0: nothing to read
    assert torch.allclose(t2v(per, ids(codes[0])), expect(blank, blank, codes[0]))
    assert torch.allclose(t2v(2 * per, ids(*codes[:2])), expect(blank, codes[0], codes[1]))
    assert torch.allclose(t2v(4 * per, ids(*codes[:4])), expect(codes[1], codes[2], codes[3]))
    # connect (head frame 0, ending frame 4) generates frames 1, 3, 2: frame 3 reads back from 4,
    # and frame 2 has frames 1, 0 before it and 3, 4 after it: a tie, forward
    con = hook("connect", [(0, codes[:1]), (4, codes[4:])])
    assert torch.allclose(con(per, ids(codes[1])), expect(blank, blank, codes[4]))
    assert torch.allclose(con(2 * per, ids(codes[1], codes[3])), expect(blank, codes[0], codes[1]))
    # extend-backward from frames 2, 3, 4 generates frame 1 from all three, back in time
    back = hook("extend-backward", [(2, codes[2:])])
    assert torch.allclose(back(0, []), expect(codes[4], codes[3], codes[2]))


def test_the_prior_trains_resumes_exactly_and_loads_with_the_model(tmp_path, debug_model_dir):
    """`vidlm lm prior` on a token folder: the loss falls; a run stopped after a checkpoint
    resumes there and ends where the whole run ends; the model folder loads with its prior."""
    import shutil

    from vidlm.data.synthetic import synth_shards
    from vidlm.lm.cli import main as lm_main

    from vidlm.pretokenize import main as tokenize

    synth_shards(tmp_path / "shards", 16, 0, width=32, height=32, frames=13)
    tokens = tmp_path / "tokens"
    tokenize(["--tokenizer", str(debug_model_dir / "tokenizer"), "--shards", str(tmp_path / "shards"),
              "--out", str(tokens), "--frames", "13", "--area", str(32 * 32)])
    opts = {"steps": 40, "batch": 8, "width": 16, "layers": 1, "val_clips": 4, "every": 20, "lr": 3e-3}
    whole = train_prior(str(tokens), str(tmp_path / "whole"), **opts)
    assert whole["val/forward"] < 4.6  # log(125) = 4.83: the debug tokenizer's codes, uniform

    def crash_at_the_end(line):
        if '"step": 40' in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_prior(str(tokens), str(tmp_path / "resumed"), **opts, log=crash_at_the_end)
    assert (tmp_path / "resumed" / "prior-run" / "state.pt").is_file()  # step 20's
    assert train_prior(str(tokens), str(tmp_path / "resumed"), **opts) == whole
    assert not (tmp_path / "resumed" / "prior-run").exists()  # finished: no run state left behind
    three = train_prior(str(tokens), str(tmp_path / "three"), **{**opts, "width": 48}, context=3, min_context=1)
    assert three["val/forward"] < 4.6 and three["val/forward@1"] < 4.6  # reading three frames, or one

    model = tmp_path / "model"
    shutil.copytree(debug_model_dir, model)
    for f in ("prior.json", "prior.safetensors"):
        shutil.copy(tmp_path / "whole" / f, model / "lm" / f)
    gen = VideoGenerator.from_pretrained(model)
    assert gen.prior is not None and gen.prior.cfg.width == 16
    assert gen.t2v("a red circle moves right", frames=9, size=(32, 32)).codes.shape == (3, 8, 8)
    (model / "lm" / "prior-run").mkdir()  # a half-run of other settings is refused, not resumed
    torch.save({"args": {"steps": 1}}, model / "lm" / "prior-run" / "state.pt")
    with pytest.raises(ValueError, match="other settings"):
        lm_main(["prior", "--data", str(tokens), "--out", str(model / "lm"), "--val-clips", "4"])
