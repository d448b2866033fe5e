"""Prompt refinement: free prompts into the training captions' grammar (vidlm.data.refine)."""

import pytest
from vidlm.data.refine import Refined, refine_shapes
from vidlm.data.synthetic import clip_seed, render_clip

TABLE = [  # (free prompt, caption) where the prompt says everything
    ("a red ball going right on black", "a red circle bouncing to the right on a black background"),
    ("blue box moving up on a white background", "a blue square bouncing upward on a white background"),
    ("a green triangle falling against a gray backdrop", "a green triangle falls and bounces on a gray background"),
    ("pink disc drifting down-left on navy", "a magenta circle bouncing to the lower left on a navy background"),
    ("an orange pyramid rising and heading right, dark background",
     "a orange triangle bouncing to the upper right on a black background"),  # "a orange": the training grammar
    ("a yellow cube sliding left behind a bar on grey",
     "a yellow square bouncing to the left on a gray background, partly hidden by a gray bar"),
    ("a teal dot dropping and a crimson block moving down on white",
     "a cyan circle falling and bouncing and a red square bouncing downward on a white background"),
]


@pytest.mark.parametrize("prompt,caption", TABLE)
def test_free_prompts_become_training_captions(prompt, caption):
    r = refine_shapes(prompt, seed=0)
    assert r.caption == caption and r.filled == {} and r.prompt == prompt


def test_what_a_prompt_leaves_out_is_drawn_from_the_seed():
    r = refine_shapes("blue box", seed=3)
    assert r.caption.startswith("a blue square bouncing ") and set(r.filled) == {"direction", "background"}
    assert refine_shapes("blue box", seed=3) == r  # the same seed, the same caption
    assert len({refine_shapes("a ball", seed=s).caption for s in range(12)}) > 1
    two = refine_shapes("a red square and a red circle", seed=0)  # the world never repeats a colour
    assert two.caption.count("red") == 1 and "colour 2" in two.filled


def test_training_captions_come_back_unchanged():
    for i in range(200):
        caption = render_clip(clip_seed(0, i), frames=2)[1]
        assert refine_shapes(caption).caption == caption


def test_a_generator_refines_with_any_function():
    from vidlm.pipeline import VideoGenerator

    seen = []

    def mine(prompt, seed):
        seen.append((prompt, seed))
        return Refined(prompt, "a red circle moves right")

    gen = VideoGenerator.random("debug", tokenizer="debug", refine=mine)
    gen.t2i("anything red", size=(32, 32), seed=5)
    assert seen == [("anything red", 5)] and gen.refined.caption == "a red circle moves right"
    assert VideoGenerator.random("debug", tokenizer="debug", refine=True).refine is refine_shapes
