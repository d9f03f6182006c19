"""Credential files: how a client holds a user/secret pair on disk, and where `siot serve` keeps
its admin credential (docs/security.md).

Light on purpose (json, os, ssl only): the client library and every CLI command import it. A
credential file is JSON, `{"user", "secret"}`, plus what else helps its holder connect: `node`
(the scope of a device or edge credential), `url` and `tlsCa` (for the admin file `siot serve`
writes, so `siot --data DIR` reaches that instance with nothing else given). It is written with
mode 0600 from the start (never readable by others, not even for a moment), because the secret
in it is the one plain-text secret a client must keep.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from siot.errors import SiotError

ADMIN_FILE = "admin.cred"  # in the data directory of `siot serve`
FILE_MODE = 0o600


class CredentialFileError(SiotError):
    """A credential file that cannot be read or does not hold a user and a secret."""


@dataclass(slots=True, frozen=True)
class Credential:
    """A user/secret pair as a client holds it. `node` is the scope (the node the credential
    confines its holder to; "" for the admin credential), used by `Client` for scoped subjects."""

    user: str
    secret: str
    node: str = ""
    url: str = ""
    tls_ca: str = ""
    tls_cert: str = ""  # a client certificate, for a server that asks for one (the admin file)
    tls_key: str = ""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"user": self.user, "secret": self.secret}
        if self.node:
            data["node"] = self.node
        if self.url:
            data["url"] = self.url
        if self.tls_ca:
            data["tlsCa"] = self.tls_ca
        if self.tls_cert:
            data["tlsCert"] = self.tls_cert
            data["tlsKey"] = self.tls_key
        return data

    def __repr__(self) -> str:  # never the secret, whatever prints this
        return f"Credential(user={self.user!r}, node={self.node!r}, url={self.url!r})"


def parse(text: str, source: str) -> Credential:
    """A credential from its JSON text; `source` names it in errors (never the text itself)."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CredentialFileError(f"{source} is not JSON: {exc.msg} at line {exc.lineno}") from exc
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("user", "secret")):
        raise CredentialFileError(f'{source} must be a JSON object with string fields "user" and "secret"')
    if not data["user"] or not data["secret"]:
        raise CredentialFileError(f"{source} has an empty user or secret")
    return Credential(
        user=data["user"],
        secret=data["secret"],
        node=str(data.get("node") or ""),
        url=str(data.get("url") or ""),
        tls_ca=str(data.get("tlsCa") or ""),
        tls_cert=str(data.get("tlsCert") or ""),
        tls_key=str(data.get("tlsKey") or ""),
    )


def load(path: str | Path) -> Credential:
    """Read a credential file; raises `CredentialFileError` naming the file (not its content)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise CredentialFileError(f"cannot read credential file {path}: {exc.strerror}") from exc
    return parse(text, f"credential file {path}")


def write(path: str | Path, credential: Credential) -> None:
    """Write a credential file with mode 0600, atomically (a reader never sees half a file).
    Left alone when it holds this already: a restart onto a read-only data directory then gets
    as far as the store, which says what is wrong. Raises `CredentialFileError` naming the file."""
    path = Path(path)
    text = json.dumps(credential.to_json()) + "\n"
    with contextlib.suppress(OSError):
        if path.read_text() == text:
            return
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise CredentialFileError(f"cannot write credential file {path}: {exc.strerror}") from exc


def admin_file(data_dir: str | Path) -> Path:
    return Path(data_dir) / ADMIN_FILE


def is_local(url: str) -> bool:
    """Whether `url` names this machine (a loopback address or `localhost`): the admin
    credential of a local data directory is only ever sent there, never to another host."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def local_admin(data_dir: str | Path | None, url: str) -> Credential | None:
    """The admin credential `siot serve --data DIR` keeps, when it exists and `url` is local."""
    if not data_dir:
        return None
    path = admin_file(data_dir)
    if not path.exists() or not is_local(url):
        return None
    return load(path)


def client_tls(ca: str | None = None, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """The TLS context of a client: trust `ca` (a CA or the server's own certificate; default:
    the system's trust store), present `cert`/`key` when the server asks for client certificates.

    A partial chain is accepted, so `ca` may also be the server's certificate itself (pinning a
    self-signed or leaf certificate)."""
    context = ssl.create_default_context(cafile=ca or None)
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    if cert:
        context.load_cert_chain(cert, key or None)
    return context
