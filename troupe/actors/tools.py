"""A persona's own tools: remember / recall / forget (memory), spawn_agent (delegate to a specialist),
ask_persona (consult another executive). The actor supplies the I/O as plain callables."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from troupe.core import tracing
from troupe.core.chat import ToolCall, ToolSpec


class MemoryStore(Protocol):
    async def add_memory(
        self, persona: str, subject: str, content: str, *, kind: str = "note", source: str = "",
        importance: float = 0.5,
    ) -> Any: ...  # fmt: skip

    async def recall(
        self, persona: str, *, subject: str | None = None, query: str | None = None, limit: int = 8
    ) -> Sequence[Any]: ...

    async def forget_memory(self, persona: str, memory_id: int, subject: str | None = None) -> bool: ...


Delegate = Callable[[str, str], Awaitable[str]]  # (specialist, task) -> result
Consult = Callable[[str, str], Awaitable[str]]  # (persona, question) -> answer
Callback = Callable[[str, str, str], Awaitable[str]]  # (phone number, specialist, task) -> acknowledgement


def _schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required}


class PersonaTools:
    """The ToolBox of one persona in one context (a caller's session, a task, a life activity)."""

    def __init__(
        self,
        *,
        persona: str,
        allowed: Sequence[str],
        store: MemoryStore,
        subject: str = "general",
        team: Sequence[str] = (),
        executives: Sequence[str] = (),
        delegate: Delegate | None = None,
        consult: Consult | None = None,
        callback: Callback | None = None,
    ) -> None:
        self.persona = persona
        self.store = store
        self.subject = subject
        self.team = list(team)
        self.peers = [name for name in executives if name.lower() != persona.lower()]
        self.delegate = delegate
        self.consult = consult
        self.callback = callback
        permitted = set(allowed) | ({"schedule_callback"} if "spawn_agent" in allowed else set())
        permitted |= {"forget"} if "remember" in allowed else set()  # what a persona may keep, it may let go
        self._specs = tuple(spec for spec in self._all_specs() if spec.name in permitted)

    def specs(self) -> tuple[ToolSpec, ...]:
        return self._specs

    def _all_specs(self) -> list[ToolSpec]:
        specs = [
            ToolSpec(
                name="remember",
                description="Save a fact worth remembering about the caller or a topic, for later conversations.",
                parameters=_schema(
                    {
                        "fact": {"type": "string", "description": "The fact, in one sentence."},
                        "subject": {
                            "type": "string",
                            "description": "Who or what it is about; default: the caller.",
                        },
                        "importance": {
                            "type": "number",
                            "description": "How much it matters, 0 to 1 (a child's name 0.9, a passing remark 0.2).",
                        },
                    },
                    ["fact"],
                ),
            ),
            ToolSpec(
                name="recall",
                description="Look up what you remember about the caller or a topic.",
                parameters=_schema(
                    {
                        "query": {"type": "string", "description": "Words to look for."},
                        "subject": {"type": "string", "description": "Who or what; default: the caller."},
                    },
                    [],
                ),
            ),
            ToolSpec(
                name="forget",
                description="Forget a fact you remember about the caller (they asked you to, or it is wrong).",
                parameters=_schema(
                    {"fact": {"type": "string", "description": "The fact to forget, in your own words."}}, ["fact"]
                ),
            ),
        ]
        if self.delegate and self.team:
            specs.append(
                ToolSpec(
                    name="spawn_agent",
                    description="Delegate a piece of work to a specialist on your team and get their result.",
                    parameters=_schema(
                        {
                            "specialist": {"type": "string", "enum": self.team},
                            "task": {"type": "string", "description": "What they should do, self-contained."},
                        },
                        ["specialist", "task"],
                    ),
                )
            )
        if self.callback and self.delegate and self.team:
            specs.append(
                ToolSpec(
                    name="schedule_callback",
                    description="Delegate work to a specialist and have the caller phoned back with the result "
                    "when it is done (they need not wait on the line).",
                    parameters=_schema(
                        {
                            "phone_number": {"type": "string", "description": "Who to call, E.164 (+15551234567)."},
                            "specialist": {"type": "string", "enum": self.team},
                            "task": {"type": "string", "description": "What they should do, self-contained."},
                        },
                        ["phone_number", "specialist", "task"],
                    ),
                )
            )
        if self.consult and self.peers:
            specs.append(
                ToolSpec(
                    name="ask_persona",
                    description="Ask another executive for their view and get their answer.",
                    parameters=_schema(
                        {
                            "persona": {"type": "string", "enum": self.peers},
                            "question": {"type": "string"},
                        },
                        ["persona", "question"],
                    ),
                )
            )
        return specs

    async def run(self, call: ToolCall) -> str:
        # its arguments stay out of the span: they may hold a phone number or what the caller said
        attributes = {"gen_ai.tool.name": call.name, "troupe.persona": self.persona}
        with tracing.span(f"tool.{call.name}", attributes=attributes):
            return await self._run(call)

    async def _run(self, call: ToolCall) -> str:
        args = json.loads(call.arguments or "{}")
        if not isinstance(args, dict):
            return "Error: arguments must be a JSON object."
        if call.name == "remember":
            fact = str(args.get("fact", "")).strip()
            if not fact:
                return "Error: nothing to remember (fact is empty)."
            subject = str(args.get("subject") or self.subject)
            importance = args.get("importance")
            weight = float(importance) if isinstance(importance, int | float) else 0.5
            await self.store.add_memory(self.persona, subject, fact, kind="fact", source="remember", importance=weight)
            return "Noted."
        if call.name == "forget":
            fact = str(args.get("fact", "")).strip()
            if not fact:
                return "Error: say what to forget (fact is empty)."
            found = await self.store.recall(self.persona, subject=self.subject, query=fact, limit=1)
            if not found or not await self.store.forget_memory(self.persona, found[0].id, subject=self.subject):
                return "Nothing remembered about that."
            return f"Forgotten: {found[0].content}"
        if call.name == "recall":
            subject = args.get("subject") or self.subject
            found = await self.store.recall(self.persona, subject=subject, query=args.get("query"))
            if not found and args.get("query"):
                found = await self.store.recall(self.persona, query=args.get("query"))
            if not found:
                return "Nothing remembered about that."
            return "\n".join(f"- {entry.content}" for entry in found)
        if call.name == "spawn_agent" and self.delegate:
            specialist = str(args.get("specialist", ""))
            match = next((name for name in self.team if name.lower() == specialist.lower()), None)
            if match is None:
                return f"Error: {specialist!r} is not on your team ({', '.join(self.team)})."
            return await self.delegate(match, str(args.get("task", "")))
        if call.name == "schedule_callback" and self.callback and self.delegate:
            number, specialist, task = (str(args.get(k, "")).strip() for k in ("phone_number", "specialist", "task"))
            if not (number and specialist and task):
                return "Error: phone_number, specialist and task are all required."
            return await self.callback(number, specialist, task)
        if call.name == "ask_persona" and self.consult:
            target = str(args.get("persona", ""))
            match = next((name for name in self.peers if name.lower() == target.lower()), None)
            if match is None:
                return f"Error: {target!r} is not one of {', '.join(self.peers)}."
            return await self.consult(match, str(args.get("question", "")))
        return f"Error: unknown tool {call.name!r}."
