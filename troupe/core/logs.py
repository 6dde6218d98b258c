"""troupe's log lines: one schema for every process (JSON lines off a terminal, text on one), with phone
numbers and secrets masked in the message, its arguments and any traceback. Plain `logging`: Ray's
workers install it through `setup_worker`, their `worker_process_setup_hook`."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any, Literal

import orjson
from pydantic import SecretStr

from troupe.config.settings import PLATFORM_PREFIXES, Settings, is_secret, load_settings

try:  # tracing is optional: without it (or outside a span) trace_id is null
    from opentelemetry import trace as _otel_trace
except ImportError:  # pragma: no cover - opentelemetry ships with ray[serve]
    _otel_trace = None  # type: ignore[assignment]

Format = Literal["json", "text"]

# the keys of every JSON line, in this order (more may follow: logger, pid, exception, extras)
FIELDS = ("time", "level", "process_kind", "process_id", "persona", "caller", "turn_id", "trace_id", "event", "message")

_persona: ContextVar[str | None] = ContextVar("troupe_log_persona", default=None)
_caller: ContextVar[str | None] = ContextVar("troupe_log_caller", default=None)
_turn_id: ContextVar[str | None] = ContextVar("troupe_log_turn_id", default=None)
_VARS = {"persona": _persona, "caller": _caller, "turn_id": _turn_id}


def bind_context(*, persona: str | None = None, caller: str | None = None, turn_id: str | None = None) -> None:
    """Name the turn for every line logged after it in this task. Each request the door serves and each
    call an async actor takes runs in its own asyncio task (with its own copy of the context), so what
    is bound here ends with it: one line at the top of a turn's handler is enough."""
    for name, value in (("persona", persona), ("caller", caller), ("turn_id", turn_id)):
        if value is not None:
            _VARS[name].set(value)


@contextmanager
def log_context(*, persona: str | None = None, caller: str | None = None, turn_id: str | None = None) -> Iterator[None]:
    """`bind_context` for a block: the fields are restored when it ends."""
    tokens = [
        _VARS[name].set(value)
        for name, value in (("persona", persona), ("caller", caller), ("turn_id", turn_id))
        if value is not None
    ]
    try:
        yield
    finally:
        for token in reversed(tokens):
            token.var.reset(token)


# --- which process this is


class _Identity:
    """The process's kind and troupe process id: set by whoever knows them (the CLI, an actor's
    constructor), else found by `resolver` (the actors layer's: the Ray actor's class), else `default`."""

    def __init__(self) -> None:
        self.default = "cli"
        self.kind: str | None = None
        self.process_id: Callable[[], str | None] | None = None
        self.resolver: Callable[[], str | None] | None = None
        self._resolved: str | None = None

    def current(self) -> tuple[str, str | None]:
        kind = self.kind or self._resolved
        if kind is None and self.resolver is not None:
            try:
                kind = self._resolved = self.resolver()  # an actor's class is fixed for its process: kept
            except Exception:
                kind = None
        process_id = None
        if self.process_id is not None:
            try:
                process_id = self.process_id()
            except Exception:
                process_id = None
        return kind or self.default, process_id


IDENTITY = _Identity()


def identify(kind: str, process_id: str | Callable[[], str | None] | None = None) -> None:
    """This process is a `kind` (orchestrator, persona, session, life_loop, task, door, cli); its troupe
    process id is `process_id`, or what that callable returns when a line is written (a pooled session
    actor's changes with each caller)."""
    IDENTITY.kind = kind
    if isinstance(process_id, str):
        fixed = process_id
        IDENTITY.process_id = lambda: fixed
    else:
        IDENTITY.process_id = process_id


def set_kind_resolver(resolver: Callable[[], str | None]) -> None:
    IDENTITY.resolver = resolver


_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
_RAY_KINDS = {"ServeReplica": "door", "ServeController": "serve_controller", "ProxyActor": "serve_proxy"}


def kind_of(class_name: str) -> str:
    """SessionActor -> session, LifeLoopActor -> life_loop, Orchestrator -> orchestrator; a Serve
    replica (troupe's only deployment) is the door."""
    for prefix, kind in _RAY_KINDS.items():
        if class_name.startswith(prefix):
            return kind
    return _CAMEL.sub("_", class_name.removesuffix("Actor")).lower()


# --- masking

MASKED = "***"
# "+" and digit groups with at most one separator between them: +14155550100, +1 (415) 555-0100
_PHONE_E164 = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .\-]?\(?\d{1,4}\)?){2,6}(?!\d)")
_PHONE_US = re.compile(r"(?<![\w+(])\(?\d{3}\)?[ .\-]\d{3}[ .\-]\d{4}(?![\w])")
_TEL_ID = re.compile(r"\btel-[\w.+:@\-]+")  # phone_identity's id for a number it could not parse
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)[^\s@/]+@")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{4,}")
_NAMED_SECRET = re.compile(
    r"(?i)(?<![A-Za-z])(authorization|x-api-key|api[_-]?key|access[_-]?token|client[_-]?secret|secret|password"
    r"|passwd|token)([\"']?\s*[:=]\s*[\"']?)(?!(?:bearer|basic)\s)(?!\*\*\*)[^\s\"',;&)}\]]+"
)
_KEY_LIKE = re.compile(r"\b(sk-|xox[abposr]-|xapp-|tr_)[A-Za-z0-9_\-]{8,}")
# one cheap look for anything the patterns above could match: most lines have none and skip them
_MAYBE = re.compile(r"(?i)\d{3}|://|bearer|basic|authorization|key|token|secret|passw|sk-|xox|xapp-|tr_|tel-")


def mask_phone(text: str) -> str:
    """+14155550100 -> +1415•••0100: enough to tell callers apart, not enough to call them."""
    digits = re.sub(r"\D", "", text)
    if len(digits) < 8:
        return text
    if len(digits) > 15:  # no phone number, but digits after a "+": shown as little as one
        return "+•••"
    keep_end = 4 if len(digits) >= 10 else 2
    keep_start = min(4, len(digits) - keep_end - 3)
    return f"+{digits[:keep_start]}•••{digits[-keep_end:]}"


def _mask_us(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return f"•••{digits[-4:]}"


class Masker:
    """Replaces what must never reach a log: phone numbers, bearer tokens and Authorization values,
    API-key-shaped strings, URL passwords, and the exact values of the secrets configured."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets: set[str] = set()
        self._exact: re.Pattern[str] | None = None
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        # short values would mask ordinary words; configured secrets are long
        new = {s for s in secrets if s and len(s) >= 6} - self.secrets
        if not new:
            return
        self.secrets |= new
        ordered = sorted(self.secrets, key=len, reverse=True)  # a secret holding another is masked whole
        self._exact = re.compile("|".join(re.escape(s) for s in ordered))

    def __call__(self, text: str) -> str:
        if not text:
            return text
        if self._exact is not None:
            text = self._exact.sub(MASKED, text)
        if not _MAYBE.search(text):
            return text
        text = _URL_PASSWORD.sub(rf"\1{MASKED}@", text)
        text = _BEARER.sub(rf"\1 {MASKED}", text)
        text = _NAMED_SECRET.sub(rf"\1\2{MASKED}", text)
        text = _KEY_LIKE.sub(rf"\1{MASKED}", text)
        text = _TEL_ID.sub("tel-•••", text)
        text = _PHONE_E164.sub(lambda m: mask_phone(m.group(0)), text)
        return _PHONE_US.sub(_mask_us, text)


MASK = Masker()


def mask_caller(caller_id: str | None) -> str | None:
    """A caller id as a log line may show it: a phone number masked (+1415•••0100), an anonymous id as
    is (it names no one), any other id (a Slack user, a client's `user`) as a short stable hash."""
    if not caller_id:
        return None
    if caller_id.startswith("anon-"):
        return caller_id
    if re.fullmatch(r"\+\d{8,15}", caller_id):
        return mask_phone(caller_id)
    return "id-" + hashlib.sha256(caller_id.encode()).hexdigest()[:12]


class MaskFilter(logging.Filter):
    """Masks a record in place (its message with its arguments, its traceback), so every handler after
    this one sees it masked too. Never drops a record, never raises."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        record.msg, record.args = MASK(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = _FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = MASK(record.exc_text)
        if record.stack_info:
            record.stack_info = MASK(record.stack_info)
        record._troupe_masked = True  # the formatters need not mask it again
        return True


_FORMATTER = logging.Formatter()


# --- formatting

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_OWN = {"event", "persona", "caller", "turn_id", "trace_id", "process_kind", "process_id"}


def trace_id() -> str | None:
    """The current OpenTelemetry span's trace id (32 hex digits), or None outside a span."""
    if _otel_trace is None:
        return None
    try:
        context = _otel_trace.get_current_span().get_span_context()
    except Exception:
        return None
    return f"{context.trace_id:032x}" if context.is_valid else None


def _iso(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The schema's fields for a record: `extra=` values first, then the context bound for the turn."""
    kind, process_id = IDENTITY.current()
    given = record.__dict__

    def own(name: str) -> Any:
        value = given.get(name)
        return value if value is not None else (_VARS[name].get() if name in _VARS else None)

    try:
        message = record.getMessage()
    except Exception:
        message = str(record.msg)
    fields: dict[str, Any] = {
        "time": _iso(record.created),
        "level": record.levelname,
        "process_kind": given.get("process_kind") or kind,
        "process_id": given.get("process_id") or process_id,
        "persona": own("persona"),
        "caller": mask_caller(own("caller")),
        "turn_id": own("turn_id"),
        "trace_id": given.get("trace_id") or trace_id(),
        "event": given.get("event") or record.name,
        "message": message if given.get("_troupe_masked") else MASK(message),
    }
    for key, value in given.items():
        if key not in _STANDARD and key not in _OWN and not key.startswith("_"):
            fields[key] = value if isinstance(value, bool | int | float | type(None)) else MASK(str(value))
    return fields


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    text = record.exc_text or (formatter.formatException(record.exc_info) if record.exc_info else None)
    if record.stack_info:
        text = f"{text}\n{record.stack_info}" if text else record.stack_info
    return MASK(text) if text and not getattr(record, "_troupe_masked", False) else text


class JsonFormatter(logging.Formatter):
    """One JSON object a line: the schema's fields, then logger, pid, exception and any extras."""

    def format(self, record: logging.LogRecord) -> str:
        fields = record_fields(record)
        fields["logger"] = record.name
        fields["pid"] = record.process
        exception = _exception_text(self, record)
        if exception:
            fields["exception"] = exception
        return orjson.dumps(fields, default=str).decode()


class TextFormatter(logging.Formatter):
    """The same fields for a person: `<time> <level> <kind>[<id>] <event>: <message> persona=… caller=…`.
    With a `prefix` (a console), the time and process are left out: `troupe: WARNING <event>: …`."""

    def __init__(self, prefix: str | None = None) -> None:
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        f = record_fields(record)
        context = "".join(
            f" {key}={f[key]}" for key in ("persona", "caller", "turn_id", "trace_id") if f.get(key) is not None
        )
        if self.prefix is not None:
            line = f"{self.prefix}{f['level']} {f['event']}: {f['message']}{context}"
        else:
            process = f"{f['process_kind']}[{f['process_id']}]" if f["process_id"] else f["process_kind"]
            line = f"{f['time']} {f['level']} {process} {f['event']}: {f['message']}{context}"
        exception = _exception_text(self, record)
        return f"{line}\n{exception}" if exception else line


def resolve_format(configured: str, stream: IO[str] | None = None) -> Format:
    """json or text as configured; `auto`: text on a terminal, JSON lines anywhere else (a file, a pipe,
    a container's log collector)."""
    if configured in ("json", "text"):
        return configured  # type: ignore[return-value]
    stream = stream if stream is not None else sys.stderr
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


def formatter_for(fmt: Format, *, prefix: str | None = None) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else TextFormatter(prefix)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is when a line is written (Ray's workers and test runners swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        pass


def troupe_handler(handler: logging.Handler, fmt: Format, *, prefix: str | None = None) -> logging.Handler:
    """`handler` writing troupe's lines: masked, in `fmt`."""
    handler.setFormatter(formatter_for(fmt, prefix=prefix))
    handler.addFilter(MaskFilter())
    return handler


def configure(
    *,
    kind: str,
    level: str = "info",
    fmt: str = "auto",
    secrets: Iterable[str] = (),
    stream: IO[str] | None = None,
    prefix: str | None = None,
) -> logging.Handler:
    """The process's logging: the root logger writes masked lines in one format to `stream` (stderr;
    `prefix` starts its text lines). Replaces the root's handlers; the "ray" loggers keep Ray's own."""
    IDENTITY.default = kind
    MASK.add(secrets)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.setLevel(level.upper())
    out = StderrHandler() if stream is None else logging.StreamHandler(stream)
    handler = troupe_handler(out, resolve_format(fmt, stream), prefix=prefix)
    root.addHandler(handler)
    return handler


def secret_values(settings: Settings) -> set[str]:
    """Every secret configured, to mask wherever it appears: the settings' SecretStr fields, each API
    key's secret (admin.key and the keys file included), and per-persona platform credentials, which are
    read from the environment at use (SLACK_BOT_TOKEN_MAYA), so their values come from there too."""
    found: set[str] = set()
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr) and value.get_secret_value():
            found.add(value.get_secret_value())
    try:
        found |= {key.secret.get_secret_value() for key in settings.keyring().keys}
    except Exception:  # a malformed key list is reported at start-up; its entries are masked anyway
        found |= {part for entry in settings.api_keys.get_secret_value().split(",") for part in entry.split(":")}
    found |= {v for k, v in os.environ.items() if k.startswith(PLATFORM_PREFIXES) and is_secret(k, v)}
    return found


def setup_worker() -> None:
    """Ray's `worker_process_setup_hook`: every worker writes troupe's lines with this schema, masked,
    to its stderr (Ray's worker-*.err files). Its kind is found once an actor is created in it."""
    try:
        settings = load_settings()
        level, fmt, secrets = settings.log_level, settings.log_format, secret_values(settings)
    except Exception:  # bad settings fail the actor that reads them, with a clear message; not here
        level, fmt, secrets = "info", "auto", set()
    # the stream Ray gave the worker, kept: a Serve replica later swaps sys.stderr for its own logger
    configure(kind="worker", level=level, fmt=fmt, secrets=secrets, stream=sys.stderr)
