"""The plain logic of memory: what an extraction reply yields, how recall ranks, what a core block holds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from troupe.core import extraction
from troupe.core.recall import (
    Candidate,
    centred_top,
    cosine_top,
    follow_up,
    hop_from,
    in_callers_words,
    question_of,
    rank,
    said_again,
    search_words,
    shared_words,
)
from troupe.life.consolidation import core_block
from troupe.store import MemoryRecord

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def test_a_json_reply_gives_the_summary_and_its_valid_operations() -> None:
    reply = """Sure! {"summary": "Ana wants a refund.", "facts": [
        {"op": "add", "fact": "Ana's order is 42.", "importance": 8},
        {"op": "update", "id": 3, "fact": "Ana now lives in Porto."},
        {"op": "update", "id": 99, "fact": "an id the brief never showed"},
        {"op": "delete", "id": "4"},
        {"op": "add", "fact": ""}, "not an object"]}"""
    found = extraction.parse(reply, known_ids={3, 4})
    assert found.summary == "Ana wants a refund."
    assert found.operations == (
        extraction.Operation("add", fact="Ana's order is 42.", importance=0.8),
        extraction.Operation("update", fact="Ana now lives in Porto.", id=3),
        extraction.Operation("delete", id=4),
    )


def test_a_reply_that_is_not_json_is_the_summary_alone() -> None:
    found = extraction.parse("Ana called about a refund for order 42.", known_ids=set())
    assert found == extraction.Extraction(summary="Ana called about a refund for order 42.")
    assert extraction.parse('{"summary": "half', set()).operations == ()


def test_the_brief_keeps_to_its_budget_and_shows_what_is_known() -> None:
    known = [extraction.Known(i, f"Fact number {i} about the caller, " + "x" * 200, "2026-11-01") for i in range(100)]
    text = extraction.brief("+14155550100", "Tony", known, "Caller: hello\n" * 5000)
    assert '"id": 0,' in text and '"id": 99,' not in text  # the newest known facts, within their share
    assert len(text) < (extraction.KNOWN_FACTS_TOKENS + extraction.TRANSCRIPT_TOKENS) * 4 + 2000


def test_relevance_outweighs_recency_and_importance_breaks_ties() -> None:
    old_relevant = Candidate(1, NOW - timedelta(days=200), 0.5, text_score=3.0, similarity=0.7)
    new_irrelevant = Candidate(2, NOW, 1.0, text_score=0.0, similarity=0.25)
    assert rank([new_irrelevant, old_relevant], NOW, used_text=True, used_vector=True) == [1, 2]
    a = Candidate(3, NOW, 0.2, similarity=0.6)
    b = Candidate(4, NOW, 0.9, similarity=0.6)
    assert rank([a, b], NOW, used_text=False, used_vector=True) == [4, 3]


def test_a_fact_about_the_caller_comes_before_a_call_summary_that_is_as_near() -> None:
    summary = Candidate(1, NOW, 0.5, similarity=0.6, layer="episode")
    fact = Candidate(2, NOW - timedelta(days=1), 0.5, similarity=0.55, layer="profile")
    assert rank([summary, fact], NOW, used_text=False, used_vector=True) == [2, 1]
    far_fact = Candidate(3, NOW, 0.5, similarity=0.2, layer="profile")
    assert rank([summary, far_fact], NOW, used_text=False, used_vector=True) == [1, 3]  # relevance still rules


def test_the_second_hop_lifts_what_lies_near_the_best_memory_and_keeps_the_best_first() -> None:
    at_mothers = Candidate(1, NOW, 0.5, similarity=0.7)  # "spending Thanksgiving at their mother's"
    lisbon = Candidate(2, NOW, 0.5, similarity=0.15)  # "their mother lives in Lisbon": far from the question
    noise = Candidate(3, NOW, 0.5, similarity=0.25)
    first = rank([at_mothers, lisbon, noise], NOW, used_text=False, used_vector=True)
    assert first == [1, 3, 2]
    near_best = {1: 1.0, 2: 0.65, 3: 0.1}
    assert follow_up(first, [at_mothers, lisbon, noise], near_best, NOW, used_text=False, used_vector=True) == [1, 2, 3]
    assert follow_up([], [], {}, NOW, used_text=False, used_vector=True) == []


def test_the_second_hop_lifts_what_shares_the_best_memorys_rarer_words() -> None:
    leave = Candidate(1, NOW, 0.5, similarity=0.6)  # "their business partner starts parental leave in May"
    named = Candidate(2, NOW, 0.5, similarity=0.1)  # "the caller's business partner is Helen Brooks"
    noise = Candidate(3, NOW, 0.5, similarity=0.2)
    first = rank([leave, named, noise], NOW, used_text=False, used_vector=True)
    assert first == [1, 3, 2]
    shared = {2: 4.0, 3: 0.5}
    assert follow_up(
        first, [leave, named, noise], {}, NOW, used_text=False, used_vector=True, words_of_best=shared
    ) == [1, 2, 3]


def test_shared_words_count_a_rare_word_over_a_common_one() -> None:
    others = {
        2: "The caller's business partner is Helen Brooks.",
        3: "The caller asked for the wifi details for visitors in May.",
        4: "The caller asked for a refund.",
        5: "The caller asked about opening hours.",
    }
    scores = shared_words("The caller's business partner starts parental leave in May; the caller asked.", others)
    assert max(scores, key=lambda i: scores[i]) == 2
    assert scores[2] > scores[3] > scores[4]  # "may" and "asked" against "asked" alone
    assert shared_words("Mailers and boxes", {1: "They buy a mailer and a box."}) == shared_words(
        "Mailers and boxes", {1: "They buy mailers and boxes."}
    )  # a plural meets its singular


def test_the_centred_hop_sees_past_what_every_memory_shares() -> None:
    common = np.array([1.0, 0.0, 0.0, 0.0])  # "The caller ...", in every memory alike
    vectors = [common + np.array(v) for v in ([0, 1, 0, 0], [0, 0.8, 0.6, 0], [0, 0, 1, 0], [0, 0, 0, 1])]
    vectors += [common + np.array([0, 0, 0.5, 0.5])] * 6
    matrix = np.stack([v / np.linalg.norm(v) for v in vectors])
    ids = list(range(10, 20))
    centred = dict(centred_top(0, ids, matrix, 10))
    assert max((i for i in ids if i != 10), key=lambda i: centred[i]) == 11
    assert centred[11] - centred[12] > 0.5  # plain cosines: 0.9 and 0.5, and none of the rest below 0.5
    assert dict(centred_top(0, ids[:3], matrix[:3], 3)) == dict(cosine_top(matrix[0], ids[:3], matrix[:3], 3))


def test_a_correction_is_as_near_as_what_it_corrected() -> None:
    matrix = np.eye(3, dtype=np.float32)
    query = np.array([0.0, 0.0, 1.0], dtype=np.float32)
    assert cosine_top(query, [1, 2, 3], matrix, 1) == [(3, 1.0)]
    also = {1: np.array([[0.0, 0.0, 1.0]]), 99: np.array([[0.0, 0.0, 1.0]])}  # 1 corrects a nearer one; 99 is gone
    assert [i for i, _ in cosine_top(query, [1, 2, 3], matrix, 2, also=also)] == [1, 3]


def test_recall_searches_for_the_question_in_the_callers_words() -> None:
    assert (
        question_of("Hi again. Sorry, silly question. What's my dog called? My niece asked.") == "What's my dog called?"
    )
    assert question_of("Is it Tuesday? And when is the deadline?") == "Is it Tuesday? And when is the deadline?"
    assert question_of("I'm at my mother's for Thanksgiving.") == "I'm at my mother's for Thanksgiving."


def test_search_words_drop_the_words_every_question_has() -> None:
    assert search_words("What was the name of my daughter, do you remember?") == ["name", "daughter"]
    assert search_words("The caller's daughter") == ["daughter"]  # every memory of a person names them so


def test_a_core_block_holds_the_most_important_facts_that_fit() -> None:
    def fact(n: int, importance: float, words: int = 5) -> MemoryRecord:
        return MemoryRecord(
            id=n, persona="Tony", subject="+1", kind="fact", content=f"fact {n} " + "word " * words, source="",
            created_at=NOW - timedelta(days=n), layer="profile", channel="voice", importance=importance,
            superseded_by=None, superseded_at=None,
        )  # fmt: skip

    block = core_block([fact(1, 0.2), fact(2, 0.9), fact(3, 0.5)] + [fact(n, 0.1, words=60) for n in range(4, 40)])
    lines = block.splitlines()
    assert lines[:3] == ["- fact 2 " + "word " * 4 + "word", "- fact 3 " + "word " * 4 + "word",
                         "- fact 1 " + "word " * 4 + "word"]  # fmt: skip
    assert len(block) <= 1200


def test_a_memory_of_a_caller_is_embedded_as_the_caller_would_say_it() -> None:
    said = in_callers_words(
        "Tony promised to send the caller the NDA. The caller's son plays. The caller is allergic to nuts.", "Tony"
    )
    assert said == "you promised to send me the NDA. my son plays. I am allergic to nuts."
    assert (
        in_callers_words("In the chat, the caller asked for Tony's notes.", "Tony")
        == "In the chat, I asked for your notes."
    )
    assert in_callers_words("Dana runs the payments team.", "Tony") == "Dana runs the payments team."


def test_the_second_hop_goes_only_from_a_best_memory_both_searches_agree_on() -> None:
    assert hop_from([7, 8, 9], {9: 5.0, 7: 3.0, 1: 2.0}) == 7  # full text has it second
    assert hop_from([7, 8, 9], {9: 5.0, 1: 4.0, 2: 3.0, 7: 1.0}) is None  # fourth: the vectors alone chose it
    assert hop_from([7], {}) is None
    assert hop_from([], {7: 1.0}) is None


def test_a_summary_that_says_the_best_memory_again_is_told_apart_from_what_completes_it() -> None:
    best = "The caller's business partner starts parental leave in June."
    others = {
        2: "In the web chat, the caller wanted a colleague added. They also said their business partner is on"
        " leave from June.",
        3: "The caller's business partner is Helen Brooks.",
        4: "The caller is spending Thanksgiving at their mother's.",
    }
    assert said_again(best, others) == {2}
    thanksgiving = "The caller is spending Thanksgiving at their mother's this year."
    summary = "They also said they will spend Thanksgiving with their mother this year."  # spend, spending: one word
    assert said_again(thanksgiving, {5: summary, 6: "The caller's mom retired to Lisbon."}) == {5}
