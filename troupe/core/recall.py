"""Ranking memories for recall: relevance (full-text and vector, fused) plus recency and importance,
as Generative Agents score them. Plain logic; the store brings the candidates and their scores."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache
from typing import Any

# relevance: how much each search counts when both ran (bench/memory_bench.py); full text mostly confirms
# the best memory for the second hop (FOLLOW_UP_ANCHOR)
WEIGHTS = {"text": 0.05, "vector": 0.95}
RECENCY_WEIGHT = 0.08
RECENCY_HALF_LIFE_DAYS = 30.0
# Extraction rates each fact (a daughter's name or a deadline high, a passing remark low); the weight
# keeps a remark from outranking a durable fact that is about as near the question.
IMPORTANCE_WEIGHT = 0.15
MIN_SIMILARITY = 0.1  # a vector neighbour below this says nothing about the question
# A question about a person most often wants a durable fact about them, not the summary of a call that
# mentioned it in passing: a profile fact is lifted a little over an episode.
LAYER_PRIOR = {"profile": 0.15}
# The second hop: a question that needs two facts ("where am I for Thanksgiving?": at my mother's; my
# mother lives in Lisbon) finds the second near the first. Memories near the best one are lifted by how
# far their cosine to it passes FOLLOW_UP_FROM, the cosine taken about the mean of the memories searched:
# every memory of a person shares "The caller ..." and its like, which put any two facts at 0.3-0.6
# apart and hid the one that shares the best memory's subject. Memories that share the best memory's
# rarer words (its "business partner", "accountant") are lifted by FOLLOW_UP_TEXT_WEIGHT, scaled to the
# best of them. On bench/memory_bench.py's set the centred cosine and the shared words take questions
# that need two facts from 0.55 to about 0.8. A hop from the wrong memory lifted its neighbours over the
# answer to a one-fact question: it goes only from a best memory that the full-text search also has among
# its first FOLLOW_UP_ANCHOR (hybrid recall@5 0.85 to 0.87-0.88 on both stores).
FOLLOW_UP_WEIGHT = 0.6
FOLLOW_UP_ANCHOR = 3
FOLLOW_UP_FROM = 0.1
FOLLOW_UP_TEXT_WEIGHT = 0.2
FOLLOW_UPS = 5  # neighbours of the best memory brought in as candidates, found by neither search or not
FOLLOW_UP_WORDS = 10  # memories brought in by the best memory's words
REPEATED_SHARE = 0.6  # of the best memory's words: a memory holding them says it again (said_again)
CENTRE_FROM = 8  # fewer memories than this are not centred (their mean is mostly themselves)

_WORD = re.compile(r"[a-z0-9]+")
# words too common to search for; the rest go into the full-text query, OR-ed
STOPWORDS = frozenset(
    "a an and are as at be but by can could did do does for from had has have he her hers him his how i if in "
    "is it its me my mine of on or our ours she so than that the their them then there these they this to "
    "told us was we were what when where which who whom why will with would you your yours about again "
    "remember recall tell said say know "
    # extraction names every person "the caller" (troupe/core/extraction.py): the word is in nearly
    # every memory of a person, and PostgreSQL's ts_rank_cd, unlike bm25, does not weigh it down
    "caller".split()
)
_SENTENCE = re.compile(r"[^.!?]+[.!?]*")
_CALLERS = re.compile(r"\b[Tt]he caller's\b")
_CALLER_OBJECT = re.compile(  # "the caller" after these is "me"; elsewhere "I"
    r"\b(to|for|with|from|about|at|on|by|of|told|tell|send|sent|give|gave|call|called|email|emailed|remind|"
    r"reminded|help|helped|update|updated|ring|rang|text|texted|ping|pinged)\s+the caller\b(?!')",
    re.IGNORECASE,
)
_CALLER = re.compile(r"\b[Tt]he caller\b")
_I_IS = re.compile(r"\bI (is|has|does|doesn't|isn't|hasn't)\b")
_FIRST_PERSON = {"is": "am", "has": "have", "does": "do", "doesn't": "don't", "isn't": "am not", "hasn't": "haven't"}


def search_words(text: str, limit: int = 16) -> list[str]:
    """The words of `text` worth a full-text search, in order, each once."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        if word not in STOPWORDS and len(word) > 1:
            seen.setdefault(word, None)
    return list(seen)[:limit]


def question_of(text: str) -> str:
    """What recall searches for in the caller's words: their questions, when they asked any ("Hi again,
    sorry, silly question. What's my dog called? My niece asked." searches "What's my dog called?"),
    else all of them. The greeting and the aside around a question pull in memories of their own."""
    asked = [part.strip() for part in _SENTENCE.findall(text) if part.strip().endswith("?")]
    return " ".join(asked) if asked else text


def shared_words(best: str, others: dict[int, str]) -> dict[int, float]:
    """How much each of `others` (text by id) shares the words of `best`: a shared word counts by how
    rare it is among them (log(1 + n / memories with it)), so "business partner" counts and "asked" does
    not. The same on either store, and it needs no second full-text query."""
    wanted = _searched_stems(best)
    bags = {i: wanted & _stems(content) for i, content in others.items()}
    holding: dict[str, int] = {}
    for bag in bags.values():
        for word in bag:
            holding[word] = holding.get(word, 0) + 1
    n = len(others)
    return {i: sum(math.log(1.0 + n / holding[w]) for w in bag) for i, bag in bags.items() if bag}


def said_again(best: str, others: dict[int, str]) -> set[int]:
    """Those of `others` that say `best` again: they hold REPEATED_SHARE of its words or more (a call's
    summary that repeats a fact, "they also said their business partner is on leave from June"). What
    completes the best memory shares a word or two of it ("the caller's business partner is Helen
    Brooks"), not most of them."""
    wanted = _searched_stems(best)
    if not wanted:
        return set()
    held = {i: wanted & _stems(content) for i, content in others.items()}
    return {i for i, words in held.items() if len(words) >= REPEATED_SHARE * len(wanted)}


@lru_cache(maxsize=1_000)
def _searched_stems(text: str) -> frozenset[str]:
    """The stems of the words of `text` a search would use (the best memory's, asked of twice a recall)."""
    return frozenset(_stem(word) for word in search_words(text, limit=64))


@lru_cache(maxsize=20_000)
def _stems(text: str) -> frozenset[str]:
    """The stems of the words of `text` (kept: a caller's memories are searched again every turn)."""
    return frozenset(_stem(word) for word in _WORD.findall(text.lower()) if len(word) > 1)


def _stem(word: str) -> str:
    """A word's stem, roughly: plurals, -ing and -ed off, and a final e (boxes, partners, spending, raised
    and raise meet their box, partner, spend, rais); enough to match a word told twice, not a stemmer."""
    if len(word) > 4 and word.endswith(("ches", "shes", "xes", "sses")):
        word = word[:-2]
    elif len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    if len(word) > 5 and word.endswith("ing"):
        word = word[:-3]
    elif len(word) > 4 and word.endswith("ed"):
        word = word[:-2]
    if len(word) > 3 and word.endswith("e"):
        word = word[:-1]
    return word


def in_callers_words(memory: str, persona: str) -> str:
    """A memory of a caller as they would say it, for its embedding: extraction names them "the caller"
    and the persona by name ("Tony promised to send the caller the NDA"), and they ask in the first
    person, to the persona ("what did you say you'd send me?"). Embedded as "you promised to send me
    the NDA", a fact is nearer the question that wants it."""
    text = _CALLERS.sub("my", memory)  # the model is uncased: "my" starts a sentence as well as "My"
    text = _CALLER_OBJECT.sub(lambda m: m.group(1) + " me", text)
    text = _CALLER.sub("I", text)
    text = _I_IS.sub(lambda m: "I " + _FIRST_PERSON[m.group(1).lower()], text)
    if persona:
        text = re.sub(rf"\b{re.escape(persona)}'s\b", "your", text)
        text = re.sub(rf"\b{re.escape(persona)}\b", "you", text)
    return text


@dataclass(frozen=True)
class Candidate:
    id: int
    created_at: datetime
    importance: float  # 0..1
    text_score: float = 0.0  # higher is better, any scale (bm25 negated, ts_rank)
    similarity: float = 0.0  # cosine, -1..1
    layer: str = "profile"
    follow_up: float = 0.0  # centred cosine to the best memory of the first ranking (the second hop)
    follow_up_text: float = 0.0  # full-text score against the best memory's words, 0..1 (the second hop)


def rank(candidates: Iterable[Candidate], now: datetime, *, used_text: bool, used_vector: bool) -> list[int]:
    """Candidate ids, best first: each search's scores scaled to 0..1 over the candidates, weighted,
    then a little for recency (halving every 30 days) and importance."""
    pool = list(candidates)
    if not pool:
        return []
    top_text = max((c.text_score for c in pool), default=0.0) or 1.0
    weights = _weights(used_text, used_vector)
    scored: list[tuple[float, int]] = []
    for c in pool:
        similarity = max(0.0, c.similarity - MIN_SIMILARITY) / (1.0 - MIN_SIMILARITY)
        similarity += (
            FOLLOW_UP_WEIGHT * max(0.0, c.follow_up - FOLLOW_UP_FROM) + FOLLOW_UP_TEXT_WEIGHT * c.follow_up_text
        )
        relevance = weights["text"] * max(0.0, c.text_score) / top_text + weights["vector"] * similarity
        age_days = max(0.0, (now - c.created_at).total_seconds() / 86_400)
        recency = math.pow(0.5, age_days / RECENCY_HALF_LIFE_DAYS)
        prior = LAYER_PRIOR.get(c.layer, 0.0)
        score = relevance + RECENCY_WEIGHT * recency + IMPORTANCE_WEIGHT * c.importance + prior
        scored.append((score, c.id))
    scored.sort(key=lambda item: (-item[0], -item[1]))  # ties: the newer memory
    return [memory_id for _, memory_id in scored]


def hop_from(order: Sequence[int], text_hits: dict[int, float]) -> int | None:
    """The memory the second hop goes from: the best of the first ranking, when the full-text search also
    has it among its first FOLLOW_UP_ANCHOR. A hop from a wrong best memory lifts its neighbours over the
    answer; two searches that agree on it are seldom wrong."""
    if not order:
        return None
    firsts = sorted(text_hits, key=lambda i: -text_hits[i])[:FOLLOW_UP_ANCHOR]
    return order[0] if order[0] in firsts else None


def follow_up(
    first: Sequence[int], candidates: Iterable[Candidate], near_best: dict[int, float], now: datetime, *,
    used_text: bool, used_vector: bool, words_of_best: dict[int, float] | None = None,
) -> list[int]:  # fmt: skip
    """The second hop: the best memory of the first ranking stays first, and the rest are ranked again
    with what lies near it (`near_best`: centred cosine to it, by id) and what shares its words
    (`words_of_best`: full-text scores, any scale) lifted."""
    if not first:
        return []
    best = first[0]
    shared = {i: s for i, s in (words_of_best or {}).items() if i != best and s > 0}
    top = max(shared.values(), default=1.0)
    rest = [
        replace(c, follow_up=near_best.get(c.id, 0.0), follow_up_text=shared.get(c.id, 0.0) / top)
        for c in candidates
        if c.id != best
    ]
    return [best, *rank(rest, now, used_text=used_text, used_vector=used_vector)]


def _weights(used_text: bool, used_vector: bool) -> dict[str, float]:
    if used_text and used_vector:
        return WEIGHTS
    return {"text": 1.0 if used_text else 0.0, "vector": 1.0 if used_vector else 0.0}


def cosine_top(
    query: Any, ids: Sequence[int], matrix: Any, limit: int, also: dict[int, Any] | None = None
) -> list[tuple[int, float]]:
    """The `limit` rows of `matrix` (unit vectors, one per id) nearest `query`, with their cosine; an id
    in `also` (more unit vectors by id, one per row) takes the best cosine of its own and those."""
    import numpy as np

    if not len(ids):
        return []
    query = np.asarray(query, dtype=np.float32)
    similarities = np.asarray(matrix) @ query
    if also:
        row_of = {memory_id: k for k, memory_id in enumerate(ids)}
        for memory_id, vectors in also.items():
            if (k := row_of.get(memory_id)) is not None:
                similarities[k] = max(float(similarities[k]), float(np.max(np.asarray(vectors) @ query)))
    order = np.argsort(-similarities)[:limit]
    return [(int(ids[i]), float(similarities[i])) for i in order]


def centred_top(row: int, ids: Sequence[int], matrix: Any, limit: int) -> list[tuple[int, float]]:
    """The `limit` rows of `matrix` nearest its row `row`, by their cosine about the other rows' mean (what
    all of them share taken out), with it; plain cosines under CENTRE_FROM rows. The centred matrix is never
    made: (m - mean)·(b - mean) and |m - mean|² come from products with the unit rows as they are."""
    import numpy as np

    rows = np.asarray(matrix)
    if len(ids) < CENTRE_FROM:
        return cosine_top(rows[row], ids, rows, limit)
    mean = (rows.sum(axis=0) - rows[row]) / (len(ids) - 1)  # of the others: among a few, the row would weigh in it
    towards = rows[row] - mean
    dots = rows @ towards - float(mean @ towards)
    lengths = np.sqrt(np.maximum(1.0 - 2.0 * (rows @ mean) + float(mean @ mean), 1e-12))
    similarities = dots / (lengths * max(float(np.linalg.norm(towards)), 1e-6))
    order = np.argsort(-similarities)[:limit]
    return [(int(ids[i]), float(similarities[i])) for i in order]
