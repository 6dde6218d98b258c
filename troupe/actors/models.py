"""Which ChatModel serves a persona: its endpoint, the shared offline LocalModel actor, or the fake.

Built inside whichever actor needs it; endpoint clients are cached per (model, base URL, key variable).
"""

from __future__ import annotations

from troupe.actors.persona_file import PersonaDef
from troupe.chat_model import ChatModel
from troupe.config.settings import Settings

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
            from troupe.integrations.fake_model import ScriptedChatModel

            if self.settings.fake_script:
                return ScriptedChatModel.from_file(self.settings.fake_script)
            return ScriptedChatModel()
        if backend == "local":
            import ray

            from troupe.actors.local_model import LocalChatModel

            handle = ray.get_actor(LOCAL_MODEL_ACTOR, namespace=self.settings.namespace)
            return LocalChatModel(handle)
        from troupe.integrations.model_endpoint import chat_model_for

        return chat_model_for(self.settings, persona.model, persona.base_url, persona.api_key_env)
