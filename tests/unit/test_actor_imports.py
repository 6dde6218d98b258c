"""What an actor process imports to hold a handle: Ray loads an actor's class (and so its module) to
make a handle of it, so every session actor imports the orchestrator's module. Starting a session actor
is what a caller waits for when the warm pool runs dry, and a burst of callers starts one per caller."""

from __future__ import annotations

import subprocess
import sys


def imported_after(first: str, then: str) -> set[str]:
    """The top-level packages importing `then` adds to a fresh interpreter that imported `first`."""
    script = (
        f"import sys, {first}; before = {{m.split('.')[0] for m in sys.modules}}; import {then}; "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules} - before)))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_a_session_actor_holding_the_orchestrators_handle_loads_no_life_loop_clients() -> None:
    added = imported_after("troupe.actors.session", "troupe.actors.orchestrator")
    # the life loop's Slack client and HTTP stacks are the orchestrator's children's, not a session's
    assert not added & {"slack_sdk", "aiohttp", "feedparser"}, added
