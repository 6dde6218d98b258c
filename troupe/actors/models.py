"""Which ChatModel serves a persona: its endpoint, the shared offline LocalModel actor, or the fake.

Built inside whichever actor needs it; endpoint clients are cached per (model, base URL, key variable).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from troupe.clients.chat_model import ChatModel
from troupe.config.settings import Settings
from troupe.core.chat import ModelChunk, ModelRequest
from troupe.core.errors import ModelUnavailable
from troupe.core.persona_file import PersonaDef

LOCAL_MODEL_NAME = "gemma-3-270m"
LOCAL_MODEL_ACTOR = "local-model"


def model_name_for(settings: Settings, persona: PersonaDef) -> str:
    backend = settings.effective_backend
    if backend == "local":
        return LOCAL_MODEL_NAME
    if backend == "fake":
        return "fake"
    return persona.model or settings.model


class ModelFactory:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._cache: dict[tuple[str, str | None, str | None], ChatModel] = {}

    def for_persona(self, persona: PersonaDef) -> ChatModel:
        backend = self.settings.effective_backend
        key = (backend + ":" + model_name_for(self.settings, persona), persona.base_url, persona.api_key_env)
        if backend != "endpoint":
            key = (backend, None, None)
        if key not in self._cache:
            self._cache[key] = self._build(persona)
        return self._cache[key]

    def _build(self, persona: PersonaDef) -> ChatModel:
        backend = self.settings.effective_backend
        if backend == "fake":
            from troupe.clients.fake_model import ScriptedChatModel

            if self.settings.fake_script:
                return ScriptedChatModel.from_file(self.settings.fake_script)
            return ScriptedChatModel()
        if backend == "local":
            return LocalByName(self.settings.namespace)
        from troupe.clients.model_endpoint import chat_model_for

        return chat_model_for(self.settings, persona.model, persona.base_url, persona.api_key_env)


class LocalByName:
    """The shared LocalModel actor, looked up by name for each request: after the supervisor restarts
    it, the next request reaches the new actor instead of a dead handle."""

    name = LOCAL_MODEL_NAME

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        import ray

        from troupe.actors.local_model import LocalChatModel

        try:
            handle = ray.get_actor(LOCAL_MODEL_ACTOR, namespace=self.namespace)
        except ValueError:
            raise ModelUnavailable(await self._why_not()) from None
        async for chunk in LocalChatModel(handle).stream(request):
            yield chunk

    async def _why_not(self) -> str:
        """No model actor: the orchestrator knows whether it is restarting or has given up, and why."""
        import ray

        try:
            orchestrator = ray.get_actor("orchestrator", namespace=self.namespace)
            status: str = await orchestrator.model_status.remote()
        except Exception:
            return "The offline model is not running."
        if status.startswith("failed: "):
            return status.removeprefix("failed: ")
        return "The offline model is restarting; try again in a moment."
