"""What the platform integrations share: running one turn through a persona's session and reading
the reply as text, and finding a persona by name or by the start of a message."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

from troupe.core.chat import ChatMessage
from troupe.core.errors import TroupeError
from troupe.core.messages import Delta, Failed, TurnEvent, TurnRequest
from troupe.integrations.door import Gateway


class TurnFailed(TroupeError):
    """The persona could not answer (model down, budget spent, at capacity); status as the session said."""

    type = "server_error"


def user_turn(caller_id: str, persona: str, text: str) -> TurnRequest:
    """A turn from a platform that sends only the newest message (Slack); the session keeps the history."""
    return TurnRequest(caller_id=caller_id, persona=persona, messages=(ChatMessage(role="user", content=text),))


async def reply_text(gateway: Gateway, request: TurnRequest) -> str:
    """The whole reply of one turn as text. Raises TurnFailed with the session's message on error."""
    parts: list[str] = []
    async for event in gateway.client.turn(request):
        match event:
            case Delta(text=text):
                parts.append(text)
            case Failed():
                raise _failure(event)
    return "".join(parts).strip()


async def text_deltas(events: AsyncIterator[TurnEvent]) -> AsyncIterator[str]:
    """Only the text of a turn's events (errors raise TurnFailed)."""
    async for event in events:
        match event:
            case Delta(text=text) if text:
                yield text
            case Failed():
                raise _failure(event)


def _failure(failed: Failed) -> TurnFailed:
    failure = TurnFailed(failed.text or "The persona could not answer.")
    failure.status, failure.code = failed.status, failed.code
    return failure


_PREFIX = re.compile(r"^\s*@?([A-Za-z][\w.-]{0,40})\s*[:,]\s*(.*)$", re.S)


def addressed_persona(catalog: Any, text: str) -> tuple[str | None, str]:
    """'maya: what did we spend?' -> ('Maya', 'what did we spend?'); no known name -> (None, text)."""
    match = _PREFIX.match(text)
    if match:
        found = catalog.find(match.group(1))
        if found is not None:
            return found.name, match.group(2).strip()
    return None, text
