"""The voice WebSocket's ticket book: a ticket opens one socket, within its minute, for whom it was issued."""

from __future__ import annotations

from troupe.integrations.tickets import TicketBook


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_ticket_is_redeemed_once_for_its_subject() -> None:
    book = TicketBook(clock=Clock())
    ticket = book.issue("key:panel")
    assert len(ticket) >= 40 and ticket != book.issue("key:panel")  # random, and new each time
    assert book.redeem(ticket) == "key:panel"
    assert book.redeem(ticket) is None  # the second time: refused


def test_a_ticket_expires_after_its_lifetime() -> None:
    clock = Clock()
    book = TicketBook(ttl_s=60, clock=clock)
    fresh, stale = book.issue("a"), book.issue("b")
    clock.now += 60
    assert book.redeem(fresh) == "a"  # at the very end of its minute
    clock.now += 0.001
    assert book.redeem(stale) is None
    assert book.redeem(stale) is None


def test_unknown_and_empty_tickets_are_refused() -> None:
    book = TicketBook(clock=Clock())
    book.issue("a")
    assert book.redeem("not-a-ticket") is None
    assert book.redeem("") is None


def test_the_book_is_bounded_and_forgets_expired_tickets() -> None:
    clock = Clock()
    book = TicketBook(ttl_s=60, kept=3, clock=clock)
    first = book.issue("first")
    others = [book.issue(str(n)) for n in range(3)]
    assert len(book) == 3 and book.redeem(first) is None  # the oldest made room
    assert book.redeem(others[-1]) == "2"
    clock.now += 61
    book.issue("later")
    assert len(book) == 1  # the expired ones went when the next was issued
