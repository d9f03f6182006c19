"""Bearer tokens of the HTTP API: HS256 JWTs (PyJWT) signed with a key of this instance.

The key is made on first start and kept in `<data>/http-signing-key` (mode 0600, created so: no
moment at a wider mode); every token an instance issued stays valid across its restarts until
it expires, and deleting the file revokes them all.

A token names its user (`sub`) and carries `pwd`, a keyed fingerprint of the user's
`passwordHash` when it was issued. Every request compares it with the user's current hash (the
in-memory user index, siot/users.py), so changing the password, or deleting the user, revokes
every token issued before, from the commit that did it, without a revocation list. The
fingerprint is an HMAC under the signing key, so the token, which anyone holding it can read,
tells nothing about the hash.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

KEY_FILE = "http-signing-key"
KEY_BYTES = 32
ALGORITHM = "HS256"
FINGERPRINT_CHARS = 22
# Clock skew tolerated on `exp`/`iat`: none is needed, the issuer and the checker are one process.
LEEWAY_S = 0
# Tokens already verified, and fingerprints already computed, kept to skip the work on the next
# request (the JWT signature check and the HMAC cost ~150 µs a request, a third of a REST write:
# docs/benchmarks.md). Revocation is unaffected: the fingerprint is still compared with the
# user's current hash on every request. Past this many entries a cache starts over.
MAX_CACHED = 10_000


EXPIRED = "the token has expired; log in again (POST /v1/auth)"


class TokenRejected(Exception):
    """The token is malformed, forged or expired; the message says which (never the token)."""


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user: str
    fingerprint: str
    expires: int  # seconds since the epoch


def load_signing_key(data_dir: Path) -> bytes:
    """The instance's signing key from `<data_dir>/http-signing-key`, made on first use."""
    path = data_dir / KEY_FILE
    if path.exists():
        key = bytes.fromhex(path.read_text().strip())
        if len(key) < KEY_BYTES:
            raise ValueError(f"{path} holds a key under {KEY_BYTES} bytes; remove it to make a new one")
        return key
    key = secrets.token_bytes(KEY_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    return key


class TokenSigner:
    """Issues and checks tokens with one key and one lifetime."""

    def __init__(self, key: bytes, ttl_s: float) -> None:
        self._key = key
        self.ttl_s = ttl_s
        self._checked: dict[str, TokenClaims] = {}
        self._fingerprints: dict[str, str] = {}

    def fingerprint(self, password_hash: str) -> str:
        found = self._fingerprints.get(password_hash)
        if found is None:
            digest = hmac.new(self._key, password_hash.encode(), hashlib.sha256).digest()
            found = base64.urlsafe_b64encode(digest).decode()[:FINGERPRINT_CHARS]
            _remember(self._fingerprints, password_hash, found)
        return found

    def issue(self, user: str, password_hash: str, now_s: float | None = None) -> tuple[str, int]:
        """A token for `user` and the second it expires."""
        now = int(time.time() if now_s is None else now_s)
        expires = now + int(self.ttl_s)
        claims = {"sub": user, "pwd": self.fingerprint(password_hash), "iat": now, "exp": expires}
        return jwt.encode(claims, self._key, algorithm=ALGORITHM), expires

    def check(self, token: str) -> TokenClaims:
        """The claims of a token this instance signed that has not expired; `TokenRejected`
        otherwise."""
        known = self._checked.get(token)
        if known is not None:
            if time.time() < known.expires:
                return known
            raise TokenRejected(EXPIRED)
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                options={"require": ["sub", "pwd", "exp"]},
                leeway=LEEWAY_S,
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected(EXPIRED) from None
        except jwt.InvalidTokenError:
            raise TokenRejected("the token is not valid here (malformed, or signed by another key)") from None
        user, fingerprint = claims["sub"], claims["pwd"]
        if not isinstance(user, str) or not isinstance(fingerprint, str):
            raise TokenRejected("the token is not valid here (malformed claims)")
        checked = TokenClaims(user=user, fingerprint=fingerprint, expires=int(claims["exp"]))
        _remember(self._checked, token, checked)
        return checked

    def still_current(self, claims: TokenClaims, password_hash: str) -> bool:
        """Whether the password the token was issued under is still the user's."""
        return bool(password_hash) and hmac.compare_digest(
            claims.fingerprint, self.fingerprint(password_hash)
        )


def _remember(cache: dict[str, Any], key: str, value: Any) -> None:
    if len(cache) >= MAX_CACHED:
        cache.clear()
    cache[key] = value
