"""News sources on loopback, for tests and demos: RSS, Atom, JSON Feed and Hacker News's two-step API, plus
sources that fail the ways real ones do (down, slow, trickling, malformed, huge). Counts every request."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.middleware.base import RequestResponseEndpoint

from troupe.testing.loopback import LoopbackServer

RSS = """<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/">
<channel>
  <title>Fake Engineering Weekly</title>
  <link>https://weekly.example/</link>
  <description>Mixed news for tests</description>
  <item>
    <title>Scaling AI infrastructure: lessons from a year of GPU clusters</title>
    <link>https://weekly.example/ai-infrastructure-gpu-clusters</link>
    <guid isPermaLink="false">weekly-101</guid>
    <description><![CDATA[<p>What we learned running <b>inference</b> and training fleets: scheduling, capacity
      planning and the cost of idle accelerators.</p><script>track()</script>]]></description>
    <pubDate>Mon, 03 Mar 2025 09:00:00 GMT</pubDate>
  </item>
  <item>
    <title>Error budgets that actually change behaviour</title>
    <link>https://weekly.example/error-budgets</link>
    <description>&lt;p&gt;Reliability is a feature: tying SLOs to the release train.&lt;/p&gt;</description>
    <pubDate>Sun, 02 Mar 2025 15:30:00 +0100</pubDate>
  </item>
  <item>
    <title>Zero-downtime database migrations with expand and contract</title>
    <link>https://weekly.example/database-migrations</link>
    <description>Rename a column without an outage: dual writes, backfills and the contract step.</description>
    <pubDate>Sat, 01 Mar 2025 08:00:00 GMT</pubDate>
  </item>
  <item>
    <title>Celebrity gossip: who wore what at the awards</title>
    <link>https://weekly.example/celebrity-gossip</link>
    <description>The red carpet, ranked. Includes a section on the infrastructure of fame.</description>
    <pubDate>Tue, 04 Mar 2025 20:00:00 GMT</pubDate>
  </item>
  <item>
    <title>Architecture decision records, a gentle introduction</title>
    <link>https://weekly.example/adr-intro</link>
    <description>Writing down software architecture choices so the next team knows why.</description>
    <pubDate>Fri, 28 Feb 2025 12:00:00 GMT</pubDate>
  </item>
  <item>
    <title>Local bakery wins regional bread prize</title>
    <link>https://weekly.example/bakery</link>
    <description>A sourdough starter older than the town hall.</description>
    <pubDate>Thu, 27 Feb 2025 07:00:00 GMT</pubDate>
  </item>
</channel>
</rss>
"""

ATOM = """<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
  <title>Fake Ops Journal</title>
  <id>urn:fake:ops-journal</id>
  <updated>2025-03-04T10:00:00Z</updated>
  <link rel="self" href="/atom.xml"/>
  <entry>
    <title>Postmortem: a cache stampede took down checkout</title>
    <id>urn:fake:ops-journal:1</id>
    <link rel="alternate" href="https://ops.example/posts/cache-stampede"/>
    <published>2025-03-04T10:00:00Z</published>
    <summary type="html">&lt;p&gt;A reliability story: request coalescing, jittered expiry and &lt;em&gt;one&lt;/em&gt;
      missing timeout.&lt;/p&gt;</summary>
  </entry>
  <entry>
    <title type="text">Zero-downtime database migrations, revisited</title>
    <id>urn:fake:ops-journal:2</id>
    <link href="https://weekly.example/database-migrations"/>
    <updated>2025-03-01T09:00:00Z</updated>
    <summary>The same article, syndicated.</summary>
  </entry>
  <entry>
    <title>Vector databases compared for retrieval workloads</title>
    <id>urn:fake:ops-journal:3</id>
    <link rel="alternate" href="/posts/vector-databases"/>
    <updated>2025-02-26T18:00:00+02:00</updated>
    <content type="html">&lt;p&gt;Benchmarks of recall against latency.&lt;/p&gt;</content>
  </entry>
</feed>
"""

JSON_FEED = {
    "version": "https://jsonfeed.org/version/1.1",
    "title": "Fake Platform Notes",
    "items": [
        {
            "id": "notes-1",
            "url": "https://notes.example/inference-on-kubernetes",
            "title": "Inference serving on Kubernetes: an AI infrastructure field guide",
            "content_text": "Autoscaling model servers on GPU nodes, and what breaks first.",
            "date_published": "2025-03-03T12:00:00Z",
        },
        {
            "id": "notes-2",
            "url": "https://notes.example/weekend-football",
            "title": "Weekend football results",
            "content_html": "<ul><li>Home 2 &ndash; 1 Away</li></ul>",
            "date_published": "2025-03-02T18:00:00Z",
        },
        {
            "id": "notes-3",
            "url": "https://notes.example/monolith-first",
            "title": "Monolith first? Revisiting a software architecture debate",
            "summary": "Modular monoliths versus microservices, ten years on.",
            "date_published": "2025-02-25T08:00:00+00:00",
        },
    ],
}

HN_STORIES: dict[int, dict[str, object] | None] = {
    9001: {"id": 9001, "type": "story", "by": "alice", "time": 1741000000, "score": 120,
           "title": "Show HN: A tiny scheduler for AI infrastructure on bare metal",
           "url": "https://hn-links.example/tiny-scheduler"},
    9002: {"id": 9002, "type": "story", "by": "bob", "time": 1740990000, "score": 88,
           "title": "Ask HN: How do you test database migrations?",
           "text": "We run <i>expand/contract</i> by hand.<p>Is there tooling that checks it?"},
    9003: None,
    9004: {"id": 9004, "type": "story", "by": "carol", "time": 1740980000, "score": 64,
           "title": "The reliability of boring technology", "url": "https://hn-links.example/boring-tech"},
    9005: {"id": 9005, "type": "job", "by": "acme", "time": 1740970000, "title": "Acme is hiring",
           "url": "https://acme.example/jobs"},
    9006: {"id": 9006, "type": "story", "by": "dave", "time": 1740960000, "score": 12,
           "title": "A history of the pencil", "url": "https://hn-links.example/pencil"},
}  # fmt: skip
HN_TOP = [9001, 9002, 9003, 9004, 9005, 9006]
HN_NEW = [9006, 9404]  # 9404 does not exist: its item fetch fails with a 404

MALFORMED = """<?xml version="1.0"?>
<rss version="2.0"><channel><title>Broken</title>
<item><title>Unclosed item</title><link>https://broken.example/1</link>
</channel></rss>
"""


@dataclass
class FakeFeeds:
    """The state behind the server: requests per path, and how the slow and huge sources misbehave."""

    slow_delay_s: float = 30.0
    huge_bytes: int = 3_000_000
    requests: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)

    def hits(self, path: str) -> int:
        with self._lock:
            return self.requests[path]

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    def stop(self) -> None:
        """Cut short the slow, trickling and huge responses still in flight."""
        self._stopping.set()

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.middleware("http")
        async def count(request: Request, call_next: RequestResponseEndpoint) -> Response:
            with self._lock:
                self.requests[request.url.path] += 1
            return await call_next(request)

        @app.get("/rss.xml")
        async def rss() -> Response:
            return Response(RSS, media_type="application/rss+xml")

        @app.get("/atom.xml")
        async def atom() -> Response:
            return Response(ATOM, media_type="application/atom+xml")

        @app.get("/feed.json")
        async def json_feed() -> JSONResponse:
            return JSONResponse(JSON_FEED, media_type="application/feed+json")

        @app.get("/v0/topstories.json")
        async def top_stories() -> JSONResponse:
            return JSONResponse(HN_TOP)

        @app.get("/v0/newstories.json")
        async def new_stories() -> JSONResponse:
            return JSONResponse(HN_NEW)

        @app.get("/v0/item/{story_id}.json")
        async def story(story_id: int) -> JSONResponse:
            if story_id not in HN_STORIES:
                return JSONResponse({"error": "not found"}, 404)
            return JSONResponse(HN_STORIES[story_id])

        @app.get("/slow.xml")
        async def slow(request: Request) -> Response:
            await self._wait(request, self.slow_delay_s)
            return Response(RSS, media_type="application/rss+xml")

        @app.get("/trickle.xml")
        async def trickle(request: Request) -> StreamingResponse:
            return StreamingResponse(self._trickle(request), media_type="application/rss+xml")

        @app.get("/down")
        async def down() -> Response:
            return Response("service unavailable", 503, headers={"Retry-After": "120"})

        @app.get("/malformed.xml")
        async def malformed() -> Response:
            return Response(MALFORMED, media_type="application/rss+xml")

        @app.get("/huge.xml")
        async def huge() -> StreamingResponse:
            return StreamingResponse(self._huge(), media_type="application/rss+xml")

        return app

    async def _wait(self, request: Request, seconds: float) -> None:
        """Sleep, but stop early once the client has gone or the server is stopping (so shutdown is quick)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self._stopping.is_set():
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.05)

    async def _trickle(self, request: Request) -> AsyncIterator[bytes]:
        """Headers at once, then the body a few bytes every 0.2 s: each read is quick, the whole is slow."""
        body = RSS.encode()
        deadline = time.monotonic() + self.slow_delay_s
        for start in range(0, len(body), 16):
            if self._stopping.is_set() or await request.is_disconnected():
                return
            yield body[start : start + 16]
            if time.monotonic() < deadline:
                await asyncio.sleep(0.2)

    async def _huge(self) -> AsyncIterator[bytes]:
        yield b'<?xml version="1.0"?>\n<rss version="2.0"><channel><title>Huge</title>\n'
        item = b"<item><title>Filler</title><description>" + b"x" * 4000 + b"</description></item>\n"
        for _ in range(self.huge_bytes // len(item) + 1):
            if self._stopping.is_set():
                return
            yield item
        yield b"</channel></rss>\n"


class FakeFeedsServer(LoopbackServer):
    """Runs FakeFeeds on loopback in a background thread (a context manager)."""

    label = "fake feeds server"

    def __init__(self, port: int | None = None) -> None:
        self.feeds = FakeFeeds()
        super().__init__(self.feeds.app(), port, timeout_graceful_shutdown=1)

    @property
    def base_url(self) -> str:
        return self.root

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def __exit__(self, *exc: object) -> None:
        self.feeds.stop()
        super().__exit__(*exc)
