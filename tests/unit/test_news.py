"""News parsing and choosing, as plain functions: every feed format, refusals of malformed input, and how
score, blocked and pick decide what a persona reads."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import pytest

from troupe.life.news import FeedError, NewsItem, blocked, parse_feed, pick, score
from troupe.testing.fake_feeds import ATOM, HN_STORIES, JSON_FEED, RSS

SOURCE = "https://feeds.example/news.xml"


def item(title: str, summary: str = "", *, day: int = 1, url: str = "") -> NewsItem:
    url = url or f"https://example.com/{title.lower().replace(' ', '-')}"
    published = datetime(2025, 3, day, tzinfo=UTC)
    return NewsItem(hashlib.sha256(url.encode()).hexdigest()[:16], title, url, summary, SOURCE, published)


# --- parsing


def test_rss_items_have_plain_text_summaries_utc_dates_and_stable_ids() -> None:
    items = parse_feed(RSS.encode(), SOURCE, "application/rss+xml")
    assert len(items) == 6
    first = items[0]
    assert first.title == "Scaling AI infrastructure: lessons from a year of GPU clusters"
    assert first.url == "https://weekly.example/ai-infrastructure-gpu-clusters"
    assert first.summary.startswith("What we learned running inference and training fleets")
    assert "<" not in first.summary and "track()" not in first.summary
    assert first.id == hashlib.sha256(first.url.encode()).hexdigest()[:16]
    assert first.source == SOURCE
    assert items[1].summary == "Reliability is a feature: tying SLOs to the release train."  # entity-escaped HTML
    assert items[1].published == datetime(2025, 3, 2, 14, 30, tzinfo=UTC)  # +0100 converted
    assert parse_feed(RSS.encode(), SOURCE) == items


def test_rss_guid_stands_in_for_a_missing_link() -> None:
    body = b"""<rss version="2.0"><channel>
      <item><title>Permalink guid</title><guid>https://example.com/a</guid></item>
      <item><title>Opaque guid</title><guid isPermaLink="false">tag:example.com,2025:b</guid></item>
      <item><title>Relative</title><link>/c</link><pubDate>not a date</pubDate></item>
    </channel></rss>"""
    permalink, opaque, relative = parse_feed(body, SOURCE)
    assert permalink.url == "https://example.com/a"
    assert opaque.url == "" and opaque.id == hashlib.sha256(b"tag:example.com,2025:b").hexdigest()[:16]
    assert relative.url == "https://feeds.example/c" and relative.published is None


def test_atom_entries_use_the_alternate_link_and_strip_html() -> None:
    source = "http://127.0.0.1:1/atom.xml"
    stampede, syndicated, vectors = parse_feed(ATOM.encode(), source, "application/atom+xml")
    assert stampede.url == "https://ops.example/posts/cache-stampede"
    assert stampede.summary == "A reliability story: request coalescing, jittered expiry and one missing timeout."
    assert stampede.published == datetime(2025, 3, 4, 10, tzinfo=UTC)
    assert syndicated.published == datetime(2025, 3, 1, 9, tzinfo=UTC)  # <updated> when not <published>
    assert vectors.url == "http://127.0.0.1:1/posts/vector-databases"
    assert vectors.summary == "Benchmarks of recall against latency."  # from <content>
    assert vectors.published == datetime(2025, 2, 26, 16, tzinfo=UTC)


def test_the_same_article_in_two_formats_gets_the_same_id() -> None:
    rss = {i.url: i.id for i in parse_feed(RSS.encode(), "https://a.example/rss")}
    atom = {i.url: i.id for i in parse_feed(ATOM.encode(), "https://b.example/atom")}
    shared = "https://weekly.example/database-migrations"
    assert rss[shared] == atom[shared]


def test_json_feed_items() -> None:
    items = parse_feed(json.dumps(JSON_FEED).encode(), SOURCE, "application/feed+json")
    assert [i.title for i in items] == [
        "Inference serving on Kubernetes: an AI infrastructure field guide",
        "Weekend football results",
        "Monolith first? Revisiting a software architecture debate",
    ]
    assert items[0].summary == "Autoscaling model servers on GPU nodes, and what breaks first."
    assert items[1].summary == "Home 2 – 1 Away"
    assert items[2].summary == "Modular monoliths versus microservices, ten years on."
    assert items[0].published == datetime(2025, 3, 3, 12, tzinfo=UTC)


def test_hacker_news_items_skip_deleted_and_jobs_and_link_ask_hn_to_its_page() -> None:
    body = json.dumps(list(HN_STORIES.values())).encode()
    items = parse_feed(body, "https://hacker-news.firebaseio.com/v0/topstories.json")
    assert [i.title for i in items] == [
        "Show HN: A tiny scheduler for AI infrastructure on bare metal",
        "Ask HN: How do you test database migrations?",
        "The reliability of boring technology",
        "A history of the pencil",
    ]
    ask = items[1]
    assert ask.url == "https://news.ycombinator.com/item?id=9002"
    assert ask.summary == "We run expand/contract by hand. Is there tooling that checks it?"
    assert ask.published == datetime.fromtimestamp(1740990000, UTC)


def test_long_summaries_are_cut_to_500_characters() -> None:
    text = "word " * 400
    body = f"<rss><channel><item><title>Long</title><link>https://x.example/</link><description>{text}"
    body += "</description></item></channel></rss>"
    (long,) = parse_feed(body.encode(), SOURCE)
    assert len(long.summary) <= 500 and long.summary.startswith("word word")


def test_an_empty_feed_is_no_items_not_an_error() -> None:
    assert parse_feed(b'<rss version="2.0"><channel><title>Quiet</title></channel></rss>', SOURCE) == []
    assert parse_feed(b'{"version": "https://jsonfeed.org/version/1.1", "items": []}', SOURCE) == []


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"<rss><channel><item><title>Open</channel></rss>", "not well-formed XML"),
        (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">]><rss><channel/></rss>', "DTD"),
        (b'<rss><channel><item><title>&lol;</title></item></channel><!ENTITY x "y"></rss>', "DTD"),
        (b"<html><body>Not a feed</body></html>", "not RSS or Atom"),
        (b'<rss version="2.0"><title>No channel</title></rss>', "without a <channel>"),
        (b'{"title": "no items here"}', "without an 'items' list"),
        (b'{"version": "https://jsonfeed.org/version/1.1", "items": {}}', "'items' is not a list"),
        (b'"just a string"', "neither a JSON Feed nor a Hacker News"),
        (b'[{"id": 1}, "two"]', "neither a JSON Feed nor a Hacker News"),
        (b"[1, 2, 3]", "story ids"),
        (b"{not json", "invalid JSON"),
        (b"  \n", "empty body"),
        (b"hello", "neither XML nor JSON"),
    ],
)
def test_malformed_input_raises_feed_error_naming_the_source(body: bytes, why: str) -> None:
    with pytest.raises(FeedError) as raised:
        parse_feed(body, SOURCE)
    assert isinstance(raised.value, ValueError)
    message = str(raised.value)
    assert message.startswith(f"{SOURCE}: malformed feed:") and why in message


# --- choosing


def test_unrelated_items_score_zero_and_scoring_is_deterministic() -> None:
    bakery = item("Local bakery wins regional bread prize", "A sourdough starter older than the town hall.")
    assert score(bakery, ["AI infrastructure", "database migration"]) == 0.0
    assert score(bakery, []) == 0.0
    gpu = item("Scaling AI infrastructure", "GPU clusters")
    assert score(gpu, ["AI infrastructure"]) == score(gpu, ["AI infrastructure"]) > 0


def test_whole_phrases_beat_scattered_words_and_titles_beat_summaries() -> None:
    areas = ["software architecture"]
    phrase_in_title = item("Notes on software architecture")
    words_in_title = item("Architecture of old software")
    phrase_in_summary = item("Weekly notes", "This week: software architecture reviews.")
    words_in_summary = item("Weekly notes", "Software for pricing; an architecture of incentives.")
    one_word = item("Architecture tours of Vienna")
    scores = [score(i, areas) for i in (phrase_in_title, phrase_in_summary, words_in_title, words_in_summary)]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 4
    assert score(phrase_in_summary, areas) > score(words_in_title, areas) > score(one_word, areas) > 0


def test_plurals_and_case_still_match() -> None:
    migrations = item("Zero-downtime DATABASE MIGRATIONS")
    assert score(migrations, ["database migration"]) == score(item("Zero-downtime database migration"),
                                                              ["database migration"])  # fmt: skip
    assert score(item("Policies for on-call"), ["on-call policy"]) > 0


def test_short_words_count_only_as_part_of_a_phrase() -> None:
    assert score(item("AI takes over the newsroom"), ["AI infrastructure"]) == 0.0
    assert score(item("AI infrastructure is expensive"), ["AI infrastructure"]) > score(
        item("Infrastructure is expensive"), ["AI infrastructure"]
    )


def test_more_focus_areas_matched_scores_higher() -> None:
    areas = ["reliability", "database migration"]
    both = item("Reliability during a database migration")
    one = item("Reliability during a deploy")
    assert score(both, areas) > score(one, areas) > 0


def test_blocked_matches_whole_words_and_phrases_in_title_or_summary() -> None:
    gossip = item("Celebrity Gossip: who wore what", "The red carpet, ranked.")
    assert blocked(gossip, ["celebrity gossip"])
    assert blocked(item("Awards night", "More celebrity  gossip than ever."), ["celebrity gossip"])
    assert blocked(item("Elections ahead"), ["election"])
    assert not blocked(item("Software awards"), ["war"])
    assert not blocked(item("Celebrity chefs", "No gossip here, only recipes."), ["celebrity gossip"])
    assert not blocked(gossip, [])


def test_pick_leaves_out_blocked_read_and_unrelated_items() -> None:
    gpu = item("Scaling AI infrastructure on GPUs", day=3)
    budgets = item("Error budgets and reliability", day=2)
    gossip = item("Celebrity gossip about AI infrastructure startups", day=4)
    bakery = item("Local bakery wins bread prize", day=5)
    migrations = item("Database migrations without downtime", day=1)
    chosen = pick(
        [gpu, budgets, gossip, bakery, migrations],
        focus_areas=["AI infrastructure", "reliability", "database migration"],
        blocked_topics=["celebrity gossip"],
        already_read={budgets.id},
        limit=5,
    )
    assert [i.title for i, _ in chosen] == [gpu.title, migrations.title]
    assert all(relevance > 0 for _, relevance in chosen)


def test_pick_orders_by_score_then_recency_then_title_and_honours_the_limit() -> None:
    areas = ["reliability"]
    strong = item("Reliability, reliability", "All about reliability.", day=1)
    newer = item("Reliability notes", day=9)
    older_b = item("B: reliability", day=5)
    older_a = item("A: reliability", day=5)
    chosen = pick([older_b, strong, older_a, newer], focus_areas=areas, blocked_topics=[], already_read=())
    assert [i.title for i, _ in chosen] == [strong.title, newer.title, older_a.title]
    assert chosen[0][1] == score(strong, areas)
    assert len(pick([older_b, older_a, newer, strong], focus_areas=areas, blocked_topics=[], already_read=(),
                    limit=10)) == 4  # fmt: skip


def test_without_focus_areas_pick_keeps_the_newest() -> None:
    old, mid, new = item("Old", day=1), item("Mid", day=2), item("New", day=3)
    undated = NewsItem("u" * 16, "Undated", "https://example.com/undated", "", SOURCE, None)
    chosen = pick([old, undated, new, mid, new], focus_areas=[], blocked_topics=["mid"], already_read=(), limit=4)
    assert [(i.title, relevance) for i, relevance in chosen] == [("New", 0.0), ("Old", 0.0), ("Undated", 0.0)]


# --- what feedparser reads that the hand-written parser did not, and what defusedxml still refuses


def test_rss_090_and_091_feeds_are_read() -> None:
    rss090 = b"""<?xml version="1.0"?>
    <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns="http://my.netscape.com/rdf/simple/0.9/">
      <channel><title>Mozilla Dot Org</title><link>http://www.mozilla.org</link><description>x</description></channel>
      <item><title>New Status Updates</title><link>http://www.mozilla.org/status/</link></item>
    </rdf:RDF>"""
    (old,) = parse_feed(rss090, SOURCE)
    assert (old.title, old.url) == ("New Status Updates", "http://www.mozilla.org/status/")
    rss091 = b"""<?xml version="1.0"?><!-- a Userland 0.91 feed --><rss version="0.91"><channel><title>Old</title>
      <link>https://old.example/</link><language>en</language>
      <item><title>Ninety-one</title><link>https://old.example/91</link><description>An old one.</description></item>
    </channel></rss>"""
    (ninety_one,) = parse_feed(rss091, SOURCE)
    assert (ninety_one.title, ninety_one.summary) == ("Ninety-one", "An old one.")


def test_rss_10_takes_content_encoded_and_dublin_core_dates() -> None:
    body = b"""<?xml version="1.0"?>
    <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns="http://purl.org/rss/1.0/"
             xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:content="http://purl.org/rss/1.0/modules/content/">
      <channel rdf:about="http://x.example/"><title>One</title><link>http://x.example/</link><description>d</description>
      </channel>
      <item rdf:about="http://x.example/a"><title>RSS one</title><link>http://x.example/a</link>
        <dc:date>2025-03-02T14:30:00+01:00</dc:date>
        <content:encoded><![CDATA[<p>Hi <b>there</b>.</p>]]></content:encoded></item>
    </rdf:RDF>"""
    (entry,) = parse_feed(body, SOURCE)
    assert entry.summary == "Hi there."
    assert entry.published == datetime(2025, 3, 2, 13, 30, tzinfo=UTC)


def test_atom_03_is_read_and_its_relative_links_resolved() -> None:
    body = b"""<?xml version="1.0"?><feed version="0.3" xmlns="http://purl.org/atom/ns#"><title>Old atom</title>
      <entry><title>Atom 0.3 entry</title><link rel="alternate" type="text/html" href="/posts/1"/>
        <issued>2025-03-02T14:30:00+01:00</issued><modified>2025-03-02T14:30:00+01:00</modified>
        <summary>zero three</summary></entry></feed>"""
    (entry,) = parse_feed(body, SOURCE)
    assert entry.url == "https://feeds.example/posts/1" and entry.summary == "zero three"
    assert entry.published == datetime(2025, 3, 2, 13, 30, tzinfo=UTC)


def test_a_feed_level_xml_base_resolves_relative_links() -> None:
    body = b"""<feed xmlns="http://www.w3.org/2005/Atom" xml:base="https://base.example/blog/"><title>t</title>
      <entry><title>Relative</title><link href="posts/2"/><id>urn:x:2</id><updated>2025-03-02T14:30:00Z</updated>
      </entry></feed>"""
    (entry,) = parse_feed(body, SOURCE)
    assert entry.url == "https://base.example/blog/posts/2"  # not against the feed's own URL


def test_cdata_and_html_entities_in_titles_are_plain_text() -> None:
    body = b"""<rss version="2.0"><channel>
      <item><title><![CDATA[Rock &amp; Roll <b>live</b>]]></title><link>https://x.example/2</link></item>
      <item><title>Tom &amp; Jerry &#8211; &#x201C;classic&#x201D;</title><link>https://x.example/3</link></item>
    </channel></rss>"""
    cdata, escaped = parse_feed(body, SOURCE)
    assert cdata.title == "Rock & Roll live"
    assert escaped.title == "Tom & Jerry – “classic”"


def test_dates_in_odd_formats() -> None:
    stamps = [
        "Sun, 02 Mar 2025 14:30:00 +01:00",  # RFC 822 with an ISO-style offset (read as UTC by email.utils)
        "2025-03-02T13:30:00+00:00Z",  # an offset and a Z
        "2025-03-02 14:30:00 +0100",
        "Sun, 2 Mar 2025 08:30 EST",
        "Sunday, 02 March 2025 13:30:00 +0000",
    ]
    items = "".join(f"<item><title>{n}</title><link>https://d.example/{n}</link><pubDate>{stamp}</pubDate></item>"
                    for n, stamp in enumerate(stamps))  # fmt: skip
    parsed = parse_feed(f'<rss version="2.0"><channel>{items}</channel></rss>'.encode(), SOURCE)
    assert [i.published for i in parsed] == [datetime(2025, 3, 2, 13, 30, tzinfo=UTC)] * len(stamps)


def test_a_feed_with_html_entities_xml_does_not_define_is_still_read() -> None:
    body = b"""<rss version="2.0"><channel><item><title>Caf&eacute; &amp; bar&nbsp;news</title>
      <link>https://x.example/1</link><description>Tom &amp; Jerry&hellip;</description></item></channel></rss>"""
    (entry,) = parse_feed(body, SOURCE)  # not well-formed XML (bozo), yet readable
    assert entry.title == "Café & bar news" and entry.summary == "Tom & Jerry…"
    assert entry.url == "https://x.example/1"


BILLION_LAUGHS = b"""<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY lol "lol">
<!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
<!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
<!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
<!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
<!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
<!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">]>
<rss version="2.0"><channel><item><title>&lol9;</title><link>https://x.example/</link></item></channel></rss>"""
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE rss [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<rss version="2.0"><channel><item><title>&xxe;</title><link>https://x.example/</link></item></channel></rss>"""
EXTERNAL_DTD = b"""<?xml version="1.0"?><!DOCTYPE rss SYSTEM "http://127.0.0.1:9/evil.dtd">
<rss version="2.0"><channel><item><title>&evil;</title><link>https://x.example/</link></item></channel></rss>"""


@pytest.mark.parametrize(
    "body",
    [
        BILLION_LAUGHS,
        BILLION_LAUGHS.replace(b"\n", b""),  # the DOCTYPE on the XML declaration's line, which feedparser keeps
        XXE,
        EXTERNAL_DTD,
        BILLION_LAUGHS.decode()
        .replace('<?xml version="1.0"?>', '<?xml version="1.0" encoding="UTF-16"?>')
        .encode("utf-16"),
        b'<?xml version="1.0"?><!DOCTYPE rss><rss version="2.0"><channel/></rss>',  # even an empty DTD
    ],
    ids=["billion-laughs", "one-line", "xxe", "external-dtd", "utf-16", "empty-dtd"],
)
def test_entity_expansion_and_external_entities_are_refused_before_feedparser(body: bytes) -> None:
    with pytest.raises(FeedError, match="DTD or entity declarations is refused"):
        parse_feed(body, SOURCE, "application/rss+xml")


def test_a_feed_that_is_not_well_formed_beyond_entities_is_refused() -> None:
    with pytest.raises(FeedError, match="mismatched tag"):
        parse_feed(b"<rss><channel><item><title>Caf&eacute;</title><link>https://x.example/</channel></rss>", SOURCE)


def test_a_utf16_feed_is_read() -> None:
    body = '<?xml version="1.0" encoding="UTF-16"?><rss version="2.0"><channel><item><title>Grüße</title>'
    body += "<link>https://x.example/gr</link></item></channel></rss>"
    (entry,) = parse_feed(body.encode("utf-16"), SOURCE)
    assert entry.title == "Grüße"
