"""How each platform's signed webhooks are checked: VAPI's HMAC credential, Slack's v0 signature (by
slack_sdk, and only once: Bolt's own check is off), ElevenLabs' signature (by its SDK's helper, inside
troupe's tolerance), and the voice WebSocket's Origin."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
from slack_bolt.middleware.request_verification.async_request_verification import AsyncRequestVerification
from slack_sdk.signature import Clock, SignatureVerifier

from troupe.config.settings import Settings
from troupe.core.persona_file import load_personas
from troupe.integrations.elevenlabs import BadSignature as ElevenLabsBadSignature
from troupe.integrations.elevenlabs import origin_allowed, verified_event
from troupe.integrations.slack import SlackDoor, sign, verified
from troupe.integrations.vapi import BadSignature, hmac_signature, sent_at, verify_hmac
from troupe.testing.fake_elevenlabs import signature_header

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
BODY = b'{"message":{"type":"tool-calls"}}'
NOW = 1_700_000_000.0


# --- VAPI


def test_vapi_hmac_over_timestamp_and_body_is_accepted_within_the_window() -> None:
    stamp = str(int(NOW))
    signature = hmac_signature(SECRET, stamp, BODY)
    assert len(signature) == 64
    assert verify_hmac(SECRET, BODY, stamp, signature, now=NOW + 299, tolerance_s=300) == signature
    assert verify_hmac(SECRET, BODY, stamp, "sha256=" + signature.upper(), now=NOW, tolerance_s=300) == signature
    millis = str(int(NOW * 1000))  # VAPI's docs do not say which unit; both read alike
    assert sent_at(millis) == sent_at(stamp) == NOW
    assert verify_hmac(SECRET, BODY, millis, hmac_signature(SECRET, millis, BODY), now=NOW, tolerance_s=300)


@pytest.mark.parametrize(
    ("secret", "body", "stamp", "now", "why"),
    [
        ("other-secret", BODY, str(int(NOW)), NOW, "does not match"),  # forged
        (SECRET, BODY + b" ", str(int(NOW)), NOW, "does not match"),  # tampered
        (SECRET, BODY, str(int(NOW)), NOW + 301, "outside the accepted window"),  # stale
        (SECRET, BODY, str(int(NOW)), NOW - 301, "outside the accepted window"),  # from the future
        (SECRET, BODY, "soon", NOW, "not a Unix time"),
    ],
)
def test_vapi_hmac_refusals(secret: str, body: bytes, stamp: str, now: float, why: str) -> None:
    signature = hmac_signature(secret, stamp, body)
    with pytest.raises(BadSignature, match=why):
        verify_hmac(SECRET, BODY, stamp, signature, now=now, tolerance_s=300)


def test_vapi_hmac_needs_both_headers() -> None:
    stamp = str(int(NOW))
    with pytest.raises(BadSignature, match="needs both"):
        verify_hmac(SECRET, BODY, None, hmac_signature(SECRET, stamp, BODY), now=NOW, tolerance_s=300)
    with pytest.raises(BadSignature, match="needs both"):
        verify_hmac(SECRET, BODY, stamp, "", now=NOW, tolerance_s=300)


# --- Slack


class FixedClock(Clock):
    def __init__(self, now: float) -> None:
        self.at = now

    def now(self) -> float:
        return self.at


def test_slack_signature_is_checked_by_slack_sdk_within_its_five_minutes() -> None:
    body, ts = b'{"type":"event_callback"}', str(int(NOW))
    good = sign(SECRET, body, ts)
    assert good.startswith("v0=") and len(good) == 3 + 64

    def ok(at: float, *, body: bytes = body, ts: str | None = ts, signature: str | None = good) -> bool:
        return verified(SignatureVerifier(SECRET, clock=FixedClock(at)), body, ts, signature)

    assert ok(NOW + 299)
    assert not ok(NOW + 301)  # stale
    assert not ok(NOW - 301)  # from the future
    assert not ok(NOW, body=body + b" ")
    assert not verified(SignatureVerifier("other", clock=FixedClock(NOW)), body, ts, good)
    assert not ok(NOW, ts=None)
    assert not ok(NOW, signature=None)
    assert not ok(NOW, ts="soon")  # slack_sdk raises on it; troupe refuses
    assert not ok(NOW, body=b"\xff\xfe")  # not UTF-8: slack_sdk raises; troupe refuses


def test_bolt_does_not_verify_a_second_time() -> None:
    settings = Settings(slack_api_base_url="http://127.0.0.1:9/")
    door = SlackDoor(SimpleNamespace(settings=settings, catalog=load_personas()))
    app = door.app_for(None, SECRET, "xoxb-test")
    bolt = app.handler.app
    # Bolt keeps its middleware in a private list; its verification middleware must not be in it
    assert not any(isinstance(m, AsyncRequestVerification) for m in bolt._async_middleware_list)
    assert app.verifier.signing_secret == SECRET


# --- ElevenLabs


def test_elevenlabs_signature_is_checked_by_its_sdk() -> None:
    now = time.time()  # the SDK reads the clock itself (its own window is 30 minutes)
    body = json.dumps({"type": "post_call_transcription", "data": {}}).encode()
    header = signature_header(SECRET, body, int(now))
    event, signature = verified_event(header, body, SECRET, 300, now)
    assert event == {"type": "post_call_transcription", "data": {}}
    assert signature == header.split(",")[1]


@pytest.mark.parametrize(
    ("secret", "sent", "age", "why"),
    [
        ("other-secret", b"{}", 0, "does not match"),  # forged
        (SECRET, b'{"a": 1}', 0, "does not match"),  # tampered: signed another body
        (SECRET, b"{}", 400, "outside the accepted window"),  # stale for troupe, though not for the SDK
        (SECRET, b"{}", -400, "outside the accepted window"),  # from the future: the SDK would take it
    ],
)
def test_elevenlabs_refusals(secret: str, sent: bytes, age: int, why: str) -> None:
    now = time.time()
    header = signature_header(secret, sent, int(now) - age)
    with pytest.raises(ElevenLabsBadSignature, match=why):
        verified_event(header, b"{}", SECRET, 300, now)


def test_elevenlabs_malformed_headers_are_refused() -> None:
    for header in ("", "t=123", "v0=abc", "t=soon,v0=abc"):
        with pytest.raises(ElevenLabsBadSignature, match="Missing or malformed"):
            verified_event(header, b"{}", SECRET, 300, time.time())


# --- the voice WebSocket's Origin


def test_origins_allowed_on_the_voice_websocket() -> None:
    allowed = "https://app.example.com, https://admin.example.com/"
    assert origin_allowed(None, "troupe.example.com", allowed)  # not a browser
    assert origin_allowed("https://app.example.com", "troupe.example.com", allowed)
    assert origin_allowed("https://ADMIN.example.com", "troupe.example.com", allowed)
    assert not origin_allowed("https://evil.example.com", "troupe.example.com", allowed)
    assert origin_allowed("http://127.0.0.1:3000", "127.0.0.1:3000", "")  # the door's own page
    assert not origin_allowed("http://127.0.0.1:3001", "127.0.0.1:3000", "")
    assert not origin_allowed("https://evil.example.com", None, "")
    assert origin_allowed("https://anyone.example", "troupe.example.com", "*")
