"""Sessions as plain logic: the directory's LRU order, idle list, lock table and pool sizing; the agent
loop's record of a turn that was cut off; what the door sends `prepare`."""

from __future__ import annotations

import asyncio

from tests.unit.test_agent import Replay
from troupe.actors.agent import AgentLoop
from troupe.actors.session import for_session
from troupe.core.chat import ChatMessage
from troupe.core.sessions import QUIET_S, SessionDirectory, SessionSlot


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def slot(caller: str, at: float, lent: bool = False) -> SessionSlot:
    return SessionSlot(caller, "Tony", f"p-{caller}", f"s-{caller}", at, lent=lent)


def test_the_least_recently_used_session_makes_room_first() -> None:
    clock = Clock()
    directory = SessionDirectory(max_sessions=3, pool_min=2, clock=clock)
    for name in ("ann", "bob", "cat"):
        directory.add((name, "tony"), slot(name, clock.now))
    assert directory.full
    directory.touch(("ann", "tony"))  # ann spoke last
    assert [s.caller_id for s in directory.eviction_order()] == ["bob", "cat", "ann"]
    clock.now += 200
    directory.touch(("bob", "tony"))
    directory.touch(("cat", "tony"))
    assert [s.caller_id for s in directory.idle(120)] == ["ann"]


def test_an_actor_lent_for_one_turn_sessions_makes_room_before_any_conversation() -> None:
    """A lent actor holds no conversation between its turns: at the cap it goes first, it is let go
    when unused like an idle session, and it is not counted as a live conversation."""
    clock = Clock()
    directory = SessionDirectory(max_sessions=3, pool_min=2, clock=clock)
    directory.add(("ann", "tony"), slot("ann", clock.now))
    lent = slot("one-turn@door#p-9", clock.now, lent=True)
    directory.add(lent.key, lent)
    directory.add(("bob", "tony"), slot("bob", clock.now))
    assert [s.caller_id for s in directory.eviction_order()] == ["one-turn@door#p-9", "ann", "bob"]
    assert [s.caller_id for s in directory.conversations()] == ["ann", "bob"]
    clock.now += 200
    directory.touch(("ann", "tony"))
    directory.touch(("bob", "tony"))
    assert [s.caller_id for s in directory.idle(120)] == ["one-turn@door#p-9"]


def test_the_lock_table_does_not_only_grow() -> None:
    directory = SessionDirectory(max_sessions=3, pool_min=1)
    for i in range(100):
        key = (f"caller-{i}", "tony")
        directory.lock(key)
        directory.settle(key)  # resolved without a session (an error, say)
    assert directory._locks == {}
    key = ("kept", "tony")
    directory.lock(key)
    directory.add(key, slot("kept", 0))
    directory.settle(key)
    assert key in directory._locks  # a live session keeps its lock until it is removed
    directory.remove(key)
    assert directory._locks == {}


def test_removing_a_slot_leaves_a_newer_one_under_the_same_key() -> None:
    directory = SessionDirectory(max_sessions=3, pool_min=1)
    old, new = slot("ann", 0), slot("ann", 1)
    directory.add(("ann", "tony"), old)
    directory.add(("ann", "tony"), new)
    assert directory.remove(("ann", "tony"), old) is None
    assert directory.get(("ann", "tony")) is new


def test_the_actors_follow_the_peak_of_demand_and_shrink_back_when_quiet() -> None:
    clock = Clock()
    directory = SessionDirectory(max_sessions=20, pool_min=2, clock=clock)
    assert directory.actors_target() == 2 and directory.pool_target(free=0) == 2
    for i in range(16):  # a burst of 16 callers at once
        directory.add((f"c{i}", "tony"), slot(f"c{i}", clock.now))
    assert directory.actors_target() == 18 and directory.pool_target(free=0) == 2  # the floor stays free
    for i in range(16):
        directory.remove((f"c{i}", "tony"))
    # between bursts the actors are kept for the next one: 16 came back to the pool, none too many
    assert directory.pool_target(free=16) == 2 and directory.pool_surplus(free=18) == 0
    clock.now += QUIET_S + 1
    assert directory.actors_target() == 2 and directory.pool_surplus(free=18) == 16  # quiet: back to the floor
    for i in range(25):
        directory.add((f"d{i}", "tony"), slot(f"d{i}", clock.now))
    assert directory.actors_target() == 22  # never past the cap and the floor


def test_a_turn_cut_off_mid_reply_keeps_the_words_heard_and_an_estimate_of_the_cost() -> None:
    loop = AgentLoop(speaker="Tony", model=Replay("one two three four five six"), model_name="gpt-4o-mini")

    async def hang_up() -> None:
        events = loop.run([ChatMessage(role="system", content="You are Tony. " * 40),
                           ChatMessage(role="user", content="hi")]).__aiter__()  # fmt: skip
        for _ in range(3):
            await anext(events)
        await events.aclose()  # the caller hangs up three words in

    asyncio.run(hang_up())
    cut = loop.interrupted()
    assert [m.content for m in cut.new_messages] == ["one two three "]
    assert cut.finish_reason == "interrupted"
    assert cut.delta.llm_calls == 1 and cut.delta.input_tokens > 100 and 3 <= cut.delta.output_tokens <= 4
    assert cut.delta.tokens_estimated and cut.delta.cost_usd > 0


def test_a_finished_turn_is_not_interrupted() -> None:
    loop = AgentLoop(speaker="Tony", model=Replay("all done"), model_name="gpt-4o-mini")

    async def finish() -> None:
        async for _ in loop.run([ChatMessage(role="user", content="hi")]):
            pass

    asyncio.run(finish())
    assert loop.interrupted().new_messages == loop.outcome.new_messages
    assert loop.interrupted().delta == loop.outcome.delta


def test_prepare_gets_only_the_new_input_unless_the_session_is_one_turn() -> None:
    history = (
        ChatMessage(role="system", content="be brief"),
        ChatMessage(role="user", content="hi"),
        ChatMessage(role="assistant", content="hello"),
        ChatMessage(role="user", content="how are you?"),
    )
    assert [m.content for m in for_session(history, one_turn=False)] == ["be brief", "how are you?"]
    assert for_session(history, one_turn=True) == history
