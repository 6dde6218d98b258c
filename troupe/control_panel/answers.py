"""What every panel route shares: its errors (404, 422), the page shape ({items, total, offset,
has_more}) and its query limits, how a time is written, and who is asking (and whether their answers
mask callers)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query, Request

from troupe.core.errors import TroupeError


class NotFound(TroupeError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


PAGE_MAX = 200  # items one page of any list may hold
OFFSET_MAX = 10**9  # past any store's size, and within the 64-bit integer the database takes
Limit = Annotated[int | None, Query(ge=1, le=PAGE_MAX, description="page size; with it the answer is a page")]
Offset = Annotated[int, Query(ge=0, le=OFFSET_MAX)]
Search = Annotated[str | None, Query(max_length=200)]


def page_of(items: list[Any], total: int, offset: int) -> dict[str, Any]:
    """One page in the panel's shape: its items, how many match in all, and whether more follow."""
    return {"items": items, "total": total, "offset": offset, "has_more": offset + len(items) < total}


def caller_matches(caller_id: str, search: str) -> bool:
    """The panel's caller search: the whole id, or its ending (the digits a masked number shows)."""
    return caller_id == search or (len(search) >= 4 and caller_id.endswith(search))


def masks(request: Request) -> bool:
    """Whether the contract's plain answers mask callers for this key: an operator's do; an admin's (and an
    --insecure door's) are the contract's own, for scripts. The panel's pages mask for everyone, and a
    number is shown there only through the audited reveal."""
    key = getattr(request.state, "principal", None)
    return key is not None and key.role != "admin"


class Unprocessable(TroupeError):
    status = 422
    type = "invalid_request_error"
    code = "invalid_value"


def stamp(value: Any) -> str | None:
    """A time as the API writes it: ISO 8601 in UTC with a Z."""
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")


def principal_of(request: Request) -> tuple[str, str]:
    """Who is asking: the key's name and role (never the key)."""
    key = getattr(request.state, "principal", None)
    return (key.name, key.role) if key is not None else ("insecure", "admin")
