"""The web UI's static files, as the daemon serves them: read from the package once, gzipped
once, and named by a version (a hash of every file) so the browser may keep them for ever.

`GET /` is the page (`index.html`, with `{{base}}` replaced by `/ui/<version>/`): revalidated on
every load (`Cache-Control: no-cache` with an ETag, so an unchanged page costs a 304). Every
other file is under `/ui/<version>/`: `Cache-Control: immutable` for a year, since a new version
of any file is a new version of all. A request for another version (a page loaded before an
upgrade) gets the current file, not cached. Bodies are sent gzipped when the client accepts it.
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

STATIC_PACKAGE = "siot.web"
STATIC_DIR = "static"
INDEX = "index.html"
BASE_MARK = b"{{base}}"
PREFIX = "/ui/"
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
# Smaller bodies are sent as they are: gzip's header would eat what it saves.
MIN_GZIP_BYTES = 256
# Served as files but not part of the UI (the licenses are, as text).
SKIP_SUFFIXES = (".map",)
TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".svg": "image/svg+xml",
    ".json": "application/json",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    gzipped: bytes | None  # None when gzip would not make it smaller
    content_type: str
    etag: str

    def choose(self, accept_encoding: str) -> tuple[bytes, bool]:
        """The body to send and whether it is gzip-encoded."""
        if self.gzipped is not None and "gzip" in accept_encoding.lower():
            return self.gzipped, True
        return self.body, False


def make_asset(name: str, body: bytes) -> Asset:
    suffix = name[name.rfind(".") :] if "." in name else ""
    content_type = TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
    if content_type.startswith("text/") or content_type.endswith(("json", "xml", "javascript")):
        content_type += "; charset=utf-8"
    gzipped = gzip.compress(body, compresslevel=9, mtime=0) if len(body) >= MIN_GZIP_BYTES else None
    if gzipped is not None and len(gzipped) >= len(body):
        gzipped = None
    return Asset(body, gzipped, content_type, f'"{hashlib.sha256(body).hexdigest()[:20]}"')


def _walk(folder: Traversable, prefix: str = "") -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for entry in folder.iterdir():
        name = prefix + entry.name
        if entry.is_dir():
            files.update(_walk(entry, name + "/"))
        elif not name.endswith(SKIP_SUFFIXES):
            files[name] = entry.read_bytes()
    return files


class Assets:
    """Every static file of the UI, and the page that loads them."""

    def __init__(self, files: dict[str, bytes]) -> None:
        if INDEX not in files:
            raise FileNotFoundError(f"the web UI's {INDEX} is missing from the package")
        digest = hashlib.sha256()
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + files[name] + b"\0")
        self.version = digest.hexdigest()[:12]
        self.base = f"{PREFIX}{self.version}/"
        self.index = make_asset(INDEX, files[INDEX].replace(BASE_MARK, self.base.encode()))
        self.files = {name: make_asset(name, body) for name, body in files.items() if name != INDEX}

    @classmethod
    def from_package(cls) -> Assets:
        return cls(_walk(resources.files(STATIC_PACKAGE) / STATIC_DIR))

    def lookup(self, version: str, name: str) -> tuple[Asset, str] | None:
        """The file `name` of `version` and its Cache-Control, or None if there is no such file."""
        asset = self.files.get(name)
        if asset is None:
            return None
        return asset, IMMUTABLE if version == self.version else REVALIDATE
