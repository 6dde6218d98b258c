"""troupe's settings, read once from the environment (and CLI flags) and validated at start-up.

Everything that needs configuration receives a `Settings` instance; nothing else reads os.environ,
except the `openai` SDK, which reads OPENAI_API_KEY / OPENAI_BASE_URL itself exactly as it documents.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from troupe.config.keys import Keyring

ModelBackend = Literal["auto", "endpoint", "local", "fake"]


def redact_url(url: str) -> str:
    """A database or endpoint URL with its password replaced by ***, safe to print."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


PLATFORM_PREFIXES = ("VAPI_", "ELEVENLABS_", "SLACK_")


def split_list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def platform_secret(prefix: str, persona: str) -> str | None:
    """A persona's own platform credential, e.g. SLACK_BOT_TOKEN_MAYA (read at use: the set is open-ended)."""
    return os.environ.get(f"{prefix}_{persona.upper()}") or None


class Settings(BaseSettings):
    """All of troupe's configuration. Environment names are TROUPE_<FIELD> unless noted."""

    model_config = SettingsConfigDict(env_prefix="TROUPE_", extra="ignore", frozen=True)

    # --- state
    data_dir: Path = Field(default=Path("~/.troupe"), description="Where the SQLite store and journals live.")
    database_url: str = Field(default="", description="SQLAlchemy URL; empty means SQLite in data_dir.")
    # every actor process has its own pool: PostgreSQL sees at most processes x (pool + overflow) connections
    # (bench/pg_connections.py: 80 processes at 1+0 stay at 80 connections; at 1+2 they fill a stock server's 100)
    db_pool_size: int = Field(
        default=1, ge=1, le=100, description="PostgreSQL connections each process keeps open (TROUPE_DB_POOL_SIZE)."
    )
    db_max_overflow: int = Field(
        default=0, ge=0, le=100, description="Extra connections a busy process may open for a moment, then closes."
    )
    db_pool_timeout_s: float = Field(
        default=10.0, gt=0, description="How long a write waits for a free connection before 'database busy'."
    )
    db_pool_recycle_s: float = Field(
        default=1800.0, gt=0, description="A pooled connection older than this is replaced (proxies drop old ones)."
    )
    seen_events_ttl_s: float = Field(
        default=86_400.0,
        ge=60,
        description="How long a webhook's event id is remembered as seen (platform retries come within hours).",
    )
    seen_events_max_rows: int = Field(
        default=500_000, ge=1000, description="Most seen event ids kept; past it the oldest are forgotten early."
    )
    history_keep_days: float = Field(
        default=30.0,
        ge=1,
        description="Days kept of each turn's figures, finished process rows, life runs and articles read "
        "(conversations, memories, journals and posts are kept until a caller is forgotten).",
    )

    # --- personas
    personas_dir: Path | None = Field(default=None, description="Persona files; default: the shipped ones.")
    default_persona: str = "Tony"

    # --- model access
    model_backend: ModelBackend = Field(
        default="auto", description="auto: endpoint if OPENAI_BASE_URL or OPENAI_API_KEY is set, else local."
    )
    model: str = Field(default="gpt-4o-mini", description="Default model name for the endpoint (TROUPE_MODEL).")
    openai_base_url: str | None = Field(default=None, validation_alias="OPENAI_BASE_URL")
    openai_api_key: SecretStr | None = Field(default=None, validation_alias="OPENAI_API_KEY")
    model_timeout_s: float = Field(default=60.0, gt=0)
    model_max_retries: int = Field(default=1, ge=0, le=10)
    local_model_path: Path | None = Field(default=None, description="A GGUF file; default: the PyPI Gemma 3 270M.")
    local_model_threads: int = Field(default=2, ge=1, le=64)
    local_model_context: int = Field(default=2048, ge=256, description="Context tokens per caller slot.")
    local_model_slots: int = Field(
        default=4, ge=1, le=64, description="Callers the offline model generates for at once; others queue."
    )
    fake_script: Path | None = Field(default=None, description="JSON script for the fake model (tests, demos).")
    max_tool_iterations: int = Field(default=4, ge=1, le=20)

    # --- sessions
    session_pool_size: int = Field(default=2, ge=0, le=256, description="Warm session actors kept ready.")
    max_sessions: int = Field(default=64, ge=1, le=4096, description="Concurrent sessions before 'at capacity'.")
    session_idle_timeout_s: float = Field(
        default=120.0, gt=0, description="An idle session is summarised into memory and its actor released."
    )
    turn_timeout_s: float = Field(
        default=300.0, gt=0, description="How long a turn may run before its session moves on."
    )
    session_budget_usd: float = Field(default=1.0, ge=0, description="Per-session spend cap.")
    recall_memories: int = Field(
        default=6, ge=0, le=50,
        description="How many of a caller's memories bearing on their words each turn's prompt gets (0: none).",
    )  # fmt: skip
    actor_call_timeout_s: float = Field(
        default=15.0, gt=0, description="How long the door waits for a session actor on a turn's hot path."
    )
    session_start_timeout_s: float = Field(
        default=30.0, gt=0, description="How long a caller may wait for a session (a cold actor included)."
    )
    orchestrator_recovery_s: float = Field(
        default=20.0, gt=0, description="How long the door keeps asking an orchestrator that is restarting."
    )
    history_turns: int = Field(default=20, ge=1, description="Messages of transcript replayed to the model.")
    default_region: str = Field(
        default="US", min_length=2, max_length=2, description="Region for phone numbers written without +country."
    )

    # --- supervision
    supervisor_poll_s: float = Field(default=1.0, gt=0)
    restart_backoff_s: float = Field(default=0.2, ge=0)
    restart_backoff_max_s: float = Field(default=10.0, ge=0)

    # --- life loops
    life_loops_enabled: bool = True
    life_tick_s: float = Field(default=30.0, gt=0, description="How often each life loop looks for due activities.")
    life_grace_s: float = Field(
        default=900.0, ge=0, description="A slot missed by up to this long still runs (on start-up); older: skipped."
    )
    life_clock_start: datetime | None = Field(
        default=None, description="Run life loops on a simulated clock starting here (demos, tests); unset: real."
    )
    life_clock_speed: float = Field(default=1.0, gt=0, description="Simulated seconds per real second.")
    life_clock_anchor: float = Field(default_factory=time.time, description="Real time at which the clock starts.")
    news_sources: str = Field(
        default="https://hacker-news.firebaseio.com/v0/topstories.json",
        description="Comma-separated RSS/Atom/JSON feeds for personas whose file names none.",
    )
    news_blocked_topics: str = Field(default="", description="Comma-separated topics no persona reads about.")
    news_items: int = Field(default=3, ge=1, le=20, description="Articles a persona keeps (with its take) per run.")
    news_timeout_s: float = Field(default=10.0, gt=0, description="Per-feed fetch timeout.")
    goals_dir: Path | None = Field(default=None, description="Goals files (<persona>.yaml); default: the shipped ones.")
    reflection_threshold: int = Field(
        default=12, ge=1, description="Things lived through (turns, articles, entries) that prompt an early reflection."
    )
    life_slack_channel: str = Field(default="", description="Slack channel that receives personas' posts.")
    social_webhook_url: str = Field(
        default="", description="Social webhook for posts; each persona's key is TROUPE_SOCIAL_KEY_<PERSONA>."
    )
    posts_per_day: int = Field(default=3, ge=0, description="Posts one persona may publish per 24 hours.")
    post_blocked_words: str = Field(
        default="password,api key,secret,confidential,layoff,acquisition,lawsuit",
        description="Comma-separated words and phrases a post may not contain (it is kept, not published).",
    )

    # --- serving
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Largest request body accepted.")
    max_message_chars: int = Field(default=32_000, ge=100, description="Longest single message accepted.")
    api_keys: SecretStr = Field(
        default=SecretStr(""),
        description="API keys, comma-separated: 'name:role:secret' (role admin, operator, client or platform), "
        "or a bare key (an admin key). Added to <data dir>/admin.key, which troupe serve makes on first start.",
    )
    api_keys_file: Path | None = Field(default=None, description="A file of keys, one 'name:role:secret' a line.")
    insecure: bool = Field(
        default=False, description="Serve with no key at all (loopback only; troupe serve --insecure)."
    )
    allowed_hosts: str = Field(
        default="",
        description="Comma-separated Host names the door answers ('*': any); default: loopback names, the bound "
        "address and TROUPE_PUBLIC_URL's host.",
    )
    public_docs: bool = Field(default=False, description="Serve /docs and /openapi.json without a key.")
    metrics_public: bool = Field(default=False, description="Serve /metrics without a key (else an operator key).")
    cors_origins: str = Field(default="", description="Comma-separated origins allowed on /api/* (default: none).")
    rate_limit_per_minute: int = Field(default=120, ge=0, description="Requests per caller per minute; 0 = off.")
    door: Literal["serve", "uvicorn"] = Field(default="serve", description="Ray Serve, or uvicorn in-process.")
    serve_max_ongoing_requests: int = Field(default=256, ge=1, description="Concurrent requests per Serve replica.")
    door_replicas: int = Field(
        default=1, ge=1, le=64, description="Serve replicas of the door; past one, Serve's proxy serves --port."
    )
    placement: Literal["spread", "pack"] = Field(
        default="spread",
        description="Where persona, session, life-loop and task actors go on a cluster: spread over the live "
        "nodes in turn, or Ray's default (pack), which fills one node first. The orchestrator stays on the "
        "head node, and restarted actors go to its node.",
    )
    serve_direct_ingress: bool = Field(
        default=True,
        description="Serve's throughput-optimized mode: the replica itself listens on --port (direct ingress) "
        "and Serve's proxy moves to serve_proxy_port. Applies when troupe starts Ray; a joined cluster keeps its own.",
    )
    serve_proxy_port: int = Field(
        default=0, ge=0, le=65535, description="Serve proxy port with direct ingress; 0 = port+1."
    )
    # --- voice and chat platforms (names as each platform's docs use them; secrets never logged)
    public_url: str = Field(default="", description="troupe's URL as platforms reach it (VAPI assistant-request).")
    vapi_secret: SecretStr | None = Field(default=None, validation_alias="VAPI_SECRET")
    vapi_api_key: SecretStr | None = Field(default=None, validation_alias="VAPI_API_KEY")
    vapi_base_url: str = Field(default="https://api.vapi.ai", validation_alias="VAPI_BASE_URL")
    vapi_phone_number_id: str = Field(default="", validation_alias="VAPI_PHONE_NUMBER_ID")
    vapi_assistants: str = Field(default="", description="VAPI assistant ids mapped to personas: 'asst-1=Maya,...'.")
    elevenlabs_api_key: SecretStr | None = Field(default=None, validation_alias="ELEVENLABS_API_KEY")
    elevenlabs_webhook_secret: SecretStr | None = Field(default=None, validation_alias="ELEVENLABS_WEBHOOK_SECRET")
    elevenlabs_base_url: str = Field(default="https://api.elevenlabs.io", validation_alias="ELEVENLABS_BASE_URL")
    slack_bot_token: SecretStr | None = Field(default=None, validation_alias="SLACK_BOT_TOKEN")
    slack_signing_secret: SecretStr | None = Field(default=None, validation_alias="SLACK_SIGNING_SECRET")
    slack_api_base_url: str = Field(default="https://slack.com/api/", validation_alias="SLACK_API_BASE_URL")
    slack_admin_users: str = Field(default="", description="Comma-separated Slack user ids allowed admin words.")
    webhook_tolerance_s: int = Field(default=300, ge=1, description="Oldest signed webhook timestamp accepted.")
    outbound_retries: int = Field(default=3, ge=0, le=10, description="Retries of a call to a platform that is down.")
    # --- traces: OpenTelemetry's own variable names; no endpoint, no tracing (and next to no cost)
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None, validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT", description="OTLP/HTTP base URL (+/v1/traces)."
    )
    otel_exporter_otlp_traces_endpoint: str | None = Field(
        default=None, validation_alias="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", description="OTLP/HTTP traces URL."
    )
    otel_service_name: str = Field(default="troupe", min_length=1, validation_alias="OTEL_SERVICE_NAME")
    otel_traces_sampler: Literal[
        "always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off",
        "parentbased_traceidratio",
    ] = Field(default="parentbased_always_on", validation_alias="OTEL_TRACES_SAMPLER")  # fmt: skip
    otel_traces_sampler_arg: float = Field(default=1.0, ge=0, le=1, validation_alias="OTEL_TRACES_SAMPLER_ARG")
    otel_bsp_schedule_delay: int = Field(
        default=5000, ge=1, validation_alias="OTEL_BSP_SCHEDULE_DELAY", description="Most milliseconds before spans go."
    )
    otel_sdk_disabled: bool = Field(default=False, validation_alias="OTEL_SDK_DISABLED")

    # --- logs
    log_format: Literal["auto", "json", "text"] = Field(
        default="auto", description="json, text, or auto: text on a terminal, JSON lines anywhere else."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Lowest level of troupe's lines in the log file and Ray workers' logs."
    )

    host: str = "127.0.0.1"
    port: int = Field(default=3000, ge=1, le=65535)
    ray_address: str | None = Field(default=None, validation_alias="RAY_ADDRESS")
    namespace: str = "troupe"

    @field_validator("data_dir", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_database_url(self) -> Settings:
        url = self.database_url
        if url and not url.startswith(("sqlite", "postgres")):
            raise ValueError(f"TROUPE_DATABASE_URL must be a sqlite or postgresql URL, got {redact_url(url)}")
        return self

    def keyring(self) -> Keyring:
        """Every key the door accepts (reads the keys file and admin.key: call it once, at start)."""
        return Keyring.load(self.api_keys.get_secret_value(), self.api_keys_file, self.data_dir)

    @property
    def hosts_allowed(self) -> tuple[str, ...]:
        """Host names the door answers: TROUPE_ALLOWED_HOSTS, else loopback, the bound host and the public URL's."""
        given = tuple(h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip())
        if given:
            return given
        hosts = {"localhost", "127.0.0.1", "::1"}
        if self.host not in ("0.0.0.0", "::", ""):
            hosts.add(self.host.lower())
        if self.public_url:
            public = urlsplit(self.public_url).hostname
            if public:
                hosts.add(public.lower())
        return tuple(sorted(hosts))

    @property
    def resolved_database_url(self) -> str:
        """The async SQLAlchemy URL to use: the configured one with an async driver, or SQLite in data_dir."""
        url = self.database_url
        if not url:
            return f"sqlite+aiosqlite:///{self.data_dir / 'troupe.db'}"
        if url.startswith(("postgres://", "postgresql://")):
            return "postgresql+asyncpg://" + url.split("://", 1)[1]
        if url.startswith("sqlite://"):
            return "sqlite+aiosqlite://" + url.split("://", 1)[1]
        return url

    @property
    def effective_backend(self) -> Literal["endpoint", "local", "fake"]:
        if self.model_backend != "auto":
            return self.model_backend
        return "endpoint" if (self.openai_base_url or self.openai_api_key) else "local"

    def env_for_workers(self) -> dict[str, str]:
        """The variables a Ray worker on another node needs to rebuild these settings, secrets left out:
        Ray shows a job's runtime_env in its dashboard and state API. Workers on this machine inherit the
        environment troupe started Ray with; on other nodes the secrets come from each node's own
        environment (a Kubernetes Secret in KubeRay's pod spec, say), as the README describes."""
        env = {k: v for k, v in os.environ.items() if k.startswith("TROUPE_") or k.startswith(PLATFORM_PREFIXES)}
        if "OPENAI_BASE_URL" in os.environ:
            env["OPENAI_BASE_URL"] = os.environ["OPENAI_BASE_URL"]
        return {k: v for k, v in env.items() if not is_secret(k, v)}


SECRET_WORDS = ("KEY", "SECRET", "TOKEN", "PASSWORD", "CREDENTIAL")


def is_secret(name: str, value: str) -> bool:
    """A variable that holds a secret: by its name, or a URL carrying a password (a database URL)."""
    if any(word in name.upper() for word in SECRET_WORDS):
        return True
    return "://" in value and redact_url(value) != value


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; CLI flags come in as overrides. Fails fast naming the variable."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)  # type: ignore[arg-type]
