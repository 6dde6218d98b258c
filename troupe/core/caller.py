"""Caller identity: who is on the line, by the contract's rules.

Phone number first, then a call id (a known one maps back to its caller), then a client's request id,
then the client's `user` field. A request with none of them is anonymous: a one-turn session of its own.
"""

from __future__ import annotations

import re
import uuid
from typing import Protocol

import phonenumbers


class CallLookup(Protocol):
    """What a call id maps to, when known (a dict, or the door's `KnownCalls`)."""

    def __contains__(self, key: object) -> bool: ...

    def __getitem__(self, key: str) -> str: ...


ANONYMOUS = "anon-"
_SAFE = re.compile(r"[^A-Za-z0-9_.:@+\-]")
_DIGIT = re.compile(r"\d")


def normalise_phone(raw: str, region: str = "US") -> str | None:
    """E.164 form of a phone number, read the way the phone network reads it: "(415) 555-1234" in the
    US is +14155551234, "0044 20 7946 0958" is +442079460958. None if it is not a possible number."""
    text = raw.strip()
    if not text or not _DIGIT.search(text):
        return None
    if text.startswith("00"):
        text = "+" + text[2:]
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def phone_identity(raw: str, region: str = "US") -> str | None:
    """The caller id a platform's phone field gives: its E.164 form; a number that cannot be parsed is
    kept as given (never guessed into someone else's number); no digits at all ("anonymous",
    "restricted") is no identity."""
    number = normalise_phone(raw, region)
    if number is not None:
        return number
    if not _DIGIT.search(raw):
        return None
    return f"tel-{_clean(raw)}"


def _clean(value: str, limit: int = 128) -> str:
    return _SAFE.sub("_", value.strip())[:limit]


def is_anonymous(caller_id: str) -> bool:
    return caller_id.startswith(ANONYMOUS)


def anonymous_caller() -> str:
    return f"{ANONYMOUS}{uuid.uuid4().hex}"


def resolve_caller_id(
    *,
    phone: str | None = None,
    call_id: str | None = None,
    request_id: str | None = None,
    user: str | None = None,
    known_calls: CallLookup | None = None,
    region: str = "US",
) -> str:
    """The caller id for a request. Ids are stable: the same inputs always give the same caller; a
    request with no identity gets a fresh anonymous id."""
    if phone and (number := phone_identity(phone, region)):
        return number
    if call_id and call_id.strip():
        call = _clean(call_id)
        key = call if call.startswith("call-") else f"call-{call}"
        if known_calls and key in known_calls:
            return known_calls[key]
        return key
    if request_id and request_id.strip():
        req = _clean(request_id)
        return req if req.startswith("req-") else f"req-{req}"
    if user and user.strip():
        return f"user-{_clean(user)}"
    return anonymous_caller()


VOICE_SOURCES = ("vapi", "elevenlabs")


def channel_of(caller_id: str, source: str) -> str:
    """The channel a conversation came through: voice (a voice platform, or a caller known by phone
    number), slack, or chat (any other client of the completions door)."""
    if source in VOICE_SOURCES or caller_id.startswith("+"):
        return "voice"
    if source == "slack" or caller_id.startswith("slack-"):
        return "slack"
    return "chat"
