"""Local reviewer accounts for the embedded default, when no hospital IdP is configured.

The file is JSON: ``{"users": [{"username": ..., "name": ..., "roles": [...], "password": "scrypt$..."}]}``.
Passwords are stored as scrypt hashes (``hash_password``), never in clear; a wrong user name and a wrong
password take the same path so that timing does not tell which one was wrong.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from audit.review.reviewer import Reviewer
from audit.review.roles import roles_from_claim

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


class LocalUser(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    username: str = Field(min_length=1, max_length=100)
    name: str = Field(default="", max_length=200)
    roles: list[str]
    password: str = Field(pattern=r"^scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$")


class LocalUsersFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    users: list[LocalUser]


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64 parts) for a local users file."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    encode = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${encode(salt).decode()}${encode(digest).decode()}"


def _check(password: str, stored: str) -> bool:
    _scheme, n, r, p, salt, digest = stored.split("$")
    expected = base64.b64decode(digest)
    actual = hashlib.scrypt(
        password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
    )
    return hmac.compare_digest(actual, expected)


class LocalUsers:
    """The accounts of one local users file."""

    _DUMMY = hash_password(secrets.token_hex(8))

    def __init__(self, users: list[LocalUser]) -> None:
        self._users = {user.username: user for user in users}

    @classmethod
    def load(cls, path: Path) -> LocalUsers:
        """Raises ValueError naming the file when it is not a valid users file."""
        try:
            parsed = LocalUsersFile.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise ValueError(f"local users file {path} is not valid: {type(exc).__name__}") from exc
        return cls(parsed.users)

    def authenticate(self, username: str, password: str) -> Reviewer | None:
        user = self._users.get(username)
        ok = _check(password, user.password if user else self._DUMMY)
        if user is None or not ok:
            return None
        return Reviewer(
            subject=user.username,
            name=user.name or user.username,
            roles=roles_from_claim(user.roles),
            via="local",
        )
