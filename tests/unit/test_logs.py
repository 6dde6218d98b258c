"""Log lines: one schema in JSON and text, the turn's context, and phone numbers and secrets masked in
the message, its arguments and tracebacks."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime
from itertools import count
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from pydantic import SecretStr, ValidationError

from troupe.config.settings import Settings
from troupe.core import logs

_loggers = count()
CONFIGURED = "my-configured-vapi-secret-77"

# what must never reach a log line, each with something that must be there in its place
LEAKS = {
    "+14155550100": "+1415•••0100",
    "+1 (415) 555-0199": "+1415•••0199",
    "(415) 555-0123": "•••0123",
    "+44 20 7946 0958": "•••0958",
    "Authorization: Bearer abcdef0123456789": "Bearer ***",
    "sk-proj-0123456789abcdefXYZ": "sk-***",
    "postgresql://troupe:hunter2hunter2@db:5432/troupe": "postgresql://troupe:***@db",
    f"VAPI said {CONFIGURED} here": "VAPI said *** here",
}
RAW = ("4155550100", "555-0199", "555-0123", "7946 0958", "abcdef0123456789", "0123456789abcdef", "hunter2", CONFIGURED)


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    saved = (logs.IDENTITY.default, logs.IDENTITY.kind, logs.IDENTITY.process_id, logs.IDENTITY.resolver)
    logs.MASK.add([CONFIGURED])
    yield
    logs.IDENTITY.default, logs.IDENTITY.kind, logs.IDENTITY.process_id, logs.IDENTITY.resolver = saved


def capture(fmt: logs.Format, name: str = "troupe.test") -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    logger = logging.getLogger(f"{name}.{next(_loggers)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(logs.troupe_handler(logging.StreamHandler(out), fmt))
    return logger, out


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]


@pytest.mark.parametrize("fmt", ["json", "text"])
@pytest.mark.parametrize("raw", list(LEAKS))
def test_phone_numbers_and_secrets_are_masked_in_message_args_and_traceback(fmt: logs.Format, raw: str) -> None:
    logger, out = capture(fmt)
    logger.warning(f"in the message: {raw}")
    logger.warning("in the args: %s (%r)", raw, {"detail": raw})
    try:
        raise RuntimeError(f"in the exception: {raw}")
    except RuntimeError:
        logger.exception("a failure")
    text = out.getvalue()
    for leaked in RAW:
        if leaked in raw:
            assert leaked not in text, text
    assert text.count(LEAKS[raw]) >= 4, text  # message, args (twice) and the exception
    assert "Traceback (most recent call last)" in text  # the traceback is kept, only masked


def test_a_json_line_has_every_field_of_the_schema() -> None:
    logger, out = capture("json", "troupe.runtime")
    logs.identify("session", lambda: "p-123")
    with logs.log_context(persona="Maya", caller="+14155550100", turn_id="t-1"):
        logger.info("turn finished", extra={"event": "turn.finished", "kept_by": "session"})
    logger.info("no turn")
    first, second = lines(out)
    assert list(first)[: len(logs.FIELDS)] == list(logs.FIELDS)
    assert first["event"] == "turn.finished" and first["level"] == "INFO" and first["message"] == "turn finished"
    assert (first["process_kind"], first["process_id"]) == ("session", "p-123")
    assert (first["persona"], first["caller"], first["turn_id"]) == ("Maya", "+1415•••0100", "t-1")
    assert first["kept_by"] == "session" and first["trace_id"] is None
    when = datetime.fromisoformat(str(first["time"]))
    assert str(first["time"]).endswith("Z") and when.utcoffset() is not None and when.utcoffset().total_seconds() == 0
    # the context ends with its block; the event is then the logger's name
    assert (second["persona"], second["caller"], second["turn_id"]) == (None, None, None)
    assert str(second["event"]).startswith("troupe.runtime")


async def test_a_turn_bound_in_a_task_ends_with_it() -> None:
    """What the door and the actors do: bind the turn once at the top of the task that handles it."""
    logger, out = capture("json")

    async def handle(caller: str) -> None:
        logs.bind_context(persona="Tony", caller=caller, turn_id=caller[-4:])
        await asyncio.sleep(0)
        logger.info("in the turn")

    await asyncio.gather(asyncio.create_task(handle("+14155550111")), asyncio.create_task(handle("slack:U0042")))
    logger.info("after")
    got = lines(out)
    assert sorted(str(line["turn_id"]) for line in got[:2]) == ["0042", "0111"]
    assert {line["caller"] for line in got[:2]} == {"+1415•••0111", logs.mask_caller("slack:U0042")}
    assert got[2]["turn_id"] is None


def test_caller_ids_are_never_shown_raw() -> None:
    assert logs.mask_caller("+14155550100") == "+1415•••0100"
    hashed = logs.mask_caller("slack:U0042")
    assert hashed == logs.mask_caller("slack:U0042") and hashed != logs.mask_caller("slack:U0043")
    assert hashed is not None and "U0042" not in hashed
    assert logs.mask_caller("anon-0f3a") == "anon-0f3a" and logs.mask_caller(None) is None


def test_the_trace_id_comes_from_the_current_span() -> None:
    logger, out = capture("json")
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("turn") as span:
        logger.info("inside")
    logger.info("outside")
    inside, outside = lines(out)
    assert inside["trace_id"] == f"{span.get_span_context().trace_id:032x}"
    assert outside["trace_id"] is None


def test_text_lines_carry_the_same_fields() -> None:
    logger, out = capture("text", "troupe.actors.session")
    logs.identify("session", "p-9")
    with logs.log_context(persona="Maya", caller="+14155550100", turn_id="t-2"):
        logger.warning("slow", extra={"event": "turn.slow"})
    line = out.getvalue().strip()
    assert line.endswith("session[p-9] turn.slow: slow persona=Maya caller=+1415•••0100 turn_id=t-2")
    assert line.split(" ")[1] == "WARNING" and line.split(" ")[0].endswith("Z")


def test_the_console_prefix_leaves_time_and_process_out() -> None:
    out = io.StringIO()
    logger = logging.getLogger(f"troupe.console.{next(_loggers)}")
    logger.propagate = False
    logger.addHandler(logs.troupe_handler(logging.StreamHandler(out), "text", prefix="troupe: "))
    logger.warning("the store is slow")
    assert out.getvalue() == f"troupe: WARNING {logger.name}: the store is slow\n"


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_json_off_a_terminal_text_on_one_unless_configured() -> None:
    assert logs.resolve_format("auto", _Stream(tty=False)) == "json"
    assert logs.resolve_format("auto", _Stream(tty=True)) == "text"
    assert logs.resolve_format("json", _Stream(tty=True)) == "json"
    assert logs.resolve_format("text", _Stream(tty=False)) == "text"


def test_configure_sets_the_root_logger_for_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))  # restored afterwards
    monkeypatch.setattr(root, "level", root.level)
    stream = _Stream(tty=False)
    logs.configure(kind="worker", level="INFO", fmt="auto", secrets=["configured-secret-zz9"], stream=stream)
    logging.getLogger("troupe.anything").info("token configured-secret-zz9 and +14155550100")
    logging.getLogger("troupe.anything").debug("not at info")
    (line,) = lines(stream)  # type: ignore[arg-type]
    assert line["process_kind"] == "worker" and line["message"] == "token *** and +1415•••0100"


def test_an_actor_names_its_kind_by_its_class() -> None:
    assert logs.kind_of("SessionActor") == "session"
    assert logs.kind_of("LifeLoopActor") == "life_loop"
    assert logs.kind_of("Orchestrator") == "orchestrator"
    assert logs.kind_of("ServeReplica:troupe:troupe-door") == "door"
    logs.IDENTITY.kind, logs.IDENTITY.default = None, "worker"
    logs.set_kind_resolver(lambda: "orchestrator")
    assert logs.IDENTITY.current()[0] == "orchestrator"


def test_the_secrets_configured_are_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN_MAYA", "xoxb-maya-own-token-123456")
    (tmp_path / "admin.key").write_text("tr_admin-key-from-the-file-0123456789\n")
    settings = Settings(
        data_dir=tmp_path,
        api_keys=SecretStr("ops:operator:operator-secret-4242-abcd"),
        vapi_secret=SecretStr("vapi-secret-value-4242"),
        openai_api_key=SecretStr("plain-key-not-shaped-like-sk"),
    )
    found = logs.secret_values(settings)
    expected = {"operator-secret-4242-abcd", "vapi-secret-value-4242", "plain-key-not-shaped-like-sk",
                "tr_admin-key-from-the-file-0123456789", "xoxb-maya-own-token-123456"}  # fmt: skip
    assert expected <= found


def test_log_settings_are_validated() -> None:
    assert Settings(log_format="JSON", log_level="WARNING").log_format == "json"
    with pytest.raises(ValidationError, match="log_format"):
        Settings(log_format="xml")
