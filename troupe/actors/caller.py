"""Caller identity: who is on the line, by the contract's rules.

Phone number first, then a call id (a known one maps back to its caller), then a request id, then the
client's `user` field, else a fresh anonymous id.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping

_PHONE_JUNK = re.compile(r"[\s\-().]")
_E164 = re.compile(r"^\+?[1-9]\d{6,14}$")
_SAFE = re.compile(r"[^A-Za-z0-9_.:@+\-]")


def normalise_phone(raw: str) -> str | None:
    """E.164 form (+ and up to 15 digits) or None if it does not look like a phone number."""
    cleaned = _PHONE_JUNK.sub("", raw.strip())
    if cleaned.startswith("00"):
        cleaned = "+" + cleaned[2:]
    if not _E164.match(cleaned):
        return None
    return cleaned if cleaned.startswith("+") else "+" + cleaned


def _clean(value: str, limit: int = 128) -> str:
    return _SAFE.sub("_", value.strip())[:limit]


def resolve_caller_id(
    *,
    phone: str | None = None,
    call_id: str | None = None,
    request_id: str | None = None,
    user: str | None = None,
    known_calls: Mapping[str, str] | None = None,
    now_ns: int | None = None,
) -> str:
    """The caller id for a request. Ids are stable: the same inputs always give the same caller."""
    if phone and (number := normalise_phone(phone)):
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
    return f"anonymous-{now_ns if now_ns is not None else time.time_ns()}"
