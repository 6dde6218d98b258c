"""Ranking memories for recall: relevance (full-text and vector, fused) plus recency and importance,
as Generative Agents score them. Plain logic; the store brings the candidates and their scores."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

WEIGHTS = {"text": 0.1, "vector": 0.9}  # relevance: how much each search counts when both ran (bench/memory_bench.py)
RECENCY_WEIGHT = 0.08
RECENCY_HALF_LIFE_DAYS = 30.0
IMPORTANCE_WEIGHT = 0.08
MIN_SIMILARITY = 0.1  # a vector neighbour below this says nothing about the question
# A question about a person most often wants a durable fact about them, not the summary of a call that
# mentioned it in passing: a profile fact is lifted a little over an episode.
LAYER_PRIOR = {"profile": 0.15}
# The second hop: a question that needs two facts ("where am I for Thanksgiving?": at my mother's; my
# mother lives in Lisbon) finds the second near the first. Memories near the best one are lifted by how
# far their cosine to it passes FOLLOW_UP_FROM. On bench/memory_bench.py's set these three settings take
# hybrid recall@5 from 0.63 to 0.74 (questions that need two facts: 0.28 to 0.55), with the same
# words kept twice taking one place.
FOLLOW_UP_WEIGHT = 0.6
FOLLOW_UP_FROM = 0.3
FOLLOW_UPS = 5  # neighbours of the best memory brought in as candidates, found by neither search or not

_WORD = re.compile(r"[a-z0-9]+")
# words too common to search for; the rest go into the full-text query, OR-ed
STOPWORDS = frozenset(
    "a an and are as at be but by can could did do does for from had has have he her hers him his how i if in "
    "is it its me my mine of on or our ours she so than that the their them then there these they this to "
    "told us was we were what when where which who whom why will with would you your yours about again "
    "remember recall tell said say know".split()
)


def search_words(text: str, limit: int = 16) -> list[str]:
    """The words of `text` worth a full-text search, in order, each once."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        if word not in STOPWORDS and len(word) > 1:
            seen.setdefault(word, None)
    return list(seen)[:limit]


@dataclass(frozen=True)
class Candidate:
    id: int
    created_at: datetime
    importance: float  # 0..1
    text_score: float = 0.0  # higher is better, any scale (bm25 negated, ts_rank)
    similarity: float = 0.0  # cosine, -1..1
    layer: str = "profile"
    follow_up: float = 0.0  # cosine to the best memory of the first ranking (the second hop)


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
        similarity += FOLLOW_UP_WEIGHT * max(0.0, c.follow_up - FOLLOW_UP_FROM)
        relevance = weights["text"] * max(0.0, c.text_score) / top_text + weights["vector"] * similarity
        age_days = max(0.0, (now - c.created_at).total_seconds() / 86_400)
        recency = math.pow(0.5, age_days / RECENCY_HALF_LIFE_DAYS)
        prior = LAYER_PRIOR.get(c.layer, 0.0)
        score = relevance + RECENCY_WEIGHT * recency + IMPORTANCE_WEIGHT * c.importance + prior
        scored.append((score, c.id))
    scored.sort(key=lambda item: (-item[0], -item[1]))  # ties: the newer memory
    return [memory_id for _, memory_id in scored]


def follow_up(
    first: Sequence[int], candidates: Iterable[Candidate], near_best: dict[int, float], now: datetime, *,
    used_text: bool, used_vector: bool,
) -> list[int]:  # fmt: skip
    """The second hop: the best memory of the first ranking stays first, and the rest are ranked again
    with what lies near it (`near_best`: cosine to it, by id) lifted."""
    if not first:
        return []
    best = first[0]
    rest = [replace(c, follow_up=near_best.get(c.id, 0.0)) for c in candidates if c.id != best]
    return [best, *rank(rest, now, used_text=used_text, used_vector=used_vector)]


def _weights(used_text: bool, used_vector: bool) -> dict[str, float]:
    if used_text and used_vector:
        return WEIGHTS
    return {"text": 1.0 if used_text else 0.0, "vector": 1.0 if used_vector else 0.0}


def cosine_top(query: Any, ids: Sequence[int], matrix: Any, limit: int) -> list[tuple[int, float]]:
    """The `limit` rows of `matrix` (unit vectors, one per id) nearest `query`, with their cosine."""
    import numpy as np

    if not len(ids):
        return []
    similarities = np.asarray(matrix) @ np.asarray(query, dtype=np.float32)
    order = np.argsort(-similarities)[:limit]
    return [(int(ids[i]), float(similarities[i])) for i in order]
