"""A fake ElevenLabs on loopback, speaking its real wire protocols: the signed-URL endpoint and the
Conversational AI WebSocket, text-to-speech, and signed post-call webhooks (built here, for tests to send).

Run standalone: python -m troupe.testing.fake_elevenlabs --port 8998
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response

from troupe.testing.loopback import LoopbackServer

# the start of an MPEG audio file: an ID3 tag, then a frame header
FAKE_MP3 = b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x64" + bytes(range(64))


@dataclass
class Behaviour:
    transcript: str = "I would like to book a table."  # what the agent "heard" in each audio chunk
    reply: str = "Of course, for how many people?"
    audio: bytes = b"\x01\x02agent-pcm-audio"
    ping_after_start: bool = True  # ping the client once the conversation starts
    close_after_replies: int | None = None  # then end the conversation with 1000
    tts_audio: bytes = FAKE_MP3


@dataclass
class Conversation:
    """One WebSocket conversation, as the fake saw it."""

    agent_id: str
    received: list[dict[str, Any]] = field(default_factory=list)
    audio: bytes = b""
    pongs: list[Any] = field(default_factory=list)
    closed_by_client: int | None = None
    ended: threading.Event = field(default_factory=threading.Event)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m.get("type") == kind]


@dataclass
class FakeElevenLabs:
    api_key: str = "fake-elevenlabs-key"
    behaviour: Behaviour = field(default_factory=Behaviour)
    conversations: list[Conversation] = field(default_factory=list)
    tts_requests: list[dict[str, Any]] = field(default_factory=list)
    signed_url_requests: list[dict[str, Any]] = field(default_factory=list)
    _signatures: dict[str, str] = field(default_factory=dict)

    def _authorised(self, request: Request) -> bool:
        return hmac.compare_digest(request.headers.get("xi-api-key", "").encode(), self.api_key.encode())

    @staticmethod
    def _unauthorised() -> JSONResponse:
        detail = {"status": "invalid_api_key", "message": "Invalid API key"}
        return JSONResponse({"detail": detail}, status_code=401)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/convai/conversation/get-signed-url")
        async def get_signed_url(request: Request, agent_id: str) -> Any:
            self.signed_url_requests.append(dict(request.query_params))
            if not self._authorised(request):
                return self._unauthorised()
            signature = secrets.token_urlsafe(16)
            self._signatures[signature] = agent_id
            url = f"ws://{request.url.netloc}/v1/convai/conversation?agent_id={agent_id}"
            return {"signed_url": f"{url}&conversation_signature={signature}"}

        @app.post("/v1/text-to-speech/{voice_id}")
        async def text_to_speech(request: Request, voice_id: str) -> Any:
            if not self._authorised(request):
                return self._unauthorised()
            body = await request.json()
            self.tts_requests.append({"voice_id": voice_id, "query": dict(request.query_params), "body": body})
            if not str(body.get("text") or "").strip():
                return JSONResponse({"detail": {"status": "invalid_text", "message": "text is empty"}}, 422)
            return Response(self.behaviour.tts_audio, media_type="audio/mpeg")

        @app.websocket("/v1/convai/conversation")
        async def conversation(websocket: WebSocket) -> None:
            agent_id = self._signatures.pop(websocket.query_params.get("conversation_signature", ""), None)
            if agent_id is None or agent_id != websocket.query_params.get("agent_id"):
                await websocket.close(code=1008)  # an unsigned or reused URL: the handshake is refused
                return
            await websocket.accept()
            record = Conversation(agent_id=agent_id)
            self.conversations.append(record)
            try:
                await self._converse(websocket, record)
            except WebSocketDisconnect as exc:
                record.closed_by_client = exc.code
            finally:
                record.ended.set()

        return app

    async def _converse(self, websocket: WebSocket, record: Conversation) -> None:
        b = self.behaviour
        started, replies, event_id = False, 0, 0
        while True:
            message = json.loads(await websocket.receive_text())
            record.received.append(message)
            if not started:
                started = True
                metadata = {
                    "conversation_id": f"conv_{secrets.token_hex(6)}",
                    "agent_output_audio_format": "pcm_16000",
                    "user_input_audio_format": "pcm_16000",
                }
                await websocket.send_json(
                    {"type": "conversation_initiation_metadata", "conversation_initiation_metadata_event": metadata}
                )
                if b.ping_after_start:
                    event_id += 1
                    await websocket.send_json({"type": "ping", "ping_event": {"event_id": event_id, "ping_ms": None}})
            if message.get("type") == "pong":
                record.pongs.append(message.get("event_id"))
            elif "user_audio_chunk" in message or message.get("type") == "user_message":
                if "user_audio_chunk" in message:
                    record.audio += base64.b64decode(message["user_audio_chunk"])
                    heard = b.transcript
                else:
                    heard = str(message.get("text", ""))
                event_id += 1
                await websocket.send_json(
                    {"type": "user_transcript", "user_transcription_event": {"user_transcript": heard}}
                )
                await websocket.send_json(
                    {"type": "agent_response", "agent_response_event": {"agent_response": b.reply}}
                )
                audio = base64.b64encode(b.audio).decode()
                await websocket.send_json(
                    {"type": "audio", "audio_event": {"audio_base_64": audio, "event_id": event_id}}
                )
                replies += 1
                if b.close_after_replies is not None and replies >= b.close_after_replies:
                    await websocket.close(code=1000, reason="conversation ended")
                    return


def signature_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The ElevenLabs-Signature header of a webhook body: t=<unix>,v0=<hex HMAC-SHA256 of "t.body">."""
    stamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v0={digest}"


def post_call_transcription(
    conversation_id: str,
    transcript: list[tuple[str, str]],
    *,
    agent_id: str = "agent_fake",
    dynamic_variables: dict[str, Any] | None = None,
    phone: str | None = None,
) -> dict[str, Any]:
    """A `post_call_transcription` webhook body as ElevenLabs sends it (the fields troupe reads, and some)."""
    now = int(time.time())
    metadata: dict[str, Any] = {"start_time_unix_secs": now - 60, "call_duration_secs": 60}
    if phone:
        metadata["phone_call"] = {
            "type": "twilio",
            "direction": "inbound",
            "phone_number_id": "pn_fake",
            "agent_number": "+14155550000",
            "external_number": phone,
            "stream_sid": "MZfake",
            "call_sid": "CAfake",
        }
    return {
        "type": "post_call_transcription",
        "event_timestamp": now,
        "data": {
            "agent_id": agent_id,
            "conversation_id": conversation_id,
            "status": "done",
            "transcript": [
                {"role": role, "message": message, "time_in_call_secs": index * 5}
                for index, (role, message) in enumerate(transcript)
            ],
            "metadata": metadata,
            "analysis": {"call_successful": "success", "transcript_summary": ""},
            "conversation_initiation_client_data": {"dynamic_variables": dynamic_variables or {}},
            "has_audio": False,
            "has_user_audio": False,
            "has_response_audio": False,
        },
    }


class FakeElevenLabsServer(LoopbackServer):
    """Runs FakeElevenLabs on loopback in a background thread (a context manager)."""

    label = "fake ElevenLabs server"

    def __init__(self, behaviour: Behaviour | None = None, port: int | None = None) -> None:
        self.fake = FakeElevenLabs(behaviour=behaviour or Behaviour())
        super().__init__(self.fake.app(), port)

    @property
    def base_url(self) -> str:
        return self.root

    @property
    def api_key(self) -> str:
        return self.fake.api_key

    @property
    def behaviour(self) -> Behaviour:
        return self.fake.behaviour


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8998)
    parser.add_argument("--api-key", default="fake-elevenlabs-key")
    args = parser.parse_args()
    uvicorn.run(FakeElevenLabs(api_key=args.api_key).app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
