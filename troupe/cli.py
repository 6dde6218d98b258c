"""The `troupe` command: serve, chat with a persona in the terminal, show status, list personas, and say
text in a persona's voice.

Assembly only: every command reads Settings once, then calls into the runtime.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from troupe.config.keys import ADMIN_KEY_FILE, ensure_admin_key, read_admin_key
from troupe.config.settings import Settings, load_settings
from troupe.core import logs
from troupe.core.errors import ConfigError, TroupeError
from troupe.core.messages import OrchestratorStatus
from troupe.core.schedule import ACTIVITIES


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    overrides = {
        "data_dir": getattr(args, "data_dir", None),
        "model_backend": getattr(args, "model", None),
        "personas_dir": getattr(args, "personas_dir", None),
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "door": getattr(args, "door", None),
        **extra,
    }
    settings = load_settings(**overrides)
    verbose = getattr(args, "verbose", False)
    logs.configure(
        kind="cli", level="debug" if verbose else "warning", fmt=settings.log_format,
        secrets=logs.secret_values(settings), prefix="troupe: ",
    )  # fmt: skip
    return settings


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args, insecure=True if args.insecure else None)
    admin_key = None
    if settings.insecure:
        if not _is_loopback(settings.host):
            print(f"troupe: --insecure serves with no key at all, so only on loopback (not {settings.host})",
                  file=sys.stderr)  # fmt: skip
            return 2
    else:
        # closed by default: the first start makes an admin key, shown once in the banner
        key, made = ensure_admin_key(settings.data_dir)
        admin_key = key if made else None
    try:
        settings.keyring()  # a malformed TROUPE_API_KEYS or keys file stops troupe here, naming the entry
    except ConfigError as exc:
        print(f"troupe: {exc.message}", file=sys.stderr)
        return 2
    verbose = bool(args.verbose)
    log_dir = _log_to_files(settings, verbose)
    from troupe.app import serve_uvicorn, serve_with_ray
    from troupe.runtime import Runtime, ray_logs_dir

    began = time.perf_counter()
    print("troupe: starting", flush=True)
    runtime = Runtime.begin(settings, detached=True, defer_rest=True, quiet=not verbose)
    timings = {"ray": time.perf_counter() - began}
    _link_ray_logs(log_dir, ray_logs_dir())
    # a service manager stops troupe with SIGTERM: stop as on Ctrl-C (registry closed, conversations kept)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if settings.door == "serve":
            # the door starts while the orchestrator starts its actors; it finds the orchestrator by name
            phase = time.perf_counter()
            serve_with_ray(runtime, blocking=False, quiet=not verbose)
            timings["door"] = time.perf_counter() - phase
            status = runtime.wait_started()
            _opened(runtime, status, timings, began, log_dir, verbose, admin_key)
            _follow(runtime)
        else:
            status = runtime.wait_started()
            serve_uvicorn(
                runtime, on_ready=lambda: _opened(runtime, status, timings, began, log_dir, verbose, admin_key)
            )
    except KeyboardInterrupt:
        pass
    print("troupe: stopping", flush=True)
    runtime.stop()
    return 0


def _opened(
    runtime: Any,
    status: OrchestratorStatus,
    timings: dict[str, float],
    began: float,
    log_dir: Path,
    verbose: bool,
    admin_key: str | None,
) -> None:
    """The door is open: start the life loops and the pool behind it, and print the banner (with the
    admin key the first time only: the panel URL carries it in its fragment, which never leaves the
    browser, and the page signs in with it)."""
    runtime.orchestrator.start_rest.remote()
    settings = runtime.settings
    total = time.perf_counter() - began
    url = f"http://{_url_host(settings.host)}:{settings.port}"
    executives = len(status.executives)
    print(
        f"troupe: ready in {total:.1f} s\n"
        f"  serving   {url}  ({'Ray Serve' if settings.door == 'serve' else 'uvicorn'} door)\n"
        f"  model     {_model_label(settings)}\n"
        f"  store     {_store_label(settings)}\n"
        f"  personas  {executives} executives, {len(status.personas) - executives} specialists\n"
        f"  logs      {log_dir}\n"
        f"  access    {_access_label(settings, admin_key)}\n"
        f"  next      troupe chat tony    (the control panel: {url}/{'#key=' + admin_key if admin_key else ''})",
        flush=True,
    )
    if verbose:
        phases = {**timings, **status.startup_s}
        print("troupe: start-up: " + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()), flush=True)


def _access_label(settings: Settings, admin_key: str | None) -> str:
    if settings.insecure:
        return "OPEN to anyone who reaches this port (--insecure; loopback only)"
    path = settings.data_dir / ADMIN_KEY_FILE
    if admin_key:
        return f"admin key {admin_key}  (shown once; kept in {path}, mode 0600)"
    return f"keys required; the admin key is in {path}"


def _follow(runtime: Any) -> None:
    """Block, printing one line per notable event (an actor died, restarted, gave up) until interrupted."""
    import ray

    seq = 0
    while True:
        try:
            events = ray.get(runtime.orchestrator.events_since.remote(seq, 100), timeout=30)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
            events = []
        for event in events:
            seq = event["seq"]
            line = notable(event)
            if line:
                print(f"troupe: {line}", flush=True)
        time.sleep(1.0)


def notable(event: dict[str, Any]) -> str | None:
    """The one console line an operator wants for an event, or None for routine ones."""
    kind = event.get("type", "")
    who = event.get("agent") or "?"
    if kind == "process.died":
        return f"{event.get('name') or who} died: {event.get('cause') or 'its process exited'}; {event.get('reason')}"
    if kind == "process.restarted":
        return f"{who}'s actor {event.get('process')} restarted (restart {event.get('restarts')})"
    if kind == "process.failed" and event.get("error"):
        return f"{who}: process {event.get('process')} failed: {event.get('error')}"
    if kind == "process.escalated":
        return f"{who}: gave up restarting ({event.get('reason')}); needs an operator"
    return None


def _log_to_files(settings: Settings, verbose: bool) -> Path:
    """troupe's and Ray's driver logs go to <data dir>/logs/troupe.log, as JSON lines (TROUPE_LOG_FORMAT=text:
    text); the console shows troupe's own warnings (everything with --verbose), as text on a terminal.
    With the uvicorn door this process is the door; with Serve's, the door is a replica (its own lines)."""
    log_dir = settings.data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    console = logs.configure(
        kind="door" if settings.door == "uvicorn" else "cli",
        level="debug" if verbose else settings.log_level,
        fmt=settings.log_format,
        secrets=logs.secret_values(settings),
        prefix="troupe: ",
    )
    if not verbose:
        console.setLevel(logging.WARNING)
        # troupe's own warnings, and uvicorn's (a port already in use, say)
        console.addFilter(lambda record: record.name.startswith(("troupe", "uvicorn.error")))
    to_file = logging.FileHandler(log_dir / "troupe.log")
    logging.getLogger().addHandler(logs.troupe_handler(to_file, "text" if settings.log_format == "text" else "json"))
    if verbose:
        logging.getLogger("httpx").setLevel(logging.INFO)  # a line per model call and outbound request
    return log_dir


def _link_ray_logs(log_dir: Path, ray_logs: str | None) -> None:
    """<data dir>/logs/ray points at this run's Ray logs (workers, raylet, Serve), wherever Ray keeps them."""
    if not ray_logs:
        return
    link = log_dir / "ray"
    try:
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(ray_logs, target_is_directory=True)
    except OSError:
        pass


def _url_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def _model_label(settings: Settings) -> str:
    backend = settings.effective_backend
    if backend == "local":
        name = settings.local_model_path.name if settings.local_model_path else "Gemma 3 270M"
        return f"offline {name} (llama.cpp, {settings.local_model_slots} callers at once)"
    if backend == "fake":
        return "the scripted fake model"
    return f"{settings.model} at {_endpoint_host(settings)}"


def _endpoint_host(settings: Settings) -> str:
    import httpx

    return httpx.URL(settings.openai_base_url or "https://api.openai.com/v1").host


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _store_label(settings: Settings) -> str:
    from troupe.config.settings import redact_url

    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        return f"SQLite {url.split(':///', 1)[-1]}"
    return redact_url(url)


async def _await(ref: Any) -> Any:
    return await ref


def cmd_chat(args: argparse.Namespace) -> int:
    settings = _settings(args, session_pool_size=1, life_loops_enabled=False)
    from troupe.core.persona_file import load_personas

    catalog = load_personas(settings.personas_dir)
    persona = catalog.get(args.persona)
    from troupe.runtime import Runtime

    print(f"Starting troupe ({settings.effective_backend} model)...", file=sys.stderr, flush=True)
    runtime = Runtime.start(settings, catalog=catalog)
    try:
        asyncio.run(_chat_loop(runtime, persona.name, args.caller))
    finally:
        runtime.stop()
    return 0


async def _chat_loop(runtime: Any, persona: str, caller: str) -> None:
    from troupe.core.chat import ChatMessage
    from troupe.core.messages import Delta, Failed, TurnRequest

    client = runtime.client()
    print(f"You are talking with {persona}. Ctrl-D ends the conversation.", file=sys.stderr)
    loop = asyncio.get_running_loop()
    while True:
        try:
            line = await loop.run_in_executor(None, lambda: input("you> "))
        except EOFError:
            print(file=sys.stderr)
            break
        if not line.strip():
            continue
        print(f"{persona.lower()}> ", end="", flush=True)
        request = TurnRequest(caller_id=caller, persona=persona, messages=(ChatMessage(role="user", content=line),))
        async for event in client.turn(request):
            match event:
                case Delta(text=text):
                    print(text, end="", flush=True)
                case Failed(text=text):
                    print(f"[error: {text}]", end="", flush=True)
        print(flush=True)
    summary = await runtime.orchestrator.end_session.remote(caller, persona)
    if summary:
        print(f"({persona} will remember: {summary})", file=sys.stderr)


def cmd_status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from troupe.runtime import Runtime

    runtime = Runtime.connect(settings)

    async def gather() -> tuple[Any, Any]:
        return await runtime.orchestrator.status.remote(), await runtime.orchestrator.list_processes.remote()

    status, processes = asyncio.run(gather())
    uptime = int(status.uptime_s)
    print(
        f"troupe: {status.status}, up {uptime // 3600}h{uptime % 3600 // 60}m{uptime % 60}s, "
        f"{status.process_count} live processes, {status.session_count} sessions, "
        f"{status.pool_size} warm, model: {status.backend}"
    )
    print(f"{'ID':8}  {'KIND':11}  {'AGENT':8}  {'STATUS':9}  {'RESTARTS':8}  {'TOKENS':>7}  {'COST':>8}  NAME")
    for p in processes:
        m = p.metrics
        print(
            f"{p.id:8}  {p.kind:11}  {p.agent:8}  {p.status:9}  {p.restarts:8}  {m.total_tokens:7}  "
            f"{m.estimated_cost:8.4f}  {p.name}"
        )
    return 0


def cmd_personas(args: argparse.Namespace) -> int:
    from troupe.core.persona_file import PersonaCatalog, check_personas

    directory = Path(args.personas_dir) if args.personas_dir else _settings(args).personas_dir
    valid, problems = check_personas(directory)
    for persona in PersonaCatalog(valid):
        team = f" team: {', '.join(persona.team)}" if persona.team else ""
        print(
            f"{persona.name:10} {persona.kind:10} {persona.role} (budget ${persona.budget_usd:.2f}, "
            f"{persona.layers_tokens} prompt tokens of {persona.token_budget}){team}"
        )
    for problem in problems:
        print(f"invalid: {problem}", file=sys.stderr)
    return 1 if problems else 0


def cmd_say(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from troupe.core.persona_file import load_personas
    from troupe.integrations.elevenlabs import speak

    persona = load_personas(settings.personas_dir).get(args.persona)
    audio = asyncio.run(speak(settings, persona, args.text))
    if args.out == "-":
        sys.stdout.buffer.write(audio)
        sys.stdout.buffer.flush()
        return 0
    out = Path(args.out or f"{persona.key}.mp3")
    out.write_bytes(audio)
    print(f"troupe: {persona.name} said it: {out} ({len(audio)} bytes)", file=sys.stderr)
    return 0


def cmd_trigger(args: argparse.Namespace) -> int:
    """Run a life activity now on a running troupe, through its /internal/life/trigger door."""
    import httpx

    settings = _settings(args)
    url = (args.url or f"http://{settings.host}:{settings.port}").rstrip("/")
    key = args.key or read_admin_key(settings.data_dir)
    params = {"activity": args.activity, **({"persona": args.persona} if args.persona else {})}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.post(f"{url}/internal/life/trigger", params=params, headers=headers, timeout=args.timeout)
    except httpx.HTTPError as exc:
        print(f"troupe: cannot reach troupe at {url}: {type(exc).__name__}", file=sys.stderr)
        return 2
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code >= 400:
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else error or response.text[:200]
        print(f"troupe: {message} (HTTP {response.status_code})", file=sys.stderr)
        return 1
    results = body.get("results") or {body.get("persona", "?"): body.get("result", "")}
    for persona, result in results.items():
        print(f"{persona}: {result}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="troupe", description="Run a company of AI personas on Ray.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", help="where the SQLite store lives (TROUPE_DATA_DIR, default ~/.troupe)")
        p.add_argument("--personas-dir", help="persona files (TROUPE_PERSONAS_DIR, default: the shipped ones)")
        p.add_argument(
            "--model",
            choices=["auto", "endpoint", "local", "fake"],
            help="model backend (TROUPE_MODEL_BACKEND); auto: endpoint if OPENAI_BASE_URL/KEY set",
        )

    serve = sub.add_parser("serve", help="start troupe and serve it")
    common(serve)
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 3000)")
    serve.add_argument("--door", choices=["serve", "uvicorn"], help="Ray Serve (default) or uvicorn in this process")
    serve.add_argument(
        "--insecure", action="store_true", help="serve with no API key at all (loopback only; the banner says so)"
    )
    serve.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
        help="show Ray's and Serve's own logs and the start-up time of each phase",
    )  # fmt: skip
    serve.set_defaults(func=cmd_serve)

    chat = sub.add_parser("chat", help="talk with a persona in the terminal")
    common(chat)
    chat.add_argument("persona", help="persona name, e.g. tony")
    chat.add_argument("--caller", default="terminal", help="caller id (memory is kept per caller)")
    chat.set_defaults(func=cmd_chat)

    status = sub.add_parser("status", help="show a running troupe's processes")
    status.set_defaults(func=cmd_status)

    personas = sub.add_parser("personas", help="list personas and their validation errors")
    personas.add_argument("--personas-dir", help="directory of persona files")
    personas.set_defaults(func=cmd_personas)

    say = sub.add_parser("say", help="speak text in a persona's voice (ElevenLabs; needs ELEVENLABS_API_KEY)")
    say.add_argument("--personas-dir", help="directory of persona files")
    say.add_argument("persona", help="persona name, e.g. maya")
    say.add_argument("text", help="what to say")
    say.add_argument("--out", help="MP3 file to write (default <persona>.mp3; - for standard output)")
    say.set_defaults(func=cmd_say)

    trigger = sub.add_parser("trigger", help="run a life activity now on a running troupe")
    trigger.add_argument("activity", choices=ACTIVITIES, help="the activity to run")
    trigger.add_argument("--persona", help="one executive (default: all of them)")
    trigger.add_argument("--url", help="troupe's URL (default http://TROUPE_HOST:TROUPE_PORT)")
    trigger.add_argument("--key", help="an admin or operator key (default: the one in <data dir>/admin.key)")
    trigger.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the activity")
    trigger.set_defaults(func=cmd_trigger)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.verbose = getattr(args, "verbose", False)
    # until a command reads its settings (and with them TROUPE_LOG_FORMAT and the secrets to mask)
    logs.configure(kind="cli", level="debug" if args.verbose else "warning", prefix="troupe: ")
    try:
        return int(args.func(args) or 0)
    except TroupeError as exc:
        print(f"troupe: error: {exc.message}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        lines = [f"{'.'.join(str(x) for x in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()]
        print("troupe: error: bad configuration:\n  " + "\n  ".join(lines), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
