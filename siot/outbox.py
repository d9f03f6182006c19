"""Many NATS messages handed to the connection in one call.

Every committed write fans out to each ancestor (DESIGN §3), so one write is 4–6 messages and
the store's commit listener sends tens of them per commit. nats-py's `publish` costs a few µs of
Python per message (subject validation, state checks, a PUB command, a pending-buffer append and
a flusher check); for the fan-out that was about a fifth of the daemon's CPU under the rules
benchmark. An `Outbox` collects the PUB frames of a whole commit and appends them to the
connection's pending buffer at once, so the per-message cost is one formatted header.

This relies on nats-py's pending buffer (`_send_command`/`_flush_pending`, stable since 2.0).
While the connection is not connected it falls back to `publish`, which applies nats-py's
reconnect buffering limits. Subjects must be valid: callers build them from checked tokens.
"""

from __future__ import annotations

from nats.aio.client import Client as NATS


class Outbox:
    """PUB frames waiting to be sent on one connection; `send()` writes them in order."""

    __slots__ = ("_frames", "_messages", "_nc")

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._frames: list[bytes] = []
        self._messages: list[tuple[str, bytes, str]] = []

    def add(self, subject: str, payload: bytes, reply: str = "") -> None:
        self._messages.append((subject, payload, reply))
        size = len(payload)
        if reply:
            self._frames.append(f"PUB {subject} {reply} {size}\r\n".encode())
        else:
            self._frames.append(f"PUB {subject} {size}\r\n".encode())
        self._frames.append(payload)
        self._frames.append(b"\r\n")

    def fan_out(self, subjects: list[str], payload: bytes) -> None:
        """The same payload to every subject (a write's fan-out to its ancestors)."""
        for subject in subjects:
            self.add(subject, payload)

    def __len__(self) -> int:
        return len(self._messages)

    async def send(self) -> None:
        """Hand every frame to the connection; the outbox is empty afterwards."""
        messages, frames = self._messages, self._frames
        self._messages, self._frames = [], []
        if not messages:
            return
        nc = self._nc
        if not nc.is_connected:
            for subject, payload, reply in messages:
                await nc.publish(subject, payload, reply=reply)
            return
        blob = b"".join(frames)
        nc.stats["out_msgs"] += len(messages)
        nc.stats["out_bytes"] += sum(len(payload) for _, payload, _ in messages)
        await nc._send_command(blob)
        if nc._flush_queue is not None and nc._flush_queue.empty():
            await nc._flush_pending()
