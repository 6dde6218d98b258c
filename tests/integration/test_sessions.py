"""Sessions that hold real traffic, on a real Ray with real HTTP on loopback: callers with no identity are
one-turn sessions, a reply cut off is kept and paid for, a session that dies mid-turn keeps its turn, a
caller who calls straight back is answered, and an orchestrator that dies comes back from the store."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import ray
from ray.exceptions import ActorUnavailableError, RayActorError

from tests.integration.conftest import make_settings, write_script
from tests.integration.test_runtime import processes, say, text_of, wait_for
from troupe.actors.orchestrator import ORCHESTRATOR_NAME
from troupe.app import Gateway, create_app
from troupe.core.caller import anonymous_caller
from troupe.core.chat import ChatMessage
from troupe.core.messages import DoorName, TurnRequest
from troupe.store import Store
from troupe.testing.fake_openai import Behaviour, FakeOpenAIServer
from troupe.testing.loopback import serving

SLOW = {"content": " ".join(f"word{i}" for i in range(40)), "chunk_delay_s": 0.05}


@pytest.fixture
def runtime(start_runtime: Any, tmp_path: Path) -> Any:
    script = write_script(
        tmp_path / "script.json",
        [{"when": "slow", "reply": SLOW}, {"when": "", "reply": "Hello from the fake model."}],
    )
    return start_runtime(make_settings(tmp_path, fake_script=script, max_sessions=2, rate_limit_per_minute=0))


def door_for(runtime: Any) -> Any:
    return create_app(Gateway(runtime.settings, runtime.catalog, runtime.orchestrator, runtime.client()))


@pytest.fixture
def door(runtime: Any) -> Iterator[str]:
    with serving(door_for(runtime)) as url:
        yield url


async def open_store(runtime: Any) -> Store:
    return await Store.open(runtime.settings.resolved_database_url, migrate=False)


def test_callers_with_no_identity_never_exhaust_capacity(runtime: Any, door: str) -> None:
    """A plain OpenAI SDK client sends no caller id: each request is a one-turn session of its own,
    released as soon as its turn is stored, so many of them never fill a cap of 2."""
    client = openai.OpenAI(base_url=f"{door}/v1", api_key="unused", max_retries=0)
    history = [{"role": "user", "content": "Hello Tony"}]
    for i in range(12):
        reply = client.chat.completions.create(model="tony", messages=history)
        assert reply.choices[0].message.content == "Hello from the fake model."
        history += [
            {"role": "assistant", "content": "Hello from the fake model."},
            {"role": "user", "content": f"#{i}"},
        ]

    async def released() -> bool:
        sessions = await runtime.orchestrator.list_sessions.remote()
        return all(not s.caller_id.startswith("anon-") for s in sessions)

    async def check() -> None:
        await wait_for(released)  # each hands its actor back right after its turn is stored
        live = [p for p in await processes(runtime, kind="session") if p.status in ("running", "pending")]
        assert len(live) <= runtime.settings.max_sessions + runtime.settings.session_pool_size + 1
        store = await open_store(runtime)

        async def all_ended() -> list[Any]:
            # each is written whole, ended, in the one write that keeps its turn
            found = [s for s in await store.list_sessions(status=None) if s.caller_id.startswith("anon-")]
            return found if len(found) == 12 and all(s.status == "ended" for s in found) else []

        try:
            ended = await wait_for(all_ended)
            # each is recorded whole: the client's history as context, its own turn stored
            stored = await store.load_messages(ended[-1].id)
            assert [m.role for m in stored] == ["user", "assistant"] and stored[0].content == "#10"
            # one after another, they were served by one actor, lent to the door for one-turn sessions
            assert len({s.process_id for s in ended}) == 1
        finally:
            await store.close()

    asyncio.run(check())


def test_a_caller_who_hangs_up_mid_reply_keeps_the_words_and_pays_for_them(runtime: Any, door: str) -> None:
    body = {"model": "tony", "stream": True, "user": "hangs-up", "messages": [{"role": "user", "content": "slow"}]}
    with httpx.stream("POST", f"{door}/v1/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        heard = []
        for line in response.iter_lines():
            if '"content":"word' in line:
                heard.append(line)
            if len(heard) >= 3:
                break  # the caller hangs up three words in

    async def kept() -> Any:
        store = await open_store(runtime)
        try:
            session = (await store.list_sessions())[0]
            messages = await store.load_messages(session.id)
            return (messages, await store.interrupted_turns(session.id)) if len(messages) == 2 else None
        finally:
            await store.close()

    messages, interrupted = asyncio.run(wait_for(kept))
    assert messages[1].role == "assistant" and (messages[1].content or "").startswith("word0 word1 word2")
    assert len((messages[1].content or "").split()) < 40 and interrupted == 1

    async def charged() -> Any:
        found = await processes(runtime, kind="session", agent="Tony")
        return found and found[0].metrics.output_tokens > 0

    asyncio.run(wait_for(charged))


def test_hanging_up_again_and_again_reaches_the_budget(start_runtime: Any, tmp_path: Path) -> None:
    """Barge-ins are paid for: a caller who keeps hanging up mid-reply runs out of session budget."""
    with FakeOpenAIServer(Behaviour(tokens=200, token_delay_s=0.02)) as upstream:
        settings = make_settings(
            tmp_path, model_backend="endpoint", openai_base_url=upstream.base_url, openai_api_key="k",
            model="gpt-4o", session_budget_usd=0.01, rate_limit_per_minute=0,
        )  # fmt: skip
        runtime = start_runtime(settings)
        with serving(door_for(runtime)) as door:
            body = {"model": "tony", "stream": True, "user": "barger", "messages": [{"role": "user", "content": "hi"}]}
            refused = None
            for _ in range(30):
                with httpx.stream("POST", f"{door}/v1/chat/completions", json=body, timeout=30) as response:
                    if response.status_code != 200:
                        refused = response
                        response.read()
                        break
                    for line in response.iter_lines():
                        if "tok1" in line:
                            break  # hangs up
            assert refused is not None, "hanging up was free"
            assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"


async def killed_mid_reply(client: Any, request: TurnRequest, session: Any) -> str:
    """Stream a turn and kill its session actor once the first words are out; the reply streams on from
    the door. Returns what the caller heard."""
    events = client.turn(request).__aiter__()
    first = await anext(events)
    assert first.kind == "delta"
    ray.kill(session, no_restart=True)
    rest = [first, *[e async for e in events]]
    assert rest[-1].kind == "done"
    heard = text_of(rest)
    assert heard.startswith("word0")
    return heard


async def kept_turns(runtime: Any, caller: str) -> list[tuple[str, str | None]]:
    """What the store kept of the caller's conversation, as (role, content)."""
    store = await open_store(runtime)
    try:
        session = next(s for s in await store.list_sessions(status=None) if s.caller_id == caller)
        return [(m.role, m.content) for m in await store.load_messages(session.id)]
    finally:
        await store.close()


async def test_a_session_killed_between_prepare_and_finish_keeps_the_reply(runtime: Any) -> None:
    client = runtime.client()
    assert (await say(runtime, "+14155550300", "hello", client=client))[-1].kind == "done"
    lease = client.leases[("+14155550300", "tony")]
    request = TurnRequest(
        caller_id="+14155550300", persona="Tony", messages=(ChatMessage(role="user", content="slow"),)
    )
    heard = await killed_mid_reply(client, request, lease.handle)
    said = await kept_turns(runtime, "+14155550300")
    assert said[-2:] == [("user", "slow"), ("assistant", heard)]
    # and the conversation goes on, with its history
    assert (await say(runtime, "+14155550300", "still there?", client=client))[-1].kind == "done"


def anonymous(text: str) -> TurnRequest:
    """A turn as a plain OpenAI SDK client's request reaches the door: no caller id."""
    return TurnRequest(caller_id=anonymous_caller(), persona="Tony", messages=(ChatMessage(role="user", content=text),))


async def test_an_actor_lent_for_one_turn_sessions_that_dies_mid_reply_keeps_the_reply(runtime: Any) -> None:
    """Callers with no identity take turns on an actor lent to the door. If it dies mid-reply, the reply
    the caller heard is kept all the same, and the next such caller is answered by another actor."""
    client = runtime.client()
    assert [e async for e in client.turn(anonymous("hello"))][-1].kind == "done"
    lease = client.lent["tony"][-1][0]
    request = anonymous("slow")
    heard = await killed_mid_reply(client, request, lease.handle)
    said = await kept_turns(runtime, request.caller_id)
    assert said == [("user", "slow"), ("assistant", heard)]
    assert [e async for e in client.turn(anonymous("anyone there?"))][-1].kind == "done"
    assert client.lent["tony"][-1][0].handle._actor_id != lease.handle._actor_id


async def test_an_actor_lent_for_one_turn_sessions_goes_back_when_unused(start_runtime: Any, tmp_path: Path) -> None:
    """A lent actor holds no conversation between turns, but it counts against the cap: once no caller
    has used it for the idle time it is let go, and the operator sees it back in the warm pool."""
    runtime = start_runtime(make_settings(tmp_path, session_idle_timeout_s=2.0, rate_limit_per_minute=0))
    client = runtime.client()
    assert [e async for e in client.turn(anonymous("hello"))][-1].kind == "done"
    status = await runtime.orchestrator.status.remote()
    assert status.lent_count == 1 and status.session_count == 0  # not a live conversation

    async def given_back() -> Any:
        status = await runtime.orchestrator.status.remote()
        return status if status.lent_count == 0 else None

    status = await wait_for(given_back, within=30)
    assert status.pool_size >= 1
    # and the next caller with no identity is lent one again
    assert [e async for e in client.turn(anonymous("hello again"))][-1].kind == "done"
    assert (await runtime.orchestrator.status.remote()).lent_count == 1


@ray.remote(num_cpus=0)
class DoorReplica:
    """Stands in for a Serve door replica: an actor that opens a turn and dies before finishing it."""

    def ready(self) -> bool:
        return True


async def test_a_turn_whose_door_died_does_not_hold_up_the_callers_next_turn(runtime: Any) -> None:
    """With several door replicas, every turn is prepared by the session and finished by the replica that
    streams it. A replica that dies mid-reply (its node lost) never finishes its turn: the caller's next
    turn, through another replica, is answered at once instead of after `turn_timeout_s` (5 minutes)."""
    client = runtime.client()
    assert (await say(runtime, "+14155550350", "hello", client=client))[-1].kind == "done"
    lease = client.leases[("+14155550350", "tony")]
    # a session knows the replica by its name (Serve names its replicas), as `this_door` gives it
    replica = DoorReplica.options(name="door-replica-350").remote()  # type: ignore[attr-defined]
    await replica.ready.remote()
    door = DoorName(name="door-replica-350", namespace=ray.get_runtime_context().namespace)
    request = TurnRequest(
        caller_id="+14155550350", persona="Tony", messages=(ChatMessage(role="user", content="are you there?"),)
    )
    plan = await lease.handle.prepare.remote(request, door)
    assert plan.turn_id
    ray.kill(replica, no_restart=True)
    started = asyncio.get_running_loop().time()
    events = await say(runtime, "+14155550350", "hello again", client=client)
    waited = asyncio.get_running_loop().time() - started
    assert events[-1].kind == "done", events[-1]
    assert waited < 10, f"the next turn waited {waited:.1f} s for a turn nobody will finish"

    store = await open_store(runtime)
    try:
        session = next(s for s in await store.list_sessions() if s.caller_id == "+14155550350")
        said = [m.content for m in await store.load_messages(session.id) if m.role == "user"]
    finally:
        await store.close()
    assert said == ["hello", "are you there?", "hello again"]  # the abandoned turn's input is kept


async def test_a_caller_who_calls_straight_back_is_answered_every_time(runtime: Any) -> None:
    """VAPI's end-of-call report and the same number's next call arrive together, ten times over."""
    client = runtime.client()
    for i in range(10):
        _, events = await asyncio.gather(
            runtime.orchestrator.end_session.remote("+14155550400", "Tony"),
            say(runtime, "+14155550400", f"call {i}", client=client),
        )
        assert events[-1].kind == "done", events[-1]


async def test_the_orchestrator_killed_comes_back_and_callers_are_served_again(runtime: Any) -> None:
    """Its process dies: the personas it started die with it and are started again, while a caller's live
    session outlives it (a detached actor), is taken back by the restarted orchestrator, and goes on."""
    client = runtime.client()
    assert (await say(runtime, "+14155550500", "I am Grace", client=client))[-1].kind == "done"
    assert [e async for e in client.turn(anonymous("hello"))][-1].kind == "done"
    lent = client.lent["tony"][-1][0]
    before = {p.id for p in await processes(runtime, kind="persona")}
    session_row = next(p for p in await processes(runtime, kind="session") if p.name.endswith("+14155550500"))
    lease = client.leases[("+14155550500", "tony")]
    actor_pid = (await lease.handle.ping.remote())["pid"]
    ray.kill(ray.get_actor(ORCHESTRATOR_NAME, namespace=runtime.settings.namespace), no_restart=False)

    async def recovered() -> Any:
        try:
            found = await processes(runtime, kind="persona")
        except (ActorUnavailableError, RayActorError):
            return None  # still restarting
        running = [p for p in found if p.status == "running"]
        # a kill is only a request: the old orchestrator may answer a moment longer
        return found if len(running) == 5 and not {p.id for p in running} & before else None

    found = await wait_for(recovered, within=60)
    events = await say(runtime, "+14155550500", "are you back?", client=client)
    assert events[-1].kind == "done"
    # the registry is whole: what died with the old orchestrator is marked so, and everything runs again
    lost = [p for p in found if p.id in before]
    assert lost and all(p.status == "failed" and "orchestrator restarted" in (p.error or "") for p in lost)
    assert len([p for p in found if p.status == "running"]) == 5
    # the caller's session lived on in the same process, and the restarted orchestrator holds it again
    assert (await lease.handle.ping.remote())["pid"] == actor_pid
    assert client.leases[("+14155550500", "tony")] is lease  # the door never had to ask for another
    sessions = {s.caller_id: s for s in await runtime.orchestrator.list_sessions.remote()}
    assert sessions["+14155550500"].process_id == session_row.id
    assert (await runtime.orchestrator.get_process.remote(session_row.id))[0].status == "running"
    store = await open_store(runtime)
    try:
        session = next(s for s in await store.list_sessions() if s.caller_id == "+14155550500")
        said = [m.content for m in await store.load_messages(session.id) if m.role == "user"]
    finally:
        await store.close()
    assert said == ["I am Grace", "are you back?"]  # nothing acknowledged was lost
    # the actor lent for one-turn sessions lived on too, and is still lent to the door
    assert [e async for e in client.turn(anonymous("and you?"))][-1].kind == "done"
    assert client.lent["tony"][-1][0] is lent
    assert (await runtime.orchestrator.get_process.remote(lent.process_id))[0].status == "running"


def session_actor_names(namespace: str) -> set[str]:
    return {
        found["name"]
        for found in ray.util.list_named_actors(all_namespaces=True)
        if found["namespace"] == namespace and found["name"].startswith("session-")
    }


async def test_session_actors_stop_once_their_orchestrator_is_gone_for_good(runtime: Any) -> None:
    """Session actors are detached (they outlive a restart of the orchestrator's process), so when the
    orchestrator is stopped for good with nobody to stop them, they stop themselves: none is left behind."""
    assert (await say(runtime, "+14155550600", "hello"))[-1].kind == "done"
    names = session_actor_names(runtime.settings.namespace)
    assert names  # the caller's, and the warm pool's
    ray.kill(runtime.orchestrator, no_restart=True)

    async def gone() -> bool:
        return not session_actor_names(runtime.settings.namespace) & names

    await wait_for(gone, within=90)


async def test_the_model_sees_the_whole_window_though_a_turn_carries_only_its_input(runtime: Any) -> None:
    """The door keeps a copy of the session's prompt and transcript, so a plan carries only what changed;
    what the model is shown is the same as if the session had sent everything, turn after turn, and
    again after the session is lost and picked up from the store."""
    client = runtime.client()
    caller = "+14155550310"
    for n in range(3):
        assert (await say(runtime, caller, f"message {n}", client=client))[-1].kind == "done"
    model = client.models.for_persona(runtime.catalog.get("Tony"))
    shown = [(m.role, m.content) for m in model.requests[-1].messages]
    assert shown[0][0] == "system" and "Tony" in (shown[0][1] or "")
    users = [content for role, content in shown if role == "user"]
    assert users == ["message 0", "message 1", "message 2"]
    assert [role for role, _ in shown[1:]] == ["user", "assistant"] * 2 + ["user"]
    copy = client.copies[(caller, "tony")]
    assert copy.version is not None and len(copy.transcript) == 6

    ray.kill(client.leases[(caller, "tony")].handle, no_restart=True)  # picked up by another actor
    assert (await say(runtime, caller, "message 3", client=client))[-1].kind == "done"
    shown_after = [(m.role, m.content) for m in model.requests[-1].messages]
    assert [c for r, c in shown_after if r == "user"] == ["message 0", "message 1", "message 2", "message 3"]
    assert shown_after[0] == shown[0]


async def test_a_pooled_actor_that_serves_caller_after_caller_holds_one_watch(runtime: Any) -> None:
    """The orchestrator watches a session actor for each caller it takes. A watch ends with its caller:
    an actor that had served a thousand callers would otherwise hold a thousand calls, and take no more."""
    client = runtime.client()
    served: dict[Any, int] = {}
    handles: dict[Any, Any] = {}
    for n in range(6):
        caller = f"one-after-another-{n}"
        assert (await say(runtime, caller, "hello", client=client))[-1].kind == "done"
        handle = client.leases[(caller, "tony")].handle
        served[handle._actor_id] = served.get(handle._actor_id, 0) + 1
        handles[handle._actor_id] = handle
        await runtime.orchestrator.end_session.remote(caller, "tony")  # its actor goes back to the pool
        client.forget(caller, "tony")
    assert max(served.values()) >= 2, "no actor was taken again from the pool"
    for actor_id, handle in handles.items():
        try:
            answer = await handle.ping.remote()
        except RayActorError:
            continue  # stopped as a surplus of the pool
        assert answer["watchers"] <= 1, f"an actor that served {served[actor_id]} callers holds {answer['watchers']}"
