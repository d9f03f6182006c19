"""JSON-lines files of raw messages, one directory per subject, one file per UTC day.

Layout: `<root>/<subject, %-quoted>/<YYYY-MM-DD>.jsonl`; each line is
`{"time": "<RFC 3339 receive time>", "timeNs": int, "subject": str, "encoding": "json"|"msgpack"|"base64",
"payload": ...}`. Writes are buffered and flushed by the caller (every second and on close), so
a crash loses at most the last unflushed second; a clean stop loses nothing.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from siot.codec import decode_any
from siot.errors import DecodeError

logger = logging.getLogger(__name__)

Clock = Callable[[], int]  # ns since the epoch
FILE_SUFFIX = ".jsonl"


def subject_dir(subject: str) -> str:
    """A subject as one safe directory name (`/` and other specials %-quoted)."""
    return quote(subject, safe="._-*>")


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def encode_payload(data: bytes) -> tuple[str, Any]:
    """(encoding, payload): parsed JSON, decoded msgpack (bytes as base64), else base64 bytes."""
    try:
        value = decode_any(data)
    except DecodeError:
        return "base64", base64.b64encode(data).decode()
    return ("json" if data.lstrip()[:1] in (b"[", b"{") else "msgpack"), _jsonable(value)


class ArchiveWriter:
    """Appends messages to day files under `root`. Not thread-safe: use from the event loop."""

    def __init__(self, root: Path, *, clock: Clock = time.time_ns) -> None:
        self.root = root
        self.clock = clock
        self._files: dict[str, tuple[str, IO[str]]] = {}  # subject dir -> (day, open file)
        self.lines = 0

    def write(self, subject: str, data: bytes) -> Path:
        """Append one message with the current receive time; return the file it went to."""
        now_ns = self.clock()
        stamp = datetime.fromtimestamp(now_ns / 1e9, UTC)
        day = stamp.strftime("%Y-%m-%d")
        directory = subject_dir(subject)
        current = self._files.get(directory)
        if current is None or current[0] != day:
            if current is not None:
                current[1].close()
            path = self.root / directory / f"{day}{FILE_SUFFIX}"
            path.parent.mkdir(parents=True, exist_ok=True)
            current = (day, path.open("a", encoding="utf-8"))
            self._files[directory] = current
        line = {"time": stamp.isoformat().replace("+00:00", "Z"), "timeNs": now_ns, "subject": subject}
        try:
            encoding, payload = encode_payload(data)
            text = json.dumps({**line, "encoding": encoding, "payload": payload}, separators=(",", ":"))
        except (RecursionError, ValueError, TypeError, OverflowError):
            # A payload too deep (or too odd) to be re-encoded as JSON is kept as its bytes.
            raw = base64.b64encode(data).decode()
            text = json.dumps({**line, "encoding": "base64", "payload": raw}, separators=(",", ":"))
        current[1].write(text + "\n")
        self.lines += 1
        return self.root / directory / f"{day}{FILE_SUFFIX}"

    def flush(self) -> None:
        for _, handle in self._files.values():
            handle.flush()

    def close(self) -> None:
        for _, handle in self._files.values():
            handle.close()
        self._files.clear()

    def prune(self, retention_days: float) -> list[Path]:
        """Delete day files whose whole day ended more than `retention_days` ago."""
        if not self.root.exists():
            return []
        cutoff = datetime.fromtimestamp(self.clock() / 1e9, UTC) - timedelta(days=retention_days)
        removed = []
        for path in self.root.glob(f"*/*{FILE_SUFFIX}"):
            try:
                day = datetime.strptime(path.stem, "%Y-%m-%d").replace(tzinfo=UTC)
            except ValueError:
                continue  # not ours
            if day + timedelta(days=1) <= cutoff:
                path.unlink(missing_ok=True)
                removed.append(path)
        if removed:
            logger.info("archive: retention removed %d day file(s) under %s", len(removed), self.root)
        return removed
