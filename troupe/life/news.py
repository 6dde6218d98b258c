"""News for the life loop: fetch RSS, Atom, JSON Feed and Hacker News sources concurrently, parse them into
`NewsItem`s, and pick the few a persona should read by relevance to its focus areas and blocked topics.

Fetching never raises for a bad source: what failed comes back as short human-readable strings."""

from __future__ import annotations

import asyncio
import calendar
import email.utils
import hashlib
import io
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit
from xml.parsers.expat import errors as expat_errors

import defusedxml.ElementTree as defused
import feedparser
import httpx
from defusedxml import DefusedXmlException

SUMMARY_MAX = 500
HN_INDEXES = ("topstories.json", "newstories.json", "beststories.json")
HN_ITEM_PAGE = "https://news.ycombinator.com/item?id={id}"

_UTF16_STARTS = (b"\xff\xfe", b"\xfe\xff", b"<\x00", b"\x00<")  # with or without a byte-order mark
_UNDEFINED_REFERENCE = re.compile(rb"&(?!(?:amp|lt|gt|quot|apos);)[^\W\d][\w.-]*;")
_DATES = ("published_parsed", "updated_parsed", "created_parsed")
_UNDEFINED_ENTITY = expat_errors.codes[expat_errors.XML_ERROR_UNDEFINED_ENTITY]
_ACCEPT = {
    "Accept": "application/rss+xml, application/atom+xml, application/feed+json, application/json;q=0.9, "
    "application/xml;q=0.8, text/xml;q=0.8, */*;q=0.5"
}


class FeedError(ValueError):
    """A source's body is not a feed troupe can read; the message names the source and what is wrong."""


@dataclass(frozen=True)
class NewsItem:
    id: str
    title: str
    url: str
    summary: str
    source: str
    published: datetime | None


# --- parsing


def parse_feed(body: bytes, source: str, content_type: str = "") -> list[NewsItem]:
    """Parse an RSS (0.9x, 1.0, 2.0), Atom (0.3, 1.0), JSON Feed 1.x or Hacker News item-list body from
    `source`; relative links are resolved against `source` (or the feed's own xml:base)."""
    head = body.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head:
        raise _malformed(source, "empty body")
    says_json = "json" in content_type.lower()
    if head.startswith((b"<", *_UTF16_STARTS)) and not says_json:
        return _parse_xml(body, source, content_type)
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        why = f"invalid JSON ({exc})" if says_json or head[:1] in (b"{", b"[") else "neither XML nor JSON"
        raise _malformed(source, why) from None
    return _parse_json(data, source)


def _malformed(source: str, why: str) -> FeedError:
    return FeedError(f"{source}: malformed feed: {why}")


def _parse_xml(body: bytes, source: str, content_type: str) -> list[NewsItem]:
    """RSS (0.9x, 1.0, 2.0) and Atom (0.3, 1.0) by feedparser, behind defusedxml: a document with a DTD, an
    entity declaration or an external reference is refused before feedparser sees it."""
    root = _vet_xml(body, source)
    if root.tag == "rss" and root.find("channel") is None:
        raise _malformed(source, "RSS without a <channel>")
    headers = {"content-location": source}
    if content_type:
        headers["content-type"] = content_type
    # a BytesIO, never the bytes themselves: feedparser reads a string that looks like a URL or a path
    parsed = feedparser.parse(io.BytesIO(body), response_headers=headers)
    if not parsed.get("version"):
        raise _malformed(source, f"not RSS or Atom (root element <{_local(root.tag)}>)")
    return _collect(_feed_entry(entry, source) for entry in parsed.entries)


def _vet_xml(body: bytes, source: str) -> ET.Element:
    """The root of a well-formed document without a DTD, else FeedError. An entity XML does not define
    (`&nbsp;` in a title, say) is let through for feedparser's lenient parser, if the rest is well-formed."""
    try:
        return defused.fromstring(body, forbid_dtd=True)
    except DefusedXmlException:
        raise _malformed(source, "XML with a DTD or entity declarations is refused") from None
    except ET.ParseError as exc:
        if exc.code != _UNDEFINED_ENTITY:
            raise _malformed(source, f"not well-formed XML ({exc})") from None
    # expat stopped at the first such entity: vet the rest with every one of them read as U+FFFD
    if _declares_dtd(body):
        raise _malformed(source, "XML with a DTD or entity declarations is refused")
    try:
        return defused.fromstring(_UNDEFINED_REFERENCE.sub(b"&#xFFFD;", body), forbid_dtd=True)
    except (ET.ParseError, DefusedXmlException) as exc:
        raise _malformed(source, f"not well-formed XML ({exc})") from None


def _declares_dtd(body: bytes) -> bool:
    texts = [body]
    if body.startswith((b"\xff\xfe", b"\xfe\xff")):
        texts.append(body.decode("utf-16", "replace").encode())
    return any(re.search(rb"<!\s*(DOCTYPE|ENTITY)", text, re.IGNORECASE) for text in texts)


def _feed_entry(entry: Any, source: str) -> NewsItem | None:
    link = entry.get("link") or next((link.get("href", "") for link in entry.get("links", ())), "")
    summary = _detail_text(entry.get("summary_detail"))
    if not summary and entry.get("content"):
        summary = _detail_text(entry["content"][0])
    # dict.get: feedparser's own get maps a missing updated_parsed to published_parsed, with a warning
    moment = next((dict.get(entry, key) for key in _DATES if dict.get(entry, key)), None)
    published = datetime.fromtimestamp(calendar.timegm(moment), UTC) if moment else None
    return _item(source, _detail_text(entry.get("title_detail")), link and urljoin(source, link),
                 _str(entry.get("id")), summary, published)  # fmt: skip


def _detail_text(detail: Any) -> str:
    """A feedparser text construct as plain text: HTML (and XHTML) stripped of markup, plain text squashed."""
    if not detail:
        return ""
    value = _str(detail.get("value"))
    return _plain(value) if "html" in str(detail.get("type", "")) else _squash(value)


def _parse_json(data: Any, source: str) -> list[NewsItem]:
    if isinstance(data, dict):
        if "items" in data:
            if not isinstance(data["items"], list):
                raise _malformed(source, "JSON Feed whose 'items' is not a list")
            return _collect(_json_feed_item(entry, source) for entry in data["items"] if isinstance(entry, dict))
        if "id" in data and "type" in data:
            return _collect([_hn_item(data, source)])
        raise _malformed(source, "JSON object without an 'items' list (neither a JSON Feed nor a Hacker News item)")
    if isinstance(data, list):
        if data and all(isinstance(entry, int) and not isinstance(entry, bool) for entry in data):
            raise _malformed(source, "a list of Hacker News story ids, not stories (fetch it with fetch_all)")
        if all(entry is None or isinstance(entry, dict) for entry in data):
            return _collect(_hn_item(entry, source) for entry in data if entry is not None)
    raise _malformed(source, f"JSON {type(data).__name__} that is neither a JSON Feed nor a Hacker News item list")


def _json_feed_item(entry: dict[str, Any], source: str) -> NewsItem | None:
    url = _str(entry.get("url")) or _str(entry.get("external_url"))
    text = _str(entry.get("content_text"))
    summary = _str(entry.get("summary")) or (_squash(text) if text else _plain(_str(entry.get("content_html"))))
    title = _squash(_str(entry.get("title"))) or _shorten(summary, 80)
    return _item(source, title, url and urljoin(source, url), _str(entry.get("id")), summary,
                 _date(_str(entry.get("date_published")) or _str(entry.get("date_modified"))))  # fmt: skip


def _hn_item(entry: dict[str, Any], source: str) -> NewsItem | None:
    if entry.get("deleted") or entry.get("dead") or entry.get("type", "story") != "story":
        return None
    story_id = entry.get("id")
    url = _str(entry.get("url")) or (HN_ITEM_PAGE.format(id=story_id) if story_id is not None else "")
    stamp = entry.get("time")
    published = datetime.fromtimestamp(stamp, UTC) if isinstance(stamp, int | float) else None
    return _item(source, _squash(_str(entry.get("title"))), url, str(story_id or ""), _plain(_str(entry.get("text"))),
                 published)  # fmt: skip


def _item(source: str, title: str, url: str, guid: str, summary: str, published: datetime | None) -> NewsItem | None:
    if not title and not url:
        return None
    key = url or guid or f"{source}#{title}"
    return NewsItem(
        id=hashlib.sha256(key.encode()).hexdigest()[:16],
        title=title,
        url=url,
        summary=_shorten(summary, SUMMARY_MAX),
        source=source,
        published=published,
    )


def _collect(items: Any) -> list[NewsItem]:
    return [item for item in items if item is not None]


def _str(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _date(text: str) -> datetime | None:
    if not text:
        return None
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class _TextOnly(HTMLParser):
    _SKIP = frozenset({"script", "style"})
    _BREAKS = frozenset({"p", "br", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self.skipping += 1
        elif tag in self._BREAKS:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self._BREAKS:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data)


def _plain(html: str) -> str:
    if "<" not in html and "&" not in html:
        return _squash(html)
    parser = _TextOnly()
    parser.feed(html)
    parser.close()
    return _squash("".join(parser.parts))


def _squash(text: str) -> str:
    return " ".join(text.split())


def _shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space > limit * 0.8:
        cut = cut[:space]
    return cut.rstrip(" ,;:.-") + "…"


# --- fetching


class _Failed(Exception):
    """One source (or one Hacker News story) could not be read; the message is the human-readable reason."""


async def fetch_all(
    client: httpx.AsyncClient,
    sources: Sequence[str],
    *,
    timeout_s: float = 10.0,
    max_bytes: int = 2_000_000,
    hn_limit: int = 15,
) -> tuple[list[NewsItem], list[str]]:
    """Fetch every source concurrently, each within `timeout_s`. Returns the items (de-duplicated by id, in
    source order) and one short line per failure, e.g. "http://x/feed: HTTP 503"; never raises for a source."""
    results = await asyncio.gather(*(_fetch_source(client, s, timeout_s, max_bytes, hn_limit) for s in sources))
    items: list[NewsItem] = []
    failures: list[str] = []
    seen: set[str] = set()
    for found, failed in results:
        failures.extend(failed)
        for item in found:
            if item.id not in seen:
                seen.add(item.id)
                items.append(item)
    return items, failures


async def _fetch_source(
    client: httpx.AsyncClient, source: str, timeout_s: float, max_bytes: int, hn_limit: int
) -> tuple[list[NewsItem], list[str]]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        async with asyncio.timeout_at(deadline):
            body, content_type = await _get(client, source, max_bytes)
        story_ids = _hn_index(source, body)
        if story_ids is not None:
            return await _fetch_stories(client, source, story_ids[: max(0, hn_limit)], deadline, max_bytes)
        return parse_feed(body, source, content_type), []
    except (TimeoutError, httpx.TimeoutException):
        return [], [f"{source}: timed out after {timeout_s:g}s"]
    except FeedError as exc:
        return [], [str(exc)]
    except _Failed as exc:
        return [], [f"{source}: {exc}"]
    except httpx.HTTPError as exc:
        return [], [f"{source}: request failed ({_describe(exc)})"]
    except Exception as exc:  # a bad source must never take the others down with it
        return [], [f"{source}: {_describe(exc)}"]


async def _get(client: httpx.AsyncClient, url: str, max_bytes: int) -> tuple[bytes, str]:
    async with client.stream("GET", url, headers=_ACCEPT, follow_redirects=True) as response:
        if not response.is_success:
            raise _Failed(f"HTTP {response.status_code}")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise _Failed(f"body larger than {max_bytes} bytes ({declared} declared)")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > max_bytes:
                raise _Failed(f"body larger than {max_bytes} bytes")
        return bytes(body), response.headers.get("content-type", "")


def _hn_index(source: str, body: bytes) -> list[int] | None:
    if not urlsplit(source).path.endswith(HN_INDEXES):
        return None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(data, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in data):
        return data
    return None


async def _fetch_stories(
    client: httpx.AsyncClient, source: str, story_ids: list[int], deadline: float, max_bytes: int
) -> tuple[list[NewsItem], list[str]]:
    """The second step of Hacker News's API: each story from the sibling `item/<id>.json`, concurrently; the
    stories that arrive before the source's deadline count."""
    tasks = [asyncio.create_task(_fetch_story(client, source, story_id, max_bytes)) for story_id in story_ids]
    try:
        if tasks:
            await asyncio.wait(tasks, timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    items: list[NewsItem] = []
    reasons: list[str] = []
    for story_id, task in zip(story_ids, tasks, strict=True):
        if task.cancelled():
            reasons.append(f"item {story_id}: timed out")
        elif (error := task.exception()) is not None:
            reasons.append(f"item {story_id}: {_describe(error)}")
        elif (item := task.result()) is not None:
            items.append(item)
    failures = [f"{source}: {len(reasons)} of {len(tasks)} stories failed ({reasons[0]})"] if reasons else []
    return items, failures


async def _fetch_story(client: httpx.AsyncClient, source: str, story_id: int, max_bytes: int) -> NewsItem | None:
    body, _ = await _get(client, urljoin(source, f"item/{story_id}.json"), max_bytes)
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Failed(f"invalid JSON ({exc})") from None
    if data is None:
        return None
    if not isinstance(data, dict):
        raise _Failed(f"expected an item object, got JSON {type(data).__name__}")
    return _hn_item(data, source)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    text = str(exc).strip()
    if isinstance(exc, _Failed):
        return text
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


# --- choosing what to read

_WORD = re.compile(r"[^\W_]+")
_STOPWORDS = frozenset(
    "the and for with from into onto that this these those your our are was were has have had not but how why "
    "what when who whom its their they them about over under than then more most less very can will all any".split()
)
TITLE_WORD = 2.0
SUMMARY_WORD = 1.0
TITLE_PHRASE = 4.0
SUMMARY_PHRASE = 2.5


def _normal(word: str) -> str:
    """Simple plural stripping, then a trailing 'e' dropped, so cache/caches and policy/policies meet."""
    if len(word) > 4 and word.endswith("ies"):
        word = word[:-3] + "y"
    elif word.endswith(("sses", "xes", "ches", "shes")):
        word = word[:-2]
    elif len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    return word[:-1] if len(word) > 3 and word.endswith("e") else word


@dataclass(frozen=True)
class _Words:
    sequence: tuple[str, ...]
    significant: frozenset[str]


@lru_cache(maxsize=4096)
def _words(text: str) -> _Words:
    raw = _WORD.findall(text.casefold())
    return _Words(
        tuple(_normal(word) for word in raw),
        frozenset(_normal(word) for word in raw if len(word) >= 3 and word not in _STOPWORDS),
    )


def _contains(sequence: tuple[str, ...], phrase: tuple[str, ...]) -> bool:
    width = len(phrase)
    return any(sequence[i : i + width] == phrase for i in range(len(sequence) - width + 1))


def _as_list(values: Sequence[str]) -> list[str]:
    return [values] if isinstance(values, str) else [value for value in values if value.strip()]


def score(item: NewsItem, focus_areas: Sequence[str]) -> float:
    """How relevant `item` is to the focus areas: 0 when unrelated. Per area, the share of its words found in
    the title (weight 2) and summary (1), plus the whole phrase in the title (4) or summary (2.5)."""
    title, summary = _words(item.title), _words(item.summary)
    total = 0.0
    for area in _as_list(focus_areas):
        wanted = _words(area)
        if not wanted.sequence:
            continue
        if wanted.significant:
            share = len(wanted.significant)
            total += TITLE_WORD * len(wanted.significant & title.significant) / share
            total += SUMMARY_WORD * len(wanted.significant & summary.significant) / share
        if _contains(title.sequence, wanted.sequence):
            total += TITLE_PHRASE
        if _contains(summary.sequence, wanted.sequence):
            total += SUMMARY_PHRASE
    return round(total, 4)


@lru_cache(maxsize=1024)
def _topic_pattern(topic: str) -> re.Pattern[str]:
    body = r"\s+".join(re.escape(word) for word in topic.split())
    return re.compile(rf"(?<![^\W_]){body}(?:e?s)?(?![^\W_])", re.IGNORECASE)


def blocked(item: NewsItem, blocked_topics: Sequence[str]) -> bool:
    """Whether any blocked topic appears as a whole word or phrase (case-insensitive) in the title or summary."""
    return any(
        _topic_pattern(topic).search(item.title) or _topic_pattern(topic).search(item.summary)
        for topic in _as_list(blocked_topics)
    )


def pick(
    items: Sequence[NewsItem],
    *,
    focus_areas: Sequence[str],
    blocked_topics: Sequence[str],
    already_read: Collection[str],
    limit: int = 3,
) -> list[tuple[NewsItem, float]]:
    """The `limit` items worth reading, with their scores: best score first, then newest, then by title.
    Blocked, already-read (by id) and, when focus areas are given, unrelated items are left out."""
    focused = bool(_as_list(focus_areas))
    chosen: dict[str, tuple[NewsItem, float]] = {}
    for item in items:
        if item.id in already_read or item.id in chosen or blocked(item, blocked_topics):
            continue
        relevance = score(item, focus_areas) if focused else 0.0
        if focused and relevance <= 0:
            continue
        chosen[item.id] = (item, relevance)
    ranked = sorted(chosen.values(), key=lambda pair: _rank(*pair))
    return ranked[: max(0, limit)]


def _rank(item: NewsItem, relevance: float) -> tuple[float, bool, float, str, str]:
    newest = -item.published.timestamp() if item.published else 0.0
    return (-relevance, item.published is None, newest, item.title.casefold(), item.id)
