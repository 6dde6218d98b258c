"""API keys by role. Plain logic: reading keys from settings, the keys file and `<data dir>/admin.key`,
and matching a presented token against all of them in constant time.

An entry is `name:role:secret` (one per line in a keys file, or comma-separated in TROUPE_API_KEYS). A
bare `secret` is an admin key, as configured before roles existed. Roles:

- admin: everything;
- operator: the control panel, /api/* and /internal/*;
- client: completions and /v1/models only (a caller identity it asserts is scoped to the key);
- platform: completions, asserting caller identity (a voice platform's own key).
"""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

from pydantic import SecretStr

from troupe.core.errors import ConfigError

Role = Literal["admin", "operator", "client", "platform"]
ROLES: tuple[Role, ...] = ("admin", "operator", "client", "platform")
ADMIN_KEY_FILE = "admin.key"


@dataclass(frozen=True)
class ApiKey:
    name: str
    role: Role
    secret: SecretStr = field(repr=False)

    @property
    def asserts_identity(self) -> bool:
        """Caller identity this key's requests carry is taken as given (else it is scoped to the key)."""
        return self.role in ("admin", "platform")


def parse_keys(text: str, source: str = "TROUPE_API_KEYS") -> list[ApiKey]:
    """Entries separated by commas or new lines; `#` starts a comment line. Errors name the entry by
    position, never by its secret."""
    found: list[ApiKey] = []
    entries = [e.strip() for line in text.splitlines() if not line.lstrip().startswith("#") for e in line.split(",")]
    for position, entry in enumerate((e for e in entries if e), start=1):
        parts = entry.split(":")
        if len(parts) == 1:
            name, role, secret = f"key-{position}", "admin", parts[0]
        elif len(parts) == 3 and parts[1] in ROLES and parts[0] and parts[2]:
            name, role, secret = parts
        else:
            raise ConfigError(
                f"{source}: entry {position} is neither a bare key nor 'name:role:secret' with a role of "
                f"{', '.join(ROLES)}"
            )
        if len(secret) < 16:
            raise ConfigError(f"{source}: the key of entry {position} ({name}) is shorter than 16 characters")
        found.append(ApiKey(name, cast(Role, role), SecretStr(secret)))
    names = [key.name for key in found]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: two keys share a name; each needs its own")
    return found


def read_admin_key(data_dir: Path) -> str | None:
    path = data_dir / ADMIN_KEY_FILE
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def ensure_admin_key(data_dir: Path) -> tuple[str, bool]:
    """The admin key in `<data dir>/admin.key`, made on first start (mode 0600). Returns (key, made now)."""
    existing = read_admin_key(data_dir)
    if existing:
        return existing, False
    data_dir.mkdir(parents=True, exist_ok=True)
    key = "tr_" + secrets.token_urlsafe(32)
    path = data_dir / ADMIN_KEY_FILE
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(key + "\n")
    return key, True


class Keyring:
    """Every key the door accepts. `find` compares a token against each of them, so the time taken
    does not say which one nearly matched."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = keys
        self._secrets = [(key, key.secret.get_secret_value().encode()) for key in keys]

    def __bool__(self) -> bool:
        return bool(self.keys)

    def find(self, token: bytes) -> ApiKey | None:
        found = None
        for key, secret in self._secrets:
            if hmac.compare_digest(token, secret):
                found = key
        return found

    def named(self, name: str) -> ApiKey | None:
        return next((key for key in self.keys if key.name == name), None)

    @classmethod
    def load(cls, api_keys: str, keys_file: Path | None, data_dir: Path) -> Keyring:
        """TROUPE_API_KEYS, then the keys file, then the generated admin key (if there is one)."""
        keys = parse_keys(api_keys)
        if keys_file is not None:
            try:
                text = keys_file.read_text()
            except OSError as exc:
                raise ConfigError(f"TROUPE_API_KEYS_FILE: cannot read {keys_file}: {exc.strerror}") from None
            keys += parse_keys(text, str(keys_file))
        admin = read_admin_key(data_dir)
        if admin:
            keys.append(ApiKey("admin", "admin", SecretStr(admin)))
        names = [key.name for key in keys]
        if len(set(names)) != len(names):
            raise ConfigError("two API keys share a name (TROUPE_API_KEYS, the keys file and admin.key together)")
        return cls(keys)
