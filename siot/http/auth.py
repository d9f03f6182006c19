"""Who is asking: `POST /v1/auth` (email and password -> token) and the middleware that turns a
bearer token into the request's `User` (DESIGN §9, §10).

Every route under `/v1/` needs `Authorization: Bearer <token>` unless its handler is marked
`@public`; routes outside `/v1/` (`/healthz`, `/metrics`, the web UI's files) are public and
check what they need themselves. `GET /v1/stream` also takes the token as `?access_token=`,
because a browser's EventSource cannot send headers (RFC 6750 §2.3; the server keeps no access
log, so it is not written anywhere).

A token is checked on every request against the user as it is now (siot/users.py keeps users in
memory): a deleted user, or one whose password changed, is refused from that commit on
(siot/http/tokens.py). Secrets — passwords, tokens, the key — are never logged.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from siot.http.body import json_body
from siot.http.context import HttpContext
from siot.http.errors import HttpError, bad_request, json_response
from siot.http.ratelimit import LoginLimiter
from siot.http.tokens import TokenRejected, TokenSigner, load_signing_key
from siot.passwords import hash_password, verify_password
from siot.users import User, find_user_by_email, user_by_id

logger = logging.getLogger(__name__)

USER = web.RequestKey("siot_user", User)
PROTECTED_PREFIX = "/v1/"
# Password checks (argon2id: ~19 MiB and tens of ms each) running at once, at most: a burst of
# logins queues here instead of taking the machine's memory and both cores.
MAX_CONCURRENT_VERIFIES = 2
QUERY_TOKEN_PATHS = frozenset(("/v1/stream",))
_PUBLIC_ATTR = "__siot_public__"


def public(handler: Handler) -> Handler:
    """Mark a handler under `/v1/` as needing no token (login)."""
    setattr(handler, _PUBLIC_ATTR, True)
    return handler


def current_user(request: web.Request) -> User:
    """The user the middleware authenticated (every non-public handler under `/v1/` has one)."""
    return request[USER]


def unauthorized(message: str) -> HttpError:
    return HttpError(401, message, {"WWW-Authenticate": 'Bearer realm="siot"'})


class Authenticator:
    """The signer, the login limiter and the password check of one HTTP server."""

    def __init__(self, http: HttpContext, signer: TokenSigner, limiter: LoginLimiter | None = None) -> None:
        self.http = http
        self.signer = signer
        self.limiter = limiter or LoginLimiter()
        self._verifies = asyncio.Semaphore(MAX_CONCURRENT_VERIFIES)
        self._dummy_hash: str | None = None

    async def _verify(self, password_hash: str, password: str) -> bool:
        async with self._verifies:
            return await asyncio.to_thread(verify_password, password_hash, password)

    async def _unknown_user_hash(self) -> str:
        """A hash to check a password against when the email names no user, so a login for an
        unknown account takes as long as one with a wrong password (no account oracle)."""
        if self._dummy_hash is None:
            self._dummy_hash = await asyncio.to_thread(hash_password, "not a password of anyone")
        return self._dummy_hash

    async def login(self, address: str, email: str, password: str) -> tuple[str, int]:
        """A token and its expiry (s since the epoch) for these credentials, or HttpError 401/429."""
        account = email.strip().casefold()
        wait_s = self.limiter.retry_after(address, account)
        if wait_s:
            logger.warning("http: login for %r from %s refused: too many failures", email, address)
            raise HttpError(429, f"too many failed logins; retry in {wait_s} s", {"Retry-After": str(wait_s)})
        user = find_user_by_email(self.http.app.store, email)
        password_hash = user.password_hash if user and user.password_hash else await self._unknown_user_hash()
        if not await self._verify(password_hash, password) or user is None or not user.password_hash:
            self.limiter.fail(address, account)
            logger.warning("http: failed login for %r from %s", email, address)
            raise unauthorized("wrong email or password")
        logger.info("http: %s (%s) logged in from %s", user.email, user.id, address)
        return self.signer.issue(user.id, user.password_hash)

    def authenticate(self, token: str) -> User:
        """The user a token stands for now, or HttpError 401 saying why."""
        try:
            claims = self.signer.check(token)
        except TokenRejected as exc:
            raise unauthorized(str(exc)) from None
        user = user_by_id(self.http.app.store, claims.user)
        if user is None:
            raise unauthorized("the token's user no longer exists")
        if not self.signer.still_current(claims, user.password_hash):
            raise unauthorized("the password changed since this token was issued; log in again")
        return user


AUTH = web.AppKey("siot_auth", Authenticator)


@public
async def post_auth(request: web.Request) -> web.Response:
    body = await json_body(request)
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("email"), str)
        or not isinstance(body.get("password"), str)
    ):
        raise bad_request('the body must be {"email": "...", "password": "..."}')
    token, expires = await request.app[AUTH].login(request.remote or "?", body["email"], body["password"])
    return json_response({"token": token, "expires": rfc3339(expires)})


def rfc3339(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if request.path in QUERY_TOKEN_PATHS:
        return request.query.get("access_token") or None
    return None


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate every request under `/v1/` whose handler is not `@public` (see the module
    docstring); the handler finds the user with `current_user(request)`."""
    route_handler: Any = request.match_info.handler
    if request.path.startswith(PROTECTED_PREFIX) and not getattr(route_handler, _PUBLIC_ATTR, False):
        token = bearer_token(request)
        if token is None:
            raise unauthorized(
                "missing token: log in with POST /v1/auth and send 'Authorization: Bearer <token>'"
            )
        request[USER] = request.app[AUTH].authenticate(token)
    return await handler(request)


def setup(app: web.Application, http: HttpContext) -> None:
    """The login route and the authenticator `auth_middleware` uses (server.py installs it)."""
    signer = TokenSigner(load_signing_key(http.app.config.data_dir), http.config.token_ttl_s)
    app[AUTH] = Authenticator(http, signer)
    app.router.add_post("/v1/auth", post_auth)
