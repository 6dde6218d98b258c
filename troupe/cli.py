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
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from troupe.actors.schedule import ACTIVITIES
from troupe.config.settings import Settings, load_settings
from troupe.errors import TroupeError


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
    return load_settings(**overrides)


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if not _is_loopback(settings.host) and not settings.keys and not args.insecure:
        print(
            f"troupe: refusing to bind {settings.host} with no API key configured; set TROUPE_API_KEYS "
            "or pass --insecure",
            file=sys.stderr,
        )
        return 2
    from troupe.runtime import Runtime

    print(f"troupe: starting ({settings.effective_backend} model, store {_store_label(settings)})", flush=True)
    runtime = Runtime.start(settings, detached=True)
    status = asyncio.run(_await(runtime.orchestrator.status.remote()))
    print(
        f"troupe: running: {len(status['executives'])} executives and "
        f"{len(status['personas']) - len(status['executives'])} specialists, {status['process_count']} processes, "
        f"{status['pool_size']} warm sessions.",
        flush=True,
    )
    print(f"troupe: serving on http://{settings.host}:{settings.port} ({settings.door} door)", flush=True)
    from troupe.app import serve_uvicorn, serve_with_ray

    # a service manager stops troupe with SIGTERM: stop as on Ctrl-C (registry closed, conversations kept)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if settings.door == "uvicorn":
            serve_uvicorn(runtime)
        else:
            serve_with_ray(runtime, blocking=True)
    except KeyboardInterrupt:
        pass
    print("troupe: stopping", flush=True)
    runtime.stop()
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _store_label(settings: Settings) -> str:
    from troupe.config.settings import redact_url

    return redact_url(settings.resolved_database_url)


async def _await(ref: Any) -> Any:
    return await ref


def cmd_chat(args: argparse.Namespace) -> int:
    settings = _settings(args, session_pool_size=1, life_loops_enabled=False)
    from troupe.actors.persona_file import load_personas

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
    from troupe.actors.messages import TurnRequest
    from troupe.chat_model import ChatMessage

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
            if event.kind == "delta":
                print(event.text, end="", flush=True)
            elif event.kind == "error":
                print(f"[error: {event.text}]", end="", flush=True)
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
    uptime = int(status["uptime_s"])
    print(
        f"troupe: {status['status']}, up {uptime // 3600}h{uptime % 3600 // 60}m{uptime % 60}s, "
        f"{status['process_count']} live processes, {status['session_count']} sessions, "
        f"{status['pool_size']} warm, model: {status['backend']}"
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
    from troupe.actors.persona_file import PersonaCatalog, check_personas

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
    from troupe.actors.persona_file import load_personas
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
    key = args.key or (settings.keys[0] if settings.keys else None)
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
    serve.add_argument("--insecure", action="store_true", help="allow a non-loopback bind without an API key")
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
    trigger.add_argument("--key", help="an API key (default: the first of TROUPE_API_KEYS)")
    trigger.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the activity")
    trigger.set_defaults(func=cmd_trigger)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
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
