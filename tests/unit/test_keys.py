"""API keys by role as plain logic: parsing entries, a bare key being an admin key, errors that never
show a secret, the admin key file, constant-time matching, and secrets kept out of Ray's runtime_env."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from troupe.config.keys import Keyring, ensure_admin_key, parse_keys
from troupe.config.settings import Settings, is_secret
from troupe.core.errors import ConfigError


def test_entries_name_a_role_and_a_bare_key_is_an_admin_key() -> None:
    keys = parse_keys(
        "ops:operator:0123456789abcdefgh,\n legacy-key-0123456789 \n# a comment\napp:client:zyxwvutsrqponmlkj"
    )
    assert [(k.name, k.role) for k in keys] == [("ops", "operator"), ("key-2", "admin"), ("app", "client")]
    assert "0123456789abcdefgh" not in repr(keys)


@pytest.mark.parametrize(
    "text", ["ops:boss:0123456789abcdefgh", "a:b", "short", "x:admin:0123456789abcdefgh,x:client:zyxwvutsrqponmlkj"]
)
def test_a_bad_entry_is_named_by_position_never_by_its_secret(text: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_keys(text)
    assert "0123456789abcdefgh" not in raised.value.message and "tiny-k3y" not in raised.value.message


def test_the_admin_key_is_made_once_private_and_found(tmp_path: Path) -> None:
    key, made = ensure_admin_key(tmp_path)
    assert made and (tmp_path / "admin.key").stat().st_mode & 0o777 == 0o600
    assert ensure_admin_key(tmp_path) == (key, False)
    ring = Keyring.load("app:client:zyxwvutsrqponmlkj", None, tmp_path)
    assert ring.find(key.encode()).role == "admin"
    assert ring.find(b"zyxwvutsrqponmlkj").name == "app"
    assert ring.find(b"zyxwvutsrqponmlk") is None and ring.find(b"") is None


def test_no_secret_goes_into_rays_runtime_env(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "TROUPE_API_KEYS": "ops:operator:0123456789abcdefgh", "TROUPE_PORT": "3100",
        "TROUPE_DATABASE_URL": "postgresql://troupe:hunter2@db/troupe", "VAPI_SECRET": "s", "VAPI_BASE_URL": "http://v",
        "SLACK_BOT_TOKEN": "xoxb-1", "ELEVENLABS_API_KEY": "k", "OPENAI_API_KEY": "sk-1",
        "OPENAI_BASE_URL": "http://m/v1", "TROUPE_SOCIAL_KEY_TONY": "t",
    }  # fmt: skip
    for name in os.environ:  # only this test's environment (CI sets TROUPE_TEST_* for its own tests)
        if name.startswith("TROUPE_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    sent = Settings().env_for_workers()
    assert sent == {"TROUPE_PORT": "3100", "VAPI_BASE_URL": "http://v", "OPENAI_BASE_URL": "http://m/v1"}
    assert is_secret("TROUPE_DATABASE_URL", "postgresql://troupe:hunter2@db/troupe")
    assert not is_secret("TROUPE_DATABASE_URL", "postgresql://db/troupe")
