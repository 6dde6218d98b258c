"""fetch_all over real HTTP against loopback news sources: every format, Hacker News's two-step API, and
sources that are down, slow, malformed or huge reported as failures while the others still deliver."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from troupe.life.news import fetch_all, pick
from troupe.testing.fake_feeds import HN_TOP, FakeFeedsServer
from troupe.testing.loopback import free_port


@pytest.fixture(scope="module")
def feeds() -> Iterator[FakeFeedsServer]:
    with FakeFeedsServer() as server:
        yield server


@pytest.fixture(autouse=True)
def fresh(feeds: FakeFeedsServer) -> None:
    feeds.feeds.reset()
    feeds.feeds.slow_delay_s = 30.0


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as http:
        yield http


async def test_every_format_arrives_once_each(feeds: FakeFeedsServer, client: httpx.AsyncClient) -> None:
    sources = [feeds.url(path) for path in ("rss.xml", "atom.xml", "feed.json", "v0/topstories.json")]
    items, failures = await fetch_all(client, sources)
    assert failures == []
    by_source = {source: [i.title for i in items if i.source == source] for source in sources}
    assert len(by_source[feeds.url("rss.xml")]) == 6
    assert by_source[feeds.url("atom.xml")] == [  # its syndicated copy of an RSS article is dropped
        "Postmortem: a cache stampede took down checkout",
        "Vector databases compared for retrieval workloads",
    ]
    assert "Weekend football results" in by_source[feeds.url("feed.json")]
    assert "Ask HN: How do you test database migrations?" in by_source[feeds.url("v0/topstories.json")]
    assert len({i.id for i in items}) == len(items)
    assert all(feeds.feeds.hits(path) == 1 for path in ("/rss.xml", "/atom.xml", "/feed.json"))


async def test_hacker_news_story_ids_are_followed_to_their_items(
    feeds: FakeFeedsServer, client: httpx.AsyncClient
) -> None:
    top = feeds.url("v0/topstories.json")
    items, failures = await fetch_all(client, [top], hn_limit=3)
    assert failures == []
    assert [i.title for i in items] == [  # the third id is a deleted story
        "Show HN: A tiny scheduler for AI infrastructure on bare metal",
        "Ask HN: How do you test database migrations?",
    ]
    assert items[1].url == "https://news.ycombinator.com/item?id=9002"
    assert {i.source for i in items} == {top}
    assert [feeds.feeds.hits(f"/v0/item/{i}.json") for i in HN_TOP] == [1, 1, 1, 0, 0, 0]


async def test_a_missing_hacker_news_story_is_reported_and_the_rest_kept(
    feeds: FakeFeedsServer, client: httpx.AsyncClient
) -> None:
    new = feeds.url("v0/newstories.json")
    items, failures = await fetch_all(client, [new])
    assert [i.title for i in items] == ["A history of the pencil"]
    assert failures == [f"{new}: 1 of 2 stories failed (item 9404: HTTP 404)"]


async def test_broken_sources_are_reported_while_the_others_deliver(
    feeds: FakeFeedsServer, client: httpx.AsyncClient
) -> None:
    broken = {path: feeds.url(path) for path in ("down", "slow.xml", "trickle.xml", "malformed.xml", "huge.xml")}
    unreachable = f"http://127.0.0.1:{free_port()}/feed.xml"
    sources = [feeds.url("rss.xml"), *broken.values(), unreachable, feeds.url("feed.json")]
    items, failures = await fetch_all(client, sources, timeout_s=1.0, max_bytes=200_000)
    assert {i.source for i in items} == {feeds.url("rss.xml"), feeds.url("feed.json")}
    assert len(items) == 9
    by_source = {failure.partition(": ")[0]: failure.partition(": ")[2] for failure in failures}
    assert set(by_source) == {*broken.values(), unreachable}
    assert by_source[broken["down"]] == "HTTP 503"
    assert by_source[broken["slow.xml"]] == "timed out after 1s"
    assert by_source[broken["trickle.xml"]] == "timed out after 1s"
    assert by_source[broken["malformed.xml"]].startswith("malformed feed: not well-formed XML")
    assert by_source[broken["huge.xml"]] == "body larger than 200000 bytes"
    assert by_source[unreachable].startswith("request failed (ConnectError")
    assert all(len(failure) < 300 for failure in failures)


async def test_a_slow_source_within_the_timeout_still_counts(feeds: FakeFeedsServer, client: httpx.AsyncClient) -> None:
    feeds.feeds.slow_delay_s = 0.3
    items, failures = await fetch_all(client, [feeds.url("slow.xml")], timeout_s=5.0)
    assert failures == [] and len(items) == 6


async def test_fetched_news_is_picked_for_the_persona(feeds: FakeFeedsServer, client: httpx.AsyncClient) -> None:
    sources = [feeds.url(path) for path in ("rss.xml", "atom.xml", "feed.json", "v0/topstories.json")]
    items, _ = await fetch_all(client, sources)
    read = next(i.id for i in items if i.title.startswith("Show HN"))
    chosen = pick(
        items,
        focus_areas=["AI infrastructure", "reliability"],
        blocked_topics=["celebrity gossip"],
        already_read={read},
        limit=3,
    )
    assert [i.title for i, _ in chosen] == [
        "Inference serving on Kubernetes: an AI infrastructure field guide",
        "Scaling AI infrastructure: lessons from a year of GPU clusters",
        "The reliability of boring technology",
    ]
