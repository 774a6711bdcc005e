"""Calibration and held-out data for the profiler, generated offline and deterministic per seed.

* prose: a small shipped corpus of plain paragraphs, shuffled and concatenated to the wanted length;
* key-value lookups ("needles"): records of invented names and codes, then a question whose answer
  sits far outside any local window;
* copies: a random word sequence, prose longer than a window, then the sequence's first words again
  (a model continues by copying: induction across the whole context).
"""

from __future__ import annotations

import dataclasses
import random

PARAGRAPHS = [
    "The river town woke slowly in winter. Boats stayed tied along the stone quay, and the baker opened "
    "his shutters an hour later than in summer. Children walked to school along the towpath, counting the "
    "herons that stood in the shallows, and the ferryman kept a kettle on a small stove in his hut.",
    "A compiler reads the source text once, splits it into tokens, and builds a tree that records how the "
    "pieces of the program fit together. Later passes walk that tree to check types, to decide where each "
    "value will live, and finally to emit instructions that the processor can run.",
    "In the old observatory the astronomers kept careful notebooks. Every clear night they wrote down the "
    "time, the temperature, the position of each comet they followed, and a short remark about the sky. "
    "Decades later those remarks let historians date storms that no newspaper had reported.",
    "Bread needs four things: flour, water, salt and time. The yeast feeds on the sugars in the flour and "
    "releases gas, which the gluten traps in thin elastic walls. A slow, cool rise gives the loaf more "
    "flavour than a quick warm one, and the crust darkens as the sugars caramelise in the oven.",
    "The committee met on Tuesday to review the budget for the new library. The architect presented two "
    "plans: one kept the reading room under the old glass dome, the other moved it to the quiet north wing. "
    "After a long discussion the members asked for a third plan that combined both ideas.",
    "Migrating birds find their way with several senses at once. They watch the position of the sun during "
    "the day and the rotation of the stars at night, they feel the magnetic field of the earth, and near "
    "the end of the journey they recognise rivers, coastlines and even the smell of familiar forests.",
    "When the network slowed down, the engineers first looked at the queues on each router. One link was "
    "dropping packets every few seconds because a cable had been bent too sharply behind a rack. Replacing "
    "the cable took ten minutes; finding it had taken most of the afternoon.",
    "The museum's new exhibition tells the story of ordinary kitchens over three centuries: iron pots over an "
    "open fire, the first enamel stoves, the arrival of refrigerators, and the small electric machines that "
    "changed how families cooked, stored and shared their food.",
    "Mathematics students often meet proof by induction early. One shows that a statement holds for the "
    "first case, then that whenever it holds for some case it also holds for the next one. Like a row of "
    "dominoes, the two steps together reach every case without checking each of them by hand.",
    "On the mountain path the weather changed within an hour. Clouds rolled up from the valley, the "
    "temperature fell, and fine rain turned the rocks slippery. The guide decided to turn back at the "
    "shelter, promising the group a second attempt on the summit the following morning.",
]

NAMES = ["Amber", "Basil", "Cedar", "Dahlia", "Ember", "Fennel", "Garnet", "Hazel", "Indigo", "Jasper",
         "Juniper", "Kestrel", "Linden", "Marigold", "Nutmeg", "Onyx", "Poplar", "Quill", "Rowan", "Saffron",
         "Thistle", "Umber", "Violet", "Willow", "Yarrow", "Zinnia"]


def prose(rng: random.Random, min_chars: int) -> str:
    """Shuffled paragraphs, repeated as needed, at least ``min_chars`` long."""
    out: list[str] = []
    while sum(map(len, out)) < min_chars:
        block = PARAGRAPHS[:]
        rng.shuffle(block)
        out += block
    return "\n\n".join(out)


WORDS = ("apple river stone cloud lantern copper meadow violin harbor pepper candle orbit velvet marble "
         "falcon saddle willow thunder garden pencil silver rocket tulip anchor blanket canyon dragon ember "
         "glacier hammer island jacket kettle ladder mirror needle ocean pillow quartz ribbon shadow tiger").split()


@dataclasses.dataclass(frozen=True)
class Probe:
    """A long-range prompt: ``needle`` (a span of ``text``) holds what ``answer`` needs."""

    text: str
    answer: str
    needle: str


def lookup(rng: random.Random, n_records: int, filler_chars: int) -> Probe:
    names = rng.sample(NAMES, min(n_records, len(NAMES)))
    codes = [str(rng.randrange(1000, 10000)) for _ in names]
    target = rng.randrange(len(names))
    lines = [f"Record: the code for {n} is {c}." for n, c in zip(names, codes)]
    filler = prose(rng, filler_chars)
    body = "\n".join(lines[:target + 1]) + "\n\n" + filler + "\n\n" + "\n".join(lines[target + 1:])
    question = f"\n\nQuestion: what is the code for {names[target]}? Answer: the code for {names[target]} is"
    return Probe(text=body + question, answer=codes[target], needle=lines[target])


def copy(rng: random.Random, n_words: int, filler_chars: int, cue_words: int = 6) -> Probe:
    """``sequence: w1 ... wn.`` + prose + ``sequence again: w1 ... w_cue``; answer: the rest."""
    seq = [rng.choice(WORDS) for _ in range(n_words)]
    first = "sequence: " + " ".join(seq) + "."
    cue = "\n\nThe same sequence again: " + " ".join(seq[:cue_words])
    return Probe(text=first + "\n\n" + prose(rng, filler_chars) + cue, answer=" ".join(seq[cue_words:]), needle=first)
