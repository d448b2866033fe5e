"""Prompt refinement: a free prompt ("a red ball going right", "blue box") -> a caption in the
grammar the shapes-world model was trained on ("a red circle bouncing to the right on a black
background"). The seed's "prompt upsampling", without a language model or a download.

    refined = refine_shapes("two balls, a red one falling and a green one", seed=0)
    refined.caption   # "a red circle falling and bouncing and a green circle bouncing ... on a ..."
    refined.filled    # {"background": "navy", ...}: what the prompt did not say, and what was chosen

A refiner is any function (prompt, seed) -> Refined; `VideoGenerator(..., refine=...)` and
`vidlm generate --refine` take one (True: this one), so a user with a language model can plug
theirs in. Parts the prompt leaves out are drawn from the seed (the same seed, the same caption).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from .synthetic import BACKGROUNDS, COLOURS, SHAPES

COLOUR_WORDS = {
    "red": "red", "crimson": "red", "scarlet": "red", "green": "green", "lime": "green", "emerald": "green",
    "blue": "blue", "azure": "blue", "cobalt": "blue", "yellow": "yellow", "gold": "yellow", "golden": "yellow",
    "magenta": "magenta", "pink": "magenta", "purple": "magenta", "violet": "magenta", "fuchsia": "magenta",
    "cyan": "cyan", "teal": "cyan", "turquoise": "cyan", "aqua": "cyan", "orange": "orange", "amber": "orange",
}
SHAPE_WORDS = {
    "circle": "circle", "ball": "circle", "disc": "circle", "disk": "circle", "dot": "circle", "sphere": "circle",
    "orb": "circle", "round": "circle", "square": "square", "box": "square", "block": "square", "cube": "square",
    "rectangle": "square", "tile": "square", "triangle": "triangle", "pyramid": "triangle", "wedge": "triangle",
}
BACKGROUND_WORDS = {
    "black": "black", "dark": "black", "white": "white", "light": "white", "gray": "gray", "grey": "gray",
    "silver": "gray", "navy": "navy", "blue": "navy", "midnight": "navy",
}
FALLING = {"fall", "falls", "falling", "fell", "drop", "drops", "dropping", "dropped", "sinking", "sinks"}
UP = {"up", "upward", "upwards", "upper", "rising", "rises", "north"}
DOWN = {"down", "downward", "downwards", "lower", "south"}
LEFT, RIGHT = {"left", "leftward", "leftwards", "west"}, {"right", "rightward", "rightwards", "east"}
DIRECTIONS = {  # (vertical, horizontal) -> the training captions' words
    ("", "right"): "to the right", ("down", "right"): "to the lower right", ("down", ""): "downward",
    ("down", "left"): "to the lower left", ("", "left"): "to the left", ("up", "left"): "to the upper left",
    ("up", ""): "upward", ("up", "right"): "to the upper right",
}
BAR_WORDS = {"bar", "hidden", "behind", "occluded", "occluder", "wall"}


def free_prompt(obj: dict, seed: int) -> str:
    """How a user might ask for a world object (`render_clip`'s ground truth) in their own words:
    synonyms for its colour and shape, its motion loosely, no background ("a pink ball heading up
    and left"). `vidlm eval world` measures t2v on these, with and without refinement."""
    rng = random.Random(seed)
    colour = rng.choice([w for w, c in COLOUR_WORDS.items() if c == obj["colour"]])
    shape = rng.choice([w for w, s in SHAPE_WORDS.items() if s == obj["shape"] and w != "round"])
    if obj["motion"] != "bouncing":
        return f"a {colour} {shape} {rng.choice(['dropping', 'falling down', 'that drops'])}"
    words = {"to the right": "right", "to the lower right": "down and right", "downward": "down",
             "to the lower left": "down and left", "to the left": "left", "to the upper left": "up and left",
             "upward": "up", "to the upper right": "up and right"}[obj["direction"]]
    return f"a {colour} {shape} {rng.choice(['moving', 'heading', 'going', 'drifting'])} {words}"


@dataclass
class Refined:
    prompt: str
    """What the user typed."""
    caption: str
    """The caption in the training grammar."""
    filled: dict = field(default_factory=dict)
    """Parts the prompt did not say and the value chosen for each."""


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _background(text: str) -> tuple[str | None, str]:
    """The background colour the prompt names ("on white", "blue background", "against a dark
    backdrop") and the prompt without that phrase."""
    pattern = (r"\b(?:on|against|over|in front of)\s+(?:an?\s+|the\s+)?(\w+)(?:\s+(?:background|backdrop|bg))?"
               r"|\b(\w+)\s+(?:background|backdrop|bg)\b")
    for m in re.finditer(pattern, text.lower()):
        word = m.group(1) or m.group(2)
        if word in BACKGROUND_WORDS:
            return BACKGROUND_WORDS[word], text[: m.start()] + text[m.end():]
    return None, text


def _object(words: list[str], rng: random.Random, filled: dict, n: int) -> dict:
    def pick(kind: str, options):
        value = rng.choice(list(options))
        filled[f"{kind} {n}" if n else kind] = value
        return value

    colour = next((COLOUR_WORDS[w] for w in words if w in COLOUR_WORDS), None) or pick("colour", COLOURS)
    shape = next((SHAPE_WORDS[w] for w in words if w in SHAPE_WORDS), None) or pick("shape", SHAPES)
    if FALLING & set(words):
        return {"colour": colour, "shape": shape, "motion": "falling"}
    vertical = "up" if UP & set(words) else "down" if DOWN & set(words) else ""
    horizontal = "left" if LEFT & set(words) else "right" if RIGHT & set(words) else ""
    direction = DIRECTIONS.get((vertical, horizontal)) or pick("direction", DIRECTIONS.values())
    return {"colour": colour, "shape": shape, "motion": "bouncing", "direction": direction}


def refine_shapes(prompt: str, seed: int = 0) -> Refined:
    """A free prompt -> one caption of the shapes world (one or two objects, a background, the
    gray bar if the prompt hides something behind one)."""
    rng, filled = random.Random(seed), {}
    background, rest = _background(prompt)
    if background is None:
        background = filled["background"] = rng.choice(list(BACKGROUNDS))
    # one object per part that names a shape or a colour ("a red ball and a blue box"); a part
    # that names neither belongs to the object before it ("a ball going up and to the right")
    parts: list[list[str]] = []
    for piece in re.split(r"\band\b|,|;|\bwith\b|\bplus\b", rest):
        words = _words(piece)
        if parts and not set(words) & (set(SHAPE_WORDS) | set(COLOUR_WORDS)):
            parts[-1] += words
        elif words:
            parts.append(words)
    parts = parts or [[]]
    objects = []
    for words in parts[:2]:
        obj = _object(words, rng, filled, len(objects) + 1 if len(parts) > 1 else 0)
        if objects and obj["colour"] == objects[0]["colour"]:  # the world never repeats a colour
            obj["colour"] = filled["colour 2"] = rng.choice([c for c in COLOURS if c != obj["colour"]])
        objects.append(obj)
    phrases = []
    for obj in objects:
        what = f"a {obj['colour']} {obj['shape']}"
        if obj["motion"] == "bouncing":
            phrases.append(f"{what} bouncing {obj['direction']}")
        else:
            phrases.append(f"{what} falls and bounces" if len(objects) == 1 else f"{what} falling and bouncing")
    caption = " and ".join(phrases) + f" on a {background} background"
    if BAR_WORDS & set(_words(prompt)):
        caption += ", partly hidden by a gray bar"
    return Refined(prompt, caption, filled)
