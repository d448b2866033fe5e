"""Token layout and task formats: golden sequences per task, loss masks, the inference twin."""

import pytest
import torch
from vidlm.lm.tasks import (
    TASKS,
    draw_task,
    open_frames,
    render_prompt,
    render_train,
    structure_view,
)
from vidlm.lm.vocab import Vocab

V = Vocab(text_size=10, code_size=20, max_t=4, max_h=2, max_w=2)
CODES = torch.arange(6).view(3, 1, 2)  # a clip of 3 latent frames, 1x2 codes each
TAIL1 = torch.tensor([[[17, 18]]])  # stand-alone codes of its last latent frame (!= CODES[2])
STRUCT = CODES.flip(0) + 10
TEXT = [3, 4]


def golden(seq):
    """'token@t,y,x' per position, '*' marking loss targets."""
    return " ".join(f"{n}@{t},{y},{x}" + ("*" if m else "") for n, (t, y, x), m in
                    zip(V.describe(seq.ids), seq.coords.tolist(), seq.loss_mask.tolist()))


PREFIX = "<bos>@-10,-10,-10 <task:{}>@-9,-9,-9 <t={}>@-8,-8,-8 <h=1>@-7,-7,-7 <w=2>@-6,-6,-6 " \
         "<text>@-5,-5,-5 text:3@-4,-4,-4 text:4@-3,-3,-3 </text>@-2,-2,-2 "
GOLDEN = {
    "t2v": ((CODES, []), ("<gen>@-1,-1,-1 code:0@0,0,0* code:1@0,0,1* code:2@1,0,0* code:3@1,0,1* "
                         "code:4@2,0,0* code:5@2,0,1* <eos>@3,3,3")),
    "t2i": ((CODES[:1], []), "<gen>@-1,-1,-1 code:0@0,0,0* code:1@0,0,1* <eos>@1,1,1"),
    "i2v": ((CODES, [(0, CODES[:1])]), ("<known>@-1,-1,-1 code:0@0,0,0 code:1@0,0,1 <gen>@0,0,0 "
                                       "code:2@1,0,0* code:3@1,0,1* code:4@2,0,0* code:5@2,0,1* <eos>@3,3,3")),
    "extend-forward": ((CODES, [(0, CODES[:2])]), ("<known>@-1,-1,-1 code:0@0,0,0 code:1@0,0,1 code:2@1,0,0 "
                                                  "code:3@1,0,1 <gen>@1,1,1 code:4@2,0,0* code:5@2,0,1* <eos>@3,3,3")),
    "extend-backward": ((CODES, [(2, TAIL1)]), ("<known>@1,1,1 code:17@2,0,0 code:18@2,0,1 <gen>@0,0,0 "
                                               "code:2@1,0,0* code:3@1,0,1* code:0@0,0,0* code:1@0,0,1* <eos>@3,3,3")),
    "connect": ((CODES, [(0, CODES[:1]), (2, TAIL1)]), ("<known>@-1,-1,-1 code:0@0,0,0 code:1@0,0,1 <known>@1,1,1 "
                                                       "code:17@2,0,0 code:18@2,0,1 <gen>@0,0,0 code:2@1,0,0* "
                                                       "code:3@1,0,1* <eos>@3,3,3")),
    "loop": ((CODES[:2], [(0, CODES[:1]), (2, TAIL1)]), ("<known>@-1,-1,-1 code:0@0,0,0 code:1@0,0,1 <known>@1,1,1 "
                                                        "code:17@2,0,0 code:18@2,0,1 <gen>@0,0,0 code:2@1,0,0* "
                                                        "code:3@1,0,1* <eos>@2,2,2")),
    "edit": ((CODES, [(None, STRUCT)]), ("<known>@-1,-1,-1 code:14@0,0,0 code:15@0,0,1 code:12@1,0,0 code:13@1,0,1 "
                                        "code:10@2,0,0 code:11@2,0,1 <gen>@-1,-1,-1 code:0@0,0,0* code:1@0,0,1* "
                                        "code:2@1,0,0* code:3@1,0,1* code:4@2,0,0* code:5@2,0,1* <eos>@3,3,3")),
}


@pytest.mark.parametrize("task", TASKS)
def test_golden_sequence(task):
    (codes, known), body = GOLDEN[task]
    seq = render_train(task, V, codes=codes, text=TEXT, known=known)
    assert golden(seq) == PREFIX.format(task, codes.shape[0]) + body
    # the inference twin: the same prefix, and the targets' coordinates in generation order
    prompt = render_prompt(task, V, grid=tuple(codes.shape), text=TEXT, known=known)
    n = len(prompt.ids)
    assert torch.equal(prompt.ids, seq.ids[:n]) and torch.equal(prompt.coords, seq.coords[:n])
    assert torch.equal(prompt.gen_coords, seq.coords[seq.loss_mask])
    assert not seq.loss_mask[:n].any() and seq.loss_mask[n:-1].all() and seq.ids[-1] == V.eos


def test_loop_prompt_puts_the_head_after_the_end():
    prompt = render_prompt("loop", V, grid=(2, 1, 2), known=[(0, CODES[:1])])
    assert V.describe(prompt.ids)[5:] == ["<known>", "code:0", "code:1", "<known>", "code:0", "code:1", "<gen>"]
    assert prompt.coords[-3:-1, 0].tolist() == [2, 2]  # the copy sits at t = 2, right after frame 1
    assert prompt.gen_coords.tolist() == [[1, 0, 0], [1, 0, 1]]


@pytest.mark.parametrize("task", TASKS)
def test_drops_keep_what_is_generated(task):
    (codes, known), _ = GOLDEN[task]
    full = render_train(task, V, codes=codes, text=TEXT, known=known)
    for drop_text, drop_known in ((True, False), (False, True), (True, True)):
        seq = render_train(task, V, codes=codes, text=TEXT, known=known, drop_text=drop_text, drop_known=drop_known)
        names = V.describe(seq.ids)
        assert ("<text>" in names) == (not drop_text)
        assert ("<known>" in names) == (bool(known) and not drop_known)
        # the same targets at the same coordinates, whatever was dropped
        assert torch.equal(seq.ids[seq.loss_mask], full.ids[full.loss_mask])
        assert torch.equal(seq.coords[seq.loss_mask], full.coords[full.loss_mask])
        prompt = render_prompt(task, V, grid=tuple(codes.shape), text=TEXT, known=known,
                               drop_text=drop_text, drop_known=drop_known)
        assert torch.equal(prompt.ids, seq.ids[: len(prompt.ids)])


def test_every_generated_frame_is_next_to_one_it_can_read():
    """Forward tasks run forward in time; extend-backward runs back from its ending, and connect
    and loop alternate between their two ends, meeting in the middle."""
    z = lambda k: torch.zeros(k, 1, 2, dtype=torch.long)
    assert open_frames("extend-forward", (7, 1, 2), [(0, z(2))]) == [2, 3, 4, 5, 6]
    assert open_frames("extend-backward", (7, 1, 2), [(5, z(2))]) == [4, 3, 2, 1, 0]
    assert open_frames("connect", (8, 1, 2), [(0, z(1)), (6, z(2))]) == [1, 5, 2, 4, 3]
    assert open_frames("loop", (6, 1, 2), [(0, z(2))]) == [2, 5, 3, 4]  # its tail is the head at 6, 7
    assert open_frames("extend-backward", (3, 1, 2), []) == [0, 1, 2]  # nothing known: forward
    for task, grid, known in (("extend-backward", (7, 1, 2), [(5, z(2))]), ("connect", (8, 1, 2), [(0, z(1)), (6, z(2))]),
                              ("loop", (6, 1, 2), [(0, z(2))])):
        read = {s + i for s, c in known for i in range(len(c))} | ({grid[0]} if task == "loop" else set())
        for t in open_frames(task, grid, known):
            assert t - 1 in read or t + 1 in read, (task, t)
            read.add(t)


def test_draw_task_masks_exactly_the_generated_codes():
    g = torch.Generator().manual_seed(0)
    vocab = Vocab(text_size=10, code_size=50)
    codes = torch.randint(0, 50, (5, 2, 3), generator=g)
    tails = {1: torch.randint(0, 50, (1, 2, 3), generator=g), 2: torch.randint(0, 50, (2, 2, 3), generator=g)}
    structure = torch.randint(0, 50, (5, 2, 3), generator=g)
    for task in TASKS:
        for _ in range(5):
            grid, known = draw_task(task, codes, tails, structure, g)
            seq = render_train(task, vocab, codes=grid, text=[1, 2], known=known)
            targets = vocab.ids_to_codes(seq.ids[seq.loss_mask])
            gen_t = seq.coords[seq.loss_mask][::6, 0].tolist()  # each generated frame's time, in order
            covered = {s + i for s, c in known if s is not None for i in range(len(c))}
            assert sorted(gen_t) == [t for t in range(grid.shape[0]) if t not in covered]
            assert gen_t == open_frames(task, tuple(grid.shape), known)
            assert torch.equal(targets, grid[gen_t].reshape(-1)), task
            assert seq.loss_mask.sum() == len(gen_t) * 6
    assert draw_task("edit", codes, tails, None, g) is None
    assert draw_task("loop", codes[:2], tails, None, g) is None


def test_clear_errors():
    with pytest.raises(ValueError, match="outside 1..4"):
        render_prompt("t2v", V, grid=(5, 1, 2))
    with pytest.raises(ValueError, match="nothing to generate"):
        render_prompt("extend-forward", V, grid=(2, 1, 2), known=[(0, CODES[:2])])
    with pytest.raises(ValueError, match="unknown task"):
        render_prompt("t2x", V, grid=(1, 1, 2))
    with pytest.raises(ValueError, match="another text tokenizer"):
        render_prompt("t2v", V, grid=(1, 1, 2), text=[99])


def test_vocab_layout_round_trips(tmp_path):
    lo, hi = V.code_range
    assert hi == V.size and hi - lo == 20 and V.text_range == (V.n_special, lo)
    assert len(V.specials) == V.n_special and len(set(V.specials)) == V.n_special
    codes = torch.randint(0, 20, (2, 3, 4))
    assert torch.equal(V.ids_to_codes(V.codes_to_ids(codes)), codes)
    V.save(tmp_path)
    assert Vocab.from_pretrained(tmp_path) == V
    with pytest.raises(ValueError, match="another video tokenizer"):
        V.codes_to_ids(torch.tensor([20]))


def test_structure_view_is_gray_and_blocky():
    g = torch.Generator().manual_seed(0)
    video = torch.rand(3, 2, 8, 8, generator=g) * 2 - 1
    s = structure_view(video)
    assert s.shape == video.shape
    assert torch.equal(s[0], s[1]) and torch.equal(s[1], s[2])  # gray
    assert torch.equal(s[..., 0::2, :], s[..., 1::2, :]) and torch.equal(s[..., 0::2], s[..., 1::2])  # 2x2 blocks
    luma = 0.299 * video[0] + 0.587 * video[1] + 0.114 * video[2]
    torch.testing.assert_close(s[0, :, 0, 0], luma[:, :2, :2].mean((1, 2)))
